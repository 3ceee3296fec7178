"""GLUE sweeps: tasks x learning rates x seeds, resumable, summarised on dev.

    summary = glue_sweep.sweep(config, ["RTE", "MRPC"], "bert-base-cased", "glue_data",
                               "runs/glue", lrs=(2e-5, 3e-5), seeds=(1, 2, 3))
    summary["tasks"]["RTE"]["mean"], summary["tasks"]["RTE"]["best_lr"]

Each run is `finetune.finetune` in `<workdir>/<task>/lr<lr>_seed<seed>/`; its results.json,
written last and atomically, marks it done. A rerun skips finished runs, so a sweep killed
half-way keeps every finished run and redoes only the others (a fine-tuning run is short:
an unfinished one starts over). A finished run made with another recipe (config fields
other than lrs/seeds/logging) is an error, never silently mixed in.

The learning rate of each task is chosen on dev by the mean over seeds of the task's main
metric (`glue_metrics.main_metric`: the mean of its official metrics); mean ± std (sample
std, ddof=1) and the best seed are reported at that lr. Written into `workdir`:
  summary.json  {"tasks": {task: {"main_metric": <its name>, "best_lr", "mean", "std",
                 "best", "best_seed", "n_seeds", "metrics", "by_lr", "runs": [...]}},
                 "glue_score": <float when all nine tasks ran, else null>, ...}
  results.md    the table `bert-jax glue` prints; results.csv one row per run;
  results.png   dev main metric of every run against lr, one panel per task;
  submission/ + submission.zip   with predict_test: the best run's test predictions
                 (AX by the MNLI model), as the GLUE server takes them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from bert_jax import files, glue_metrics, glue_submission
from bert_jax.data import glue
from bert_jax.errors import UserError

log = logging.getLogger(__name__)

# Config fields that may differ between the invocations of one sweep: they do not change
# what a run computes (lrs/seeds pick the runs; the rest is logging and bookkeeping).
_FREE_FIELDS = ("preset", "lrs", "seeds", "log_every", "save_checkpoint", "eval_batch_size",
                "data_dir")


# ---- parsing what the command line gives ------------------------------------------------

def parse_tasks(spec: str) -> list[str]:
    """`"all"` (the nine GLUE tasks) or a comma list of task names -> canonical names."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UserError("--task is empty: give a task (e.g. RTE), a comma list, or all")
    out: list[str] = []
    for name in names:
        tasks = glue.GLUE_TASKS if name.lower() == "all" else (glue.get_task(name).name,)
        for task in tasks:
            if glue.TASKS[task].train_split is None:
                raise UserError(f"{task} has no training data: it is predicted by the MNLI "
                                "model; add MNLI and --predict-test")
            if task not in out:
                out.append(task)
    return out


def _parse_list(text: str, flag: str, convert, kind: str, example: str, check) -> tuple:
    """A comma list of `convert`-ed values, each passing `check` (which returns an error
    message or None), duplicates dropped; a bad item is a one-line UserError."""
    out: list = []
    for item in text.split(","):
        try:
            value = convert(item)
        except ValueError:
            raise UserError(f"bad {flag} {text!r}: {item.strip()!r} is not {kind} "
                            f"(write e.g. {flag} {example})") from None
        problem = check(value)
        if problem:
            raise UserError(f"bad {flag} {text!r}: {problem}")
        if value not in out:
            out.append(value)
    return tuple(out)


def parse_lrs(text: str) -> tuple[float, ...]:
    """`"2e-5,3e-5"` -> (2e-05, 3e-05): positive finite numbers, duplicates dropped."""
    return _parse_list(
        text, "--lrs", float, "a number", "2e-5,3e-5",
        lambda lr: None if math.isfinite(lr) and lr > 0
        else f"a learning rate must be positive, got {lr:g}")


def parse_seeds(text: str) -> tuple[int, ...]:
    """`"1,2,3"` -> (1, 2, 3): non-negative integers, duplicates dropped."""
    return _parse_list(text, "--seeds", int, "an integer", "1,2,3",
                       lambda seed: None if seed >= 0 else f"a seed must be >= 0, got {seed}")


