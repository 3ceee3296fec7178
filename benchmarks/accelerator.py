"""Pre-training and inference throughput on one accelerator, with MFU, in one script.

  python benchmarks/accelerator.py --json accelerator.json    # ~7 min on one H100/H200
  python benchmarks/accelerator.py --smoke --json /tmp/smoke.json --peak-tflops 1   # CPU, CI

Measures BertForPreTraining (MLM at the recipe's masked positions, 20 at seq 128 and 80 at
512, plus NSP) in bf16 compute (fp32 parameters and optimizer state, as pre-training runs):
bert-base at seq 128 over a batch sweep and at seq 512, bert-large at seq 128, each with
attention "xla" (the written-out softmax, attention dropout 0.1 as in the recipe) and the
fused backend ("dot_product", cuDNN flash attention on GPU; "splash" on TPU; both without
attention dropout, which they cannot do). Per configuration: training steps/s, sequences/s
and MFU (model FLOPs of bert_jax/flops.py over the device's dense peak), inference (the
same model's forward, no dropout) sequences/s and MFU, peak device memory
(`memory_stats()` where the backend keeps it, else the train program's
`memory_analysis()`), and the compile seconds. Prints a table; --json writes every row
(rewritten after each configuration, so a run cut short keeps what it measured).

Each configuration runs in its own process: an out-of-memory error, a backend that lacks
a kernel or a crash is recorded in that row and the next one starts, and the device's
peak memory is that configuration's alone. No configuration starts once --budget-s
seconds have passed since the first one started (its row says "skipped"; the plan runs
the main configurations first), and one is stopped when it runs past --case-timeout-s or
past --budget-s + 60 s (so the default run ends within 8 minutes). Compiled programs go
to the persistent compilation cache (bert_jax/runtime.py), so a second run spends its
time measuring. --smoke runs tiny models at short lengths, the same code paths, in a
minute or two on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Dense bf16 peak per device: bert_jax/flops.py's table (H100/H200 989 TFLOP/s, A100
# 312, TPU v4 275, v5e 197, v5p 459, v6e 918), or --peak-tflops.

# (row name, preset, sequence length, masked positions, batch size), most wanted first: a
# run cut short by the budget keeps the main configurations (the table is sorted after).
FULL_PLAN = (
    ("bert-base", "base", 128, 20, 256),
    ("bert-base", "base", 512, 80, 32),
    ("bert-large", "large", 128, 20, 64),
    ("bert-base", "base", 128, 20, 128),
    ("bert-base", "base", 128, 20, 64),
    ("bert-base", "base", 128, 20, 32),
)
SMOKE_PLAN = (  # the same rows, tiny (the last one's programs are the first's, cached)
    ("bert-base", "tiny", 16, 3, 2),
    ("bert-base", "tiny", 32, 6, 2),
    ("bert-large", "tiny", 16, 3, 2),
)
XLA_ATTENTION_DROPOUT = 0.1  # the recipe's; the fused kernels have none


@dataclasses.dataclass(frozen=True)
class Case:
    model: str  # the row's name, e.g. bert-base
    preset: str
    seq_len: int
    predictions: int
    batch_size: int
    attention: str
    dtype: str


def fused_backend(platform: str) -> str:
    """The fused attention kernel of a platform: splash on TPU, dot_product elsewhere."""
    return "splash" if platform == "tpu" else "dot_product"


def plan(smoke: bool, attentions: list[str], dtype: str) -> list[Case]:
    """Every configuration, in the plan's order, each row with every attention backend."""
    return [Case(model, preset, seq, predictions, batch, attention, dtype)
            for model, preset, seq, predictions, batch in (SMOKE_PLAN if smoke else FULL_PLAN)
            for attention in attentions]


# ---- one configuration, in a child process ----------------------------------------------

def setup(cfg: Any, mesh: Any) -> tuple[Any, Any, Any]:
    """(train state, jitted train step, jitted forward) of BertForPreTraining with BERT
    Adam, built by the project's own functions, as pre-training builds them."""
    from bert_jax import model, optim
    from bert_jax.train import objectives
    from bert_jax.train import state as state_lib
    from bert_jax.train import step as step_lib

    module = model.build(cfg, "pretraining")
    ocfg = optim.default_config()
    ocfg.warmup_steps = 10
    tx, schedule = optim.build(ocfg, 1000)
    shardings = state_lib.state_shardings(module, tx, mesh)
    state = state_lib.init_state(module, tx, mesh, seed=0)
    objective = objectives.PreTraining(module)
    train = step_lib.jit_train_step(step_lib.make_train_step(objective, tx, schedule),
                                    shardings, mesh)
    forward = step_lib.jit_eval_step(step_lib.make_eval_step(objective), shardings.params,
                                     mesh)
    return state, train, forward


