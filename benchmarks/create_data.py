"""create-data throughput and peak memory on WikiText-2, with 1 and 2 worker processes.

  python benchmarks/create_data.py                 # valid, test, valid+test, valid x8
  python benchmarks/create_data.py --repeats 5 --json

The recipe's defaults: max_seq_length 128, dupe_factor 10, static masking, NSP, the
released bert-base-cased vocab, `--input-format wikitext`; tokenization included. Each
run is a fresh process (so peak memory is its own); the parent samples the resident
memory of that process and its workers together (psutil) every 10 ms. Reported:
instances/s (wall clock of `create_pretraining_data`, worker start-up included),
instances/s per process (/ workers), instances per CPU-second (all processes' CPU
time: the per-process rate free of other jobs on a shared machine) and peak RSS. The
tokenizer runs single-threaded (TOKENIZERS_PARALLELISM=false), so "per process" means
one core's work.

For comparison, google-research/bert's create_pretraining_data.py (single-process
Python, whole corpus in memory) makes ~2,000 instances/s on a 2-core CPU here
(WikiText-2 valid, dupe_factor 10, 128 tokens, tokenization included).
The "valid x8" row feeds the same file 8 times: 8x the data, and the peak memory
should not grow with it (it is bounded by the shard size).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("BERT_JAX_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
WIKI = SHARED / "corpus" / "wikitext-2-raw"
VOCAB = SHARED / "vocab" / "bert-base-cased" / "vocab.txt"
ORIGINAL_INSTANCES_PER_S = 2000


def child(args: argparse.Namespace) -> None:
    """One measured run (in its own process); prints its stats as JSON."""
    from bert_jax.data import create_pretraining_data
    from bert_jax.tokenizer import Tokenizer

    tok = Tokenizer.from_vocab(args.vocab)
    out = tempfile.mkdtemp(prefix="bench-create-data-")
    cpu0 = _cpu_seconds()
    try:
        stats = create_pretraining_data(args.inputs, out, tok, input_format="wikitext",
                                        dupe_factor=args.dupe_factor,
                                        max_seq_length=args.max_seq_length,
                                        num_workers=args.workers[0], progress=False)
        cpu = _cpu_seconds() - cpu0  # the workers have exited: their time is counted
    finally:
        shutil.rmtree(out)
    print(json.dumps({**{k: stats[k] for k in ("num_instances", "seconds", "num_shards")},
                      "cpu_seconds": cpu}))


def _cpu_seconds() -> float:
    """CPU time of this process and its exited children (user + system)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(inputs: list[str], workers: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--workers", str(workers),
           "--dupe-factor", str(args.dupe_factor), "--max-seq-length", str(args.max_seq_length),
           "--vocab", str(args.vocab), "--inputs", *inputs]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    peak = [0]

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"benchmark run failed: {' '.join(cmd)}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "peak_rss_mb": peak[0] / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per row (best and median)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dupe-factor", type=int, default=10)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--vocab", default=str(VOCAB))
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--inputs", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if not WIKI.exists() or not Path(args.vocab).exists():
        raise SystemExit(f"needs {WIKI} and {args.vocab} (../shared/data)")
    valid, test = str(WIKI / "valid.txt"), str(WIKI / "test.txt")
    datasets = {"valid": [valid], "test": [test], "valid+test": [valid, test],
                "valid x8": [valid] * 8}
    rows = []
    for name, inputs in datasets.items():
        for workers in args.workers:
            runs = [measure(inputs, workers, args) for _ in range(args.repeats)]
            rates = [r["num_instances"] / r["seconds"] for r in runs]
            per_cpu = [r["num_instances"] / r["cpu_seconds"] for r in runs]
            row = {"data": name, "workers": workers, "instances": runs[0]["num_instances"],
                   "shards": runs[0]["num_shards"],
                   "inst_per_s_best": max(rates), "inst_per_s_median": statistics.median(rates),
                   "inst_per_s_per_process_best": max(rates) / workers,
                   "inst_per_s_per_process_median": statistics.median(rates) / workers,
                   "vs_original_per_process": statistics.median(rates) / workers
                   / ORIGINAL_INSTANCES_PER_S,
                   "inst_per_cpu_s_best": max(per_cpu),
                   "inst_per_cpu_s_median": statistics.median(per_cpu),
                   "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
                   "repeats": args.repeats}
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        print(f"create-data, WikiText-2, seq {args.max_seq_length}, dupe_factor "
              f"{args.dupe_factor}, bert-base-cased vocab, {args.repeats} runs (best / median)")
        print(f"{'data':12s} {'workers':>7s} {'instances':>9s} {'shards':>6s} "
              f"{'inst/s':>17s} {'inst/s/process':>17s} {'inst/CPU-s':>17s} "
              f"{'x original':>10s} {'peak RSS':>9s}")
        for r in rows:
            print(f"{r['data']:12s} {r['workers']:7d} {r['instances']:9,d} {r['shards']:6d} "
                  f"{r['inst_per_s_best']:8,.0f}/{r['inst_per_s_median']:<8,.0f} "
                  f"{r['inst_per_s_per_process_best']:8,.0f}/"
                  f"{r['inst_per_s_per_process_median']:<8,.0f} "
                  f"{r['inst_per_cpu_s_best']:8,.0f}/{r['inst_per_cpu_s_median']:<8,.0f} "
                  f"{r['vs_original_per_process']:10.1f} {r['peak_rss_mb_max']:7.0f}MB")


if __name__ == "__main__":
    main()
