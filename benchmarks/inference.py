"""Inference throughput: bert-jax vs transformers' PyTorch BERT, side by side in one run.

  python benchmarks/inference.py                          # bert-base, seq 128, batch 1/8/32
  python benchmarks/inference.py --batch-sizes 8 --json
  python benchmarks/inference.py --preset tiny --seq-len 64 --min-time 0.2  # smoke

Random weights of the preset's shape, random token ids, every position attended,
fp32 (bert-jax `--dtype bfloat16` computes in bf16), dropout off. Three workloads:

  encoder           BertModel forward: last hidden state + pooler, both sides.
  pretraining       BertForPreTraining with both heads. bert-jax projects only the
                    `--predictions` masked positions per sequence onto the vocabulary
                    (what fill-mask and MLM training do); PyTorch projects all positions,
                    as transformers always does, so this ratio includes the work saved.
  pretraining-all   BertForPreTraining, every position projected on both sides: the
                    like-for-like number.

Each measurement compiles/warms up both sides, then times calls, alternating bert-jax
and PyTorch call by call (jax.block_until_ready; torch.inference_mode with torch threads
= the usable cores), until each side has `--min-iters` calls and `--min-time` seconds,
and reports sequences/s from the median call (and the best call, in brackets) and the
model FLOP/s that makes (bert_jax/flops.py; useful FLOPs: the MLM head and the last layer
at the masked positions only in `pretraining`, for both sides). On a shared machine run it
more than once.

It then times one lone matmul of the FFN's shape, [batch*seq, hidden] x [hidden,
intermediate], on both sides (`--no-ceiling` skips it): the rate a forward pass made of
large matmuls can at best approach on this machine, and what a target ratio over PyTorch
would need.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from bert_jax import config as config_lib
from bert_jax import flops
from bert_jax import model as modeling

from timing import time_interleaved

WORKLOADS = ("encoder", "pretraining", "pretraining-all")


def make_inputs(cfg: config_lib.BertConfig, batch: int, seq_len: int, predictions: int,
                seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.RandomState(seed)
    low = min(1000, cfg.vocab_size // 2)  # ordinary word pieces, not special tokens
    return dict(
        input_ids=r.randint(low, cfg.vocab_size, (batch, seq_len)).astype(np.int32),
        attention_mask=np.ones((batch, seq_len), np.int32),
        token_type_ids=(np.arange(seq_len)[None] >= seq_len // 2).repeat(batch, 0).astype(
            np.int32),
        masked_positions=np.stack([np.sort(r.choice(np.arange(1, seq_len - 1), predictions,
                                                    False)) for _ in range(batch)]).astype(
            np.int32),
    )


def jax_call(cfg: config_lib.BertConfig, params: dict, workload: str,
             inputs: dict[str, np.ndarray]) -> Callable[[], None]:
    """A no-argument closure running one jitted forward to completion."""
    if workload == "encoder":
        module = modeling.build(cfg, "encoder")
        params = params["bert"]

        def forward(p, x):
            out = module.apply({"params": p}, x["input_ids"], x["attention_mask"],
                               x["token_type_ids"])
            return out.last_hidden_state, out.pooler_output
    else:
        module = modeling.build(cfg, "pretraining")
        masked = workload == "pretraining"

        def forward(p, x):
            out = module.apply({"params": p}, x["input_ids"], x["attention_mask"],
                               x["token_type_ids"], x["masked_positions"] if masked else None)
            return out.mlm_logits, out.nsp_logits

    fn = jax.jit(forward)
    device_inputs = jax.device_put({k: jnp.asarray(v) for k, v in inputs.items()})
    return lambda: jax.block_until_ready(fn(params, device_inputs))


def torch_call(hf_models: dict, workload: str,
               inputs: dict[str, np.ndarray]) -> Callable[[], None]:
    import torch

    net = hf_models["encoder" if workload == "encoder" else "pretraining"]
    x = {k: torch.from_numpy(inputs[k].astype(np.int64))
         for k in ("input_ids", "attention_mask", "token_type_ids")}

    def call() -> None:
        with torch.inference_mode():
            net(**x)

    return call


def useful_flops(cfg: config_lib.BertConfig, workload: str, seq_len: int,
                 predictions: int) -> float:
    """Matmul FLOPs of one sequence's forward in `workload` (the masked positions only for
    `pretraining`, whichever side projects more)."""
    if workload == "encoder":
        return flops.encoder_flops(cfg, seq_len)
    return flops.forward_flops(cfg, seq_len, predictions if workload == "pretraining" else None)


def matmul_rates(rows: int, k: int, n: int, threads: int, min_time: float,
                 with_torch: bool) -> dict[str, float]:
    """GFLOP/s of one [rows, k] x [k, n] fp32 matmul in XLA and in PyTorch, interleaved."""
    r = np.random.RandomState(0)
    a, b = r.randn(rows, k).astype(np.float32), r.randn(k, n).astype(np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    matmul = jax.jit(jnp.matmul)
    calls = {"bert-jax": lambda: jax.block_until_ready(matmul(ja, jb))}
    if with_torch:
        import torch

        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        calls["pytorch"] = lambda: torch.matmul(ta, tb)
    times = time_interleaved(calls, min_iters=5, min_time=min_time, warmup=2)
    return {name: 2 * rows * k * n / statistics.median(t) / 1e9 for name, t in times.items()}


def torch_models(cfg: config_lib.BertConfig, threads: int) -> dict:
    import torch
    from transformers import BertConfig, BertForPreTraining

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    pretraining = BertForPreTraining(BertConfig(**cfg.to_hf_dict())).eval()
    # BertModel with the pooler: the same module the encoder workload times in bert-jax.
    return {"pretraining": pretraining, "encoder": pretraining.bert}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="base", help="model size (tiny, mini, base, large)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--predictions", type=int, default=20,
                        help="masked positions per sequence bert-jax projects (pretraining)")
    parser.add_argument("--min-iters", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="float32", help="bert-jax compute dtype")
    parser.add_argument("--no-torch", action="store_true", help="bert-jax only (e.g. on GPU)")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the lone-matmul rate")
    parser.add_argument("--target", type=float, default=1.4,
                        help="ratio over PyTorch's encoder to check against the matmul rate")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    cfg = config_lib.preset(args.preset, dtype=args.dtype)
    if args.seq_len > cfg.max_position_embeddings:
        parser.error(f"--seq-len {args.seq_len} exceeds the {args.preset} preset's "
                     f"{cfg.max_position_embeddings} positions")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    workloads = args.workloads.split(",")
    threads = len(os.sched_getaffinity(0))
    params = jax.jit(lambda k: modeling.init_params(modeling.build(cfg, "pretraining"), k))(
        jax.random.key(0))
    hf = None if args.no_torch else torch_models(cfg, threads)

    rows = []
    for workload in workloads:
        for batch in batch_sizes:
            inputs = make_inputs(cfg, batch, args.seq_len, args.predictions)
            row = {"workload": workload, "batch_size": batch}
            sides = {"bert-jax": jax_call(cfg, params, workload, inputs)}
            if hf is not None:
                sides["pytorch"] = torch_call(hf, workload, inputs)
            seq_flops = useful_flops(cfg, workload, args.seq_len, args.predictions)
            for name, times in time_interleaved(sides, args.min_iters, args.min_time,
                                                args.warmup).items():
                row[name] = {"seq_per_s": batch / statistics.median(times),
                             "best_seq_per_s": batch / min(times), "calls": len(times),
                             "gflop_per_s": batch / statistics.median(times) * seq_flops / 1e9}
            if "pytorch" in row:
                row["ratio"] = row["bert-jax"]["seq_per_s"] / row["pytorch"]["seq_per_s"]
                row["best_ratio"] = (row["bert-jax"]["best_seq_per_s"]
                                     / row["pytorch"]["best_seq_per_s"])
            rows.append(row)
            if not args.json:
                if len(rows) == 1:
                    print_header(args, threads)
                print_row(row)

    ceiling = None
    if not args.no_ceiling:
        shape = (max(batch_sizes) * args.seq_len, cfg.hidden_size, cfg.intermediate_size)
        ceiling = {"shape": shape, "gflop_per_s": matmul_rates(
            *shape, threads, args.min_time, with_torch=hf is not None)}
        encoder = [r for r in rows if r["workload"] == "encoder" and "pytorch" in r]
        if encoder:
            best = max(encoder, key=lambda r: r["pytorch"]["gflop_per_s"])
            ceiling["target_gflop_per_s"] = args.target * best["pytorch"]["gflop_per_s"]
        if not args.json:
            print_ceiling(ceiling, args.target)

    if args.json:
        print(json.dumps({"preset": args.preset, "seq_len": args.seq_len,
                          "predictions": args.predictions, "dtype": args.dtype,
                          "device": jax.devices()[0].device_kind, "threads": threads,
                          "jax": jax.__version__, "rows": rows, "matmul_ceiling": ceiling},
                         indent=2))


def print_ceiling(ceiling: dict, target: float) -> None:
    rates = ", ".join(f"{k} {v:.0f}" for k, v in ceiling["gflop_per_s"].items())
    print(f"lone matmul {'x'.join(map(str, ceiling['shape']))}: {rates} GFLOP/s")
    if "target_gflop_per_s" in ceiling:
        top = max(ceiling["gflop_per_s"].values())
        print(f"{target:g}x PyTorch's encoder needs {ceiling['target_gflop_per_s']:.0f} "
              f"GFLOP/s: {ceiling['target_gflop_per_s'] / top:.2f}x the lone matmul's best")


def print_header(args: argparse.Namespace, threads: int) -> None:
    print(f"{args.preset}, seq {args.seq_len}, {args.dtype}, {jax.devices()[0].device_kind}, "
          f"{threads} threads; sequences/s, median (best); pretraining: bert-jax projects "
          f"{args.predictions} masked positions, PyTorch all {args.seq_len}")
    print(f"{'workload':<16} {'batch':>5} {'bert-jax':>17} {'pytorch':>17} {'ratio':>15} "
          f"{'GFLOP/s jax':>11} {'torch':>6}")


def print_row(row: dict) -> None:
    def cell(side: str) -> str:
        if side not in row:
            return f"{'-':>17}"
        return f"{row[side]['seq_per_s']:8.2f} ({row[side]['best_seq_per_s']:6.2f})"

    ratio = (f"{row['ratio']:5.2f}x ({row['best_ratio']:4.2f}x)" if "ratio" in row
             else f"{'-':>15}")
    gflops = " ".join(f"{row[side]['gflop_per_s']:{w}.0f}" if side in row else f"{'-':>{w}}"
                      for side, w in (("bert-jax", 11), ("pytorch", 6)))
    print(f"{row['workload']:<16} {row['batch_size']:>5} {cell('bert-jax')} {cell('pytorch')} "
          f"{ratio} {gflops}", flush=True)


if __name__ == "__main__":
    main()