def peak_memory(compiled: Any) -> tuple[int, str]:
    """The device's peak bytes in use, or, where the backend keeps no count (CPU), what
    the train program needs: its arguments, outputs (less the donated) and temporaries."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "memory_stats"
    m = compiled.memory_analysis()
    return (int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                + m.temp_size_in_bytes), "memory_analysis")


def timed(fn: Any, steps: int) -> float:
    """Seconds per call of `fn` (steps calls dispatched back to back, waited for once)."""
    import jax

    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def measure(case: Case, steps: int, warmup: int, peak: float | None) -> dict[str, Any]:
    """One configuration's numbers (run in a fresh process: see `run_case`)."""
    import jax
    from train import make_batch  # benchmarks/train.py: random ids, recipe masking

    from bert_jax import config as config_lib
    from bert_jax import flops, runtime, sharding

    runtime.enable_compilation_cache()
    cfg = config_lib.preset(case.preset, dtype=case.dtype, attention=case.attention,
                            attention_probs_dropout_prob=XLA_ATTENTION_DROPOUT
                            if case.attention == "xla" else 0.0)
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    batch = sharding.global_batch(
        make_batch(cfg, case.batch_size, case.seq_len, case.predictions), mesh)
    state, train, forward = setup(cfg, mesh)

    start = time.perf_counter()
    train = train.lower(state, batch).compile()
    train_compile = time.perf_counter() - start
    start = time.perf_counter()
    forward = forward.lower(state.params, batch).compile()
    forward_compile = time.perf_counter() - start

    holder = {"state": state}

    def train_step():
        holder["state"], metrics = train(holder["state"], batch)
        return metrics["loss"]

    for _ in range(warmup):
        jax.block_until_ready(train_step())
    step_s = timed(train_step, steps)
    loss = float(train_step())
    for _ in range(warmup):
        jax.block_until_ready(forward(holder["state"].params, batch))
    forward_s = timed(lambda: forward(holder["state"].params, batch), steps)
    memory, memory_source = peak_memory(train)

    train_flop = case.batch_size * flops.train_flops(cfg, case.seq_len, case.predictions)
    forward_flop = case.batch_size * flops.forward_flops(cfg, case.seq_len, case.predictions)
    return {
        "train_steps_per_s": 1.0 / step_s,
        "train_seq_per_s": case.batch_size / step_s,
        "train_mfu": train_flop / step_s / peak if peak else None,
        "inference_seq_per_s": case.batch_size / forward_s,
        "inference_mfu": forward_flop / forward_s / peak if peak else None,
        "peak_memory_bytes": memory, "memory_source": memory_source,
        "train_compile_s": train_compile, "inference_compile_s": forward_compile,
        "gflop_per_train_step": train_flop / 1e9, "loss": loss,
        "attention_dropout": cfg.attention_probs_dropout_prob,
    }


def child_main(case: Case, steps: int, warmup: int, peak: float | None) -> None:
    """Prints one JSON line: the numbers, or the error that stopped this configuration."""
    try:
        out = measure(case, steps, warmup, peak)
    except Exception as e:  # recorded in the row; the next configuration goes on
        message = str(e).strip().splitlines()
        out = {"error": f"{type(e).__name__}: {message[0] if message else ''}"[:500]}
    print(json.dumps(out))


# ---- the driver ---------------------------------------------------------------------------

