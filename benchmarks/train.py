"""Training throughput: bert-jax vs transformers' PyTorch BertForPreTraining, one run.

  python benchmarks/train.py                       # bert-base, seq 128, batch 8, CPU
  python benchmarks/train.py --preset tiny --seq-len 64 --steps 5 --json
  python benchmarks/train.py --no-torch --model dropout_impl=jax   # a kernel choice (A/B)

Both sides do the same work per step: forward + backward + optimizer update of
BertForPreTraining (MLM + NSP) on random token ids, dropout on, fp32, with 20 masked
positions per sequence (the recipe's max_predictions_per_seq at 128). bert-jax projects
only the masked positions onto the vocabulary (as the original TF code does); PyTorch
projects every position and ignores the unmasked ones with label -100 (as transformers
does). The optimizer is BERT Adam (bert-jax) and torch.optim.AdamW (PyTorch), whose
costs are alike. Each side runs in its own fresh process, and the sides alternate for
`--rounds` rounds: in one process, alternating steps made bert-jax's ~1.3 GB of state
and PyTorch's evict each other (bert-jax's step measured 32% slower that way), and a
shared machine drifts, so a slow spell should hit both. Prints sequences/s from the
median step over all rounds, the per-round medians, the ratio, and model FLOP/s by the
formula of bert_jax/flops.py (the MLM head and the last layer counted at the masked
positions for both, i.e. useful FLOPs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import jax
import numpy as np

from bert_jax import config as config_lib
from bert_jax import flops, optim, sharding
from bert_jax.train import objectives, programs

from timing import time_interleaved


def make_batch(cfg, batch, seq_len, predictions, seed=0):
    r = np.random.RandomState(seed)
    low = min(1000, cfg.vocab_size // 2)  # ordinary word pieces, not special tokens
    positions = np.stack([np.sort(r.choice(np.arange(1, seq_len - 1), predictions, False))
                          for _ in range(batch)]).astype(np.int32)
    return dict(
        input_ids=r.randint(low, cfg.vocab_size, (batch, seq_len)).astype(np.int32),
        token_type_ids=(np.arange(seq_len)[None] >= seq_len // 2).repeat(batch, 0).astype(
            np.int32),
        attention_mask=np.ones((batch, seq_len), np.int32),
        masked_lm_positions=positions,
        masked_lm_ids=r.randint(low, cfg.vocab_size, (batch, predictions)).astype(np.int32),
        masked_lm_weights=np.ones((batch, predictions), np.float32),
        next_sentence_label=r.randint(0, 2, (batch,)).astype(np.int32),
    )


def jax_step(cfg, batch):
    """A no-argument closure running one bert-jax train step to completion."""
    ocfg = optim.default_config()
    ocfg.warmup_steps = 10
    tx, schedule = optim.build(ocfg, 1000)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    p = programs.build(cfg, "pretraining", objectives.PreTraining, tx, schedule, mesh)
    holder = {"state": p.init_state(seed=0)}
    train_step = p.train_step
    device_batch = sharding.global_batch(batch, mesh)

    def run():
        holder["state"], metrics = train_step(holder["state"], device_batch)
        jax.block_until_ready(metrics["loss"])

    return run


def torch_step(cfg, batch, threads):
    """A no-argument closure running one PyTorch train step."""
    import torch
    from transformers import BertConfig, BertForPreTraining

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hf = BertForPreTraining(BertConfig(**cfg.to_hf_dict()))
    hf.train()
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, eps=1e-6, weight_decay=0.01)
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    np.put_along_axis(labels, batch["masked_lm_positions"], batch["masked_lm_ids"], axis=1)
    inputs = dict(input_ids=torch.from_numpy(batch["input_ids"].astype(np.int64)),
                  token_type_ids=torch.from_numpy(batch["token_type_ids"].astype(np.int64)),
                  attention_mask=torch.from_numpy(batch["attention_mask"].astype(np.int64)),
                  labels=torch.from_numpy(labels),
                  next_sentence_label=torch.from_numpy(
                      batch["next_sentence_label"].astype(np.int64)))

    def run():
        opt.zero_grad(set_to_none=True)
        loss = hf(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()

    return run


SIDES = ("bert-jax", "pytorch")


def model_config(args: argparse.Namespace) -> config_lib.BertConfig:
    """The preset with --dtype and the --model FIELD=VALUE overrides (numbers parsed)."""
    overrides = {}
    for item in args.model:
        field, _, value = item.partition("=")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value
    return config_lib.preset(args.preset, dtype=args.dtype, **overrides)


def run_side(side: str) -> list[float]:
    """Step seconds of one side, measured in a fresh process with this run's arguments."""
    argv = [a for a in sys.argv[1:] if a != "--json"]
    out = subprocess.run([sys.executable, __file__, *argv, "--side", side],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the {side} side failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def side_times(args: argparse.Namespace, side: str) -> list[float]:
    """Step seconds of one side, measured in this process."""
    cfg = model_config(args)
    batch = make_batch(cfg, args.batch_size, args.seq_len, args.predictions)
    if side == "bert-jax":
        run = jax_step(cfg, batch)
    else:
        run = torch_step(cfg, batch, len(os.sched_getaffinity(0)))
    return time_interleaved({side: run}, args.steps, 0.0, args.warmup)[side]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="base", help="model size (tiny, mini, base, large)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of the two sides, each in a fresh process")
    parser.add_argument("--dtype", default="float32", help="bert-jax compute dtype")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=VALUE",
                        help="a BertConfig field for bert-jax (attention, dropout_impl, ...)")
    parser.add_argument("--no-torch", action="store_true", help="bert-jax only (e.g. on GPU)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side, this process
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cfg = model_config(args)
    if args.seq_len > cfg.max_position_embeddings:
        parser.error(f"--seq-len {args.seq_len} exceeds the {args.preset} preset's "
                     f"{cfg.max_position_embeddings} positions")
    if args.side:
        print(json.dumps(side_times(args, args.side)))
        return

    sides = SIDES[:1] if args.no_torch else SIDES
    per_round = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side in sides:
            per_round[side].append(run_side(side))
    step_flops = args.batch_size * flops.train_flops(cfg, args.seq_len, args.predictions)
    results = {"preset": args.preset, "batch_size": args.batch_size, "seq_len": args.seq_len,
               "device": jax.devices()[0].device_kind, "dtype": args.dtype,
               "gflop_per_step": step_flops / 1e9}
    for name, rounds in per_round.items():
        median = statistics.median(t for times in rounds for t in times)
        results[name] = {"seq_per_s": args.batch_size / median, "step_s": median,
                         "model_gflop_per_s": step_flops / median / 1e9,
                         "round_medians_s": [statistics.median(t) for t in rounds]}
        peak = flops.peak_flops(results["device"])
        if peak:
            results[name]["mfu"] = step_flops / median / peak
    if "pytorch" in results:
        results["ratio"] = results["bert-jax"]["seq_per_s"] / results["pytorch"]["seq_per_s"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.preset}, seq {args.seq_len}, batch {args.batch_size}, {results['device']}, "
          f"{step_flops / 1e9:.0f} GFLOP/step (fwd+bwd+update), {args.rounds} rounds x "
          f"{args.steps} steps per side")
    print(f"{'':10} {'seq/s':>8} {'s/step':>8} {'GFLOP/s':>9}  per-round median s/step")
    for name in sides:
        r = results[name]
        mfu = f"  MFU {r['mfu']:.1%}" if "mfu" in r else ""
        rounds = " ".join(f"{t:.2f}" for t in r["round_medians_s"])
        print(f"{name:10} {r['seq_per_s']:8.2f} {r['step_s']:8.3f} "
              f"{r['model_gflop_per_s']:9.1f}  {rounds}{mfu}")
    if "ratio" in results:
        print(f"bert-jax / pytorch: {results['ratio']:.2f}x")


if __name__ == "__main__":
    main()