def check_config(config: ml_collections.ConfigDict) -> None:
    """The sizes a sweep divides by or loops over: each must be positive (a batch size
    of 0 divided by zero; a negative one looped forever)."""
    for field in ("batch_size", "eval_batch_size", "max_seq_length", "epochs", "log_every"):
        value = config.get(field)
        if value is not None and not value > 0:
            raise UserError(f"--config.{field}={value}: must be greater than 0")
    if not 0 <= config.warmup_proportion <= 1:
        raise UserError(f"--config.warmup_proportion={config.warmup_proportion}: must be "
                        "between 0 and 1")
    if config.train_limit < 0:
        raise UserError(f"--config.train_limit={config.train_limit}: must be 0 (all) or more")


def run_dir(workdir: str | Path, task: str, lr: float, seed: int) -> Path:
    """`<workdir>/<task>/lr<lr>_seed<seed>`, e.g. runs/glue/RTE/lr2e-05_seed1."""
    return Path(workdir) / glue.get_task(task).name / f"lr{lr:g}_seed{seed}"


# ---- the sweep --------------------------------------------------------------------------

def sweep(config: ml_collections.ConfigDict, tasks: Sequence[str], model: str,
          data_dir: str | Path, workdir: str | Path, *, lrs: Sequence[float] | None = None,
          seeds: Sequence[int] | None = None, predict_test: bool = False,
          export: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tunes `model` on every task x lr x seed (skipping finished runs) and returns
    the summary it also writes to `<workdir>/summary.json` (see the module docstring).

    `lrs`/`seeds` default to the config's. `export`: a directory that receives each task's
    best run as an HF BertForSequenceClassification directory (`<export>/<task>/`).
    """
    from bert_jax.train import finetune

    check_config(config)
    tasks = [glue.get_task(t).name for t in tasks]
    lrs = tuple(float(x) for x in (config.lrs if lrs is None else lrs))
    seeds = tuple(int(x) for x in (config.seeds if seeds is None else seeds))
    if not tasks or not lrs or not seeds:
        raise UserError("nothing to run: give at least one task, learning rate and seed")
    workdir, data_dir = Path(workdir), Path(data_dir)
    config = ml_collections.ConfigDict(config.to_dict())
    # A local model is recorded by its absolute path, so a rerun from another directory
    # is recognised as the same sweep.
    config.model_name = str(Path(model).resolve()) if Path(model).exists() else str(model)
    config.data_dir = str(data_dir.resolve())
    if export is not None:
        config.save_checkpoint = True  # the export is made from the best run's checkpoint

    # Every file a task needs, checked before any training: a typo in the fifth task
    # fails now, not an hour in.
    for name in tasks:
        task = glue.TASKS[name]
        needed = [task.train_split, *task.dev_splits]
        needed += list(task.test_splits) if predict_test else []
        for split in needed:
            glue.split_path(task, data_dir, split)

    workdir.mkdir(parents=True, exist_ok=True)
    pretrained = None
    per_task: dict[str, dict[str, Any]] = {}
    for name in tasks:
        data = None
        runs = []
        for lr in lrs:
            for seed in seeds:
                d = run_dir(workdir, name, lr, seed)
                results = _finished(d, config, predict_test)
                if results is not None:
                    log.info("%s lr=%g seed=%d: done already (%s)", name, lr, seed, d)
                else:
                    if pretrained is None:
                        pretrained = _load_model(model, config)
                    if data is None:
                        data = finetune.load_task_data(
                            name, data_dir, pretrained.tokenizer,
                            max_length=config.max_seq_length, train_limit=config.train_limit,
                            predict_test=predict_test)
                    results = finetune.finetune(config, name, pretrained, data, d, lr=lr,
                                                seed=seed, predict_test=predict_test,
                                                progress=progress)
                    log.info("%s lr=%g seed=%d: %s (%.0f s)", name, lr, seed,
                             _format_metrics(results["metrics"]), results["wall_seconds"])
                runs.append({**results, "dir": str(d.relative_to(workdir))})
        per_task[name] = summarize_task(name, runs, lrs)

    summary: dict[str, Any] = {
        "model": config.model_name, "data_dir": config.data_dir, "lrs": list(lrs),
        "seeds": list(seeds), "config": json.loads(config.to_json_best_effort()),
        "tasks": per_task, "glue_score": None}
    if all(t in per_task for t in glue.GLUE_TASKS):
        summary["glue_score"] = glue_metrics.glue_score(
            {t: {m: v["mean"] for m, v in s["metrics"].items()} for t, s in per_task.items()})
    if predict_test:
        summary["submission"] = str(write_submission(summary, workdir))
    if export is not None:
        summary["export"] = {
            t: str(finetune.export_run(workdir / s["best_run"], Path(export) / t))
            for t, s in per_task.items()}
    write_reports(summary, workdir)
    return summary


def _load_model(model: str, config: ml_collections.ConfigDict):
    from bert_jax import weights

    # The encoder only: each run draws its own classifier from its seed (init_classifier).
    pretrained = weights.load_pretrained(model, "encoder")
    if pretrained.tokenizer is None:
        raise UserError(f"{model} has no vocab.txt or tokenizer.json beside the weights: "
                        "fine-tuning needs the model's tokenizer")
    limit = pretrained.config.max_position_embeddings
    if config.max_seq_length > limit:
        raise UserError(f"max_seq_length {config.max_seq_length} exceeds the model's "
                        f"{limit} positions: set --config.max_seq_length={limit} or less")
    return pretrained


def _recipe(config: Any) -> dict[str, Any]:
    """The fields that determine what a run computes, JSON-normalised (tuples -> lists)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    d = json.loads(json.dumps(d, default=str))
    return {k: v for k, v in d.items()
            if k not in _FREE_FIELDS and k not in ("task", "lr", "seed", "model")}


def _finished(d: Path, config: ml_collections.ConfigDict,
              predict_test: bool) -> dict[str, Any] | None:
    """The results of a finished run in `d` that this sweep can use, else None (redo it)."""
    try:
        results = json.loads((d / "results.json").read_text())
        saved = _recipe(json.loads((d / "config.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    current = _recipe(config)
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            raise UserError(
                f"{d} was run with {key}={saved.get(key)!r}, this sweep has "
                f"{current.get(key)!r}: use another --workdir, or delete {d} to redo it")
    if predict_test and not (d / "test_predictions.json").exists():
        log.info("%s: finished without test predictions; running it again", d)
        return None
    if config.save_checkpoint and not (d / "checkpoints").is_dir():
        log.info("%s: finished without a checkpoint; running it again", d)
        return None
    return results


# ---- summaries --------------------------------------------------------------------------

def main_metric_name(task: str | glue.TaskSpec) -> str:
    """What `mean`/`best` measure: `accuracy`, or `mean(f1,accuracy)` for two metrics."""
    metrics = glue.get_task(task).metrics
    return metrics[0] if len(metrics) == 1 else f"mean({','.join(metrics)})"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(values.mean()), std


def summarize_task(task: str, runs: Sequence[dict[str, Any]],
                   lrs: Sequence[float]) -> dict[str, Any]:
    """One task's summary: the lr with the best mean main metric over seeds, and its runs."""
    by_lr = {}
    for lr in lrs:
        values = [r["main_metric"] for r in runs if r["lr"] == lr]
        mean, std = _mean_std(values)
        by_lr[f"{lr:g}"] = {"lr": lr, "mean": mean, "std": std, "n": len(values)}
    # max() keeps the first of equal means: ties go to the lr listed first.
    best_lr = max(lrs, key=lambda lr: by_lr[f"{lr:g}"]["mean"])
    chosen = [r for r in runs if r["lr"] == best_lr]
    best_run = max(chosen, key=lambda r: r["main_metric"])
    metrics = {}
    for m in glue.get_task(task).metrics:
        mean, std = _mean_std([r["metrics"][m] for r in chosen])
        metrics[m] = {"mean": mean, "std": std}
    keep = ("lr", "seed", "main_metric", "metrics", "steps", "train_examples",
            "train_seconds", "wall_seconds", "nonfinite_steps", "dir")
    return {
        "main_metric": main_metric_name(task), "best_lr": best_lr,
        "mean": by_lr[f"{best_lr:g}"]["mean"], "std": by_lr[f"{best_lr:g}"]["std"],
        "best": best_run["main_metric"], "best_seed": best_run["seed"],
        "best_run": best_run["dir"], "n_seeds": len(chosen), "metrics": metrics,
        "by_lr": by_lr, "seconds": float(sum(r["wall_seconds"] for r in runs)),
        "runs": [{k: r[k] for k in keep if k in r} for r in runs]}


def _format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in metrics.items())


def markdown(summary: dict[str, Any]) -> str:
    """The results table (one row per task, at its chosen lr) and the per-lr means."""
    lines = ["| task | metric | best lr | seeds | mean ± std | best | metrics (mean ± std) |",
             "|---|---|---|---|---|---|---|"]
    for name, s in summary["tasks"].items():
        parts = ", ".join(f"{m} {v['mean']:.2f} ± {v['std']:.2f}" for m, v in s["metrics"].items())
        lines.append(f"| {name} | {s['main_metric']} | {s['best_lr']:g} | {s['n_seeds']} | "
                     f"{s['mean']:.2f} ± {s['std']:.2f} | {s['best']:.2f} | {parts} |")
    if summary.get("glue_score") is not None:
        lines += ["", f"GLUE score (dev, mean over seeds at each task's best lr): "
                      f"{summary['glue_score']:.2f}"]
    lines += ["", "| task | lr | seeds | mean ± std | runs |", "|---|---|---|---|---|"]
    for name, s in summary["tasks"].items():
        for key, v in s["by_lr"].items():
            runs = " ".join(f"{r['main_metric']:.2f}" for r in s["runs"] if f"{r['lr']:g}" == key)
            lines.append(f"| {name} | {key} | {v['n']} | {v['mean']:.2f} ± {v['std']:.2f} | "
                         f"{runs} |")
    return "\n".join(lines) + "\n"


def write_reports(summary: dict[str, Any], workdir: str | Path) -> None:
    """summary.json (atomically), results.md, results.csv and results.png in `workdir`."""
    workdir = Path(workdir)
    files.write_json_atomic(workdir / "summary.json", summary)
    files.write_text_atomic(workdir / "results.md", markdown(summary))
    files.write_text_atomic(workdir / "results.csv", to_csv(summary))
    plot(summary, workdir / "results.png")


def to_csv(summary: dict[str, Any]) -> str:
    """One row per run: task, lr, seed, main metric, each official metric, timings."""
    names = sorted({m for s in summary["tasks"].values() for r in s["runs"] for m in r["metrics"]})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["task", "lr", "seed", "main_metric", *names, "steps", "train_seconds",
                     "wall_seconds", "chosen_lr"])
    for task, s in summary["tasks"].items():
        for r in s["runs"]:
            writer.writerow([task, f"{r['lr']:g}", r["seed"], f"{r['main_metric']:.4f}",
                             *(f"{r['metrics'][m]:.4f}" if m in r["metrics"] else ""
                               for m in names),
                             r["steps"], f"{r['train_seconds']:.1f}", f"{r['wall_seconds']:.1f}",
                             int(r["lr"] == s["best_lr"])])
    return out.getvalue()


def plot(summary: dict[str, Any], path: str | Path) -> None:
    """Dev main metric of every run against lr (seeds as points, the mean as a line)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    tasks = list(summary["tasks"].items())
    cols = min(len(tasks), 3)
    rows = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, s) in zip(axes.flat, tasks):
        lrs = sorted(v["lr"] for v in s["by_lr"].values())
        for seed in sorted({r["seed"] for r in s["runs"]}):
            points = sorted((r["lr"], r["main_metric"]) for r in s["runs"] if r["seed"] == seed)
            ax.scatter(*zip(*points), s=22, alpha=0.8, label=f"seed {seed}")
        ax.plot(lrs, [s["by_lr"][f"{lr:g}"]["mean"] for lr in lrs], color="0.3", lw=1,
                marker="_", markersize=16, label="mean")  # the marker shows a single lr's
        ax.axvline(s["best_lr"], color="0.6", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs], minor=False)
        ax.minorticks_off()
        ax.set_title(f"{name}: {s['mean']:.1f} ± {s['std']:.1f} at lr {s['best_lr']:g}",
                     fontsize=9)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"dev {s['main_metric']}")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


# ---- the test-server files --------------------------------------------------------------

def write_submission(summary: dict[str, Any], workdir: str | Path) -> Path:
    """The best run's test predictions of every task -> `<workdir>/submission/*.tsv` and
    `<workdir>/submission.zip`."""
    workdir = Path(workdir)
    out = workdir / "submission"
    for s in summary["tasks"].values():
        entries = json.loads((workdir / s["best_run"] / "test_predictions.json").read_text())
        for e in entries:
            spec = glue.get_task(e["task"])
            preds = np.asarray(e["prediction"], np.float64 if spec.is_regression else np.int64)
            glue_submission.write_predictions(spec, e["index"], preds, out, split=e["split"])
    return glue_submission.write_zip(out, workdir / "submission.zip")