def run_case(case: Case, args: argparse.Namespace, peak: float | None,
             timeout: float) -> dict[str, Any]:
    """`measure` in a fresh process; a crash or a timeout becomes the row's error."""
    argv = [sys.executable, __file__, "--case", json.dumps(dataclasses.asdict(case)),
            "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if peak:
        argv += ["--peak-tflops", str(peak / 1e12)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout: stopped after {timeout:.0f} s"}
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines:
        tail = out.stderr.strip().splitlines()[-1:] or [""]
        return {"error": f"exit {out.returncode}: {tail[0][:500]}"}
    return json.loads(lines[-1])


def device_info(override_tflops: float) -> dict[str, Any]:
    """The device's kind, platform and peak (called in a child: see `main`)."""
    import jax

    from bert_jax import flops

    device = jax.devices()[0]
    peak = flops.peak_flops(device.device_kind, override_tflops)
    return {"device_kind": device.device_kind, "platform": device.platform,
            "jax_version": jax.__version__, "peak_tflops": peak / 1e12 if peak else None}


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'model':10} {'seq':>4} {'batch':>5} {'attention':11} {'steps/s':>8} "
            f"{'seq/s':>9} {'MFU':>6} {'infer seq/s':>11} {'peak GiB':>8} {'compile s':>9}")
    lines = [head]
    for r in rows:
        key = (f"{r['model']:10} {r['seq_len']:>4} {r['batch_size']:>5} {r['attention']:11}")
        if "error" in r or "skipped" in r:
            lines.append(f"{key} {r.get('error') or 'skipped: ' + r['skipped']}")
            continue
        mfu = f"{r['train_mfu']:6.1%}" if r["train_mfu"] is not None else f"{'-':>6}"
        lines.append(f"{key} {r['train_steps_per_s']:8.2f} {r['train_seq_per_s']:9.1f} {mfu} "
                     f"{r['inference_seq_per_s']:11.1f} {r['peak_memory_bytes'] / 2**30:8.2f} "
                     f"{r['train_compile_s'] + r['inference_compile_s']:9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models, short sequences: the code paths, on a CPU")
    parser.add_argument("--json", metavar="PATH", help="write the results here as JSON")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype (config.model.dtype)")
    parser.add_argument("--attention", default="xla,fused",
                        help="comma list of attention backends to compare; fused = splash on "
                             "TPU, dot_product elsewhere (default xla,fused)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="the device's dense peak TFLOP/s for MFU (default: looked up by "
                             "device kind in bert_jax/flops.py)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="start no configuration after this many seconds, and stop any "
                             "still running 60 s later (default 420)")
    parser.add_argument("--case-timeout-s", type=float, default=240.0,
                        help="stop a configuration that runs longer than this (default 240)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one configuration, this process
    parser.add_argument("--info", action="store_true", help=argparse.SUPPRESS)  # device_info
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")

    if args.case:
        child_main(Case(**json.loads(args.case)), args.steps, args.warmup,
                   args.peak_tflops * 1e12 or None)
        return 0
    if args.info:
        print(json.dumps(device_info(args.peak_tflops)))
        return 0

    # This process never starts the backend: on a GPU it would hold most of the memory
    # (XLA preallocates), on a TPU the chip, while the configurations' processes run.
    info = subprocess.run([sys.executable, __file__, "--info", "--peak-tflops",
                           str(args.peak_tflops)], capture_output=True, text=True)
    if info.returncode:
        raise SystemExit(f"cannot start the backend:\n{info.stderr[-2000:]}")
    info = json.loads(info.stdout.strip().splitlines()[-1])
    peak = info["peak_tflops"] * 1e12 if info["peak_tflops"] else None
    attentions = [fused_backend(info["platform"]) if a == "fused" else a
                  for a in args.attention.split(",")]
    doc = {**info, "smoke": args.smoke, "dtype": args.dtype, "steps": args.steps,
           "budget_s": args.budget_s, "results": []}
    start = time.monotonic()  # the budget counts from the first configuration's start
    for case in plan(args.smoke, attentions, args.dtype):
        elapsed = time.monotonic() - start
        row = dataclasses.asdict(case)
        if elapsed >= args.budget_s:
            row["skipped"] = f"budget: {elapsed:.0f} s elapsed, --budget-s {args.budget_s:g}"
        else:
            # Everything ends by budget + 60 s (8 minutes by default), so no run overstays.
            row |= run_case(case, args, peak,
                            min(args.case_timeout_s, args.budget_s + 60 - elapsed))
        doc["results"].append(row)
        print(table([row]).splitlines()[1], flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    doc["wall_s"] = time.monotonic() - start
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    peak_text = f"{info['peak_tflops']:.0f} TFLOP/s peak" if peak else "peak unknown: no MFU"
    print(f"\n{info['device_kind']} ({peak_text}), {args.dtype}, {doc['wall_s']:.0f} s")
    print(table(sorted(doc["results"], key=lambda r: (r["model"], r["seq_len"],
                                                       r["batch_size"], r["attention"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
