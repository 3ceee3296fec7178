"""Pre-training loader throughput per masking mode, against what H100s consume.

  python benchmarks/loader.py                    # seq 128 and 512, one process
  python benchmarks/loader.py --workers 2 --json

The data: WikiText-2 valid (../shared/data) with the released bert-base-cased vocab, made
once by create-data (static masks, 20 predictions at seq 128 and 80 at 512, as the recipe)
into --data-dir (default: a cache under the system temp directory). Modes:
  static      the masks stored in the data (what `create-data` made)
  dynamic     masks drawn in the loader (`--config.data.masking=dynamic`)
  whole-word  dynamic, whole-word groups (`--config.data.whole_word_masking=True`)
Each mode reads `--batch` sequences per batch for at least `--seconds`, after one untimed
batch, in one process (a loader is a pure function of (epoch, position), so `--workers N`
gives each of N processes every N-th batch and sums their rates; one process per core).
seq/s is wall clock; seq/CPU-s is per CPU-second of the processes (what free cores would
do; on a shared machine the wall-clock rate measures the other jobs too).

Demand: one training step of bert-base on one sequence costs `flops.train_flops` (20 or 80
masked positions); an H100 at 50% MFU of its 989 TFLOP/s dense bf16 peak consumes
0.5 * 989e12 / that many sequences per second, and 8 of them 8x that.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
SHARED = Path(os.environ.get("BERT_JAX_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
WIKI = SHARED / "corpus" / "wikitext-2-raw" / "valid.txt"
VOCAB = SHARED / "vocab" / "bert-base-cased" / "vocab.txt"
H100_PEAK, MFU = 989e12, 0.5
PREDICTIONS = {128: 20, 512: 80}
MODES = {"static": dict(masking="static"),
         "dynamic": dict(masking="dynamic", whole_word_masking=False),
         "whole-word": dict(masking="dynamic", whole_word_masking=True)}


def make_data(root: Path, seq: int) -> Path:
    from bert_jax.data import create_pretraining_data
    from bert_jax.tokenizer import Tokenizer

    out = root / f"wiki_valid_{seq}"
    if not (out / "metadata.json").exists() or '"complete": true' not in (
            out / "metadata.json").read_text():
        create_pretraining_data([str(WIKI)], str(out), Tokenizer.from_vocab(VOCAB),
                                max_seq_length=seq, max_predictions_per_seq=PREDICTIONS[seq],
                                dupe_factor=2, input_format="wikitext", progress=False)
    return out


def demand(seq: int) -> float:
    """Sequences per second one H100 consumes at 50% MFU training bert-base."""
    from bert_jax import flops
    from bert_jax.config import preset

    return MFU * H100_PEAK / flops.train_flops(preset("base"), seq, PREDICTIONS[seq])


def measure(args: tuple) -> tuple[int, float, float]:
    """(sequences, wall seconds, CPU seconds) of one worker reading every `workers`-th batch."""
    data_dir, mode, batch, seconds, worker, workers = args
    from bert_jax.data import PretrainingLoader

    loader = PretrainingLoader(data_dir, batch, seed=0, **MODES[mode])
    per_epoch = len(loader)
    step = worker
    loader.batch(0, step % per_epoch)  # untimed: maps the shards
    count, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        step += workers
        loader.batch(step // per_epoch, step % per_epoch)
        count += batch
    return count, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--batch", type=int, default=256, help="sequences per batch")
    parser.add_argument("--seconds", type=float, default=5.0, help="per mode and length")
    parser.add_argument("--workers", type=int, default=1, help="processes (one per core)")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "bert-jax-loader-bench")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not WIKI.exists() or not VOCAB.exists():
        sys.exit(f"needs {WIKI} and {VOCAB} (../shared/data)")

    rows = []
    ctx = multiprocessing.get_context("spawn")
    for seq in args.seq:
        data_dir = make_data(args.data_dir, seq)
        need = demand(seq)
        for mode in args.modes:
            jobs = [(str(data_dir), mode, args.batch, args.seconds, w, args.workers)
                    for w in range(args.workers)]
            if args.workers == 1:
                results = [measure(jobs[0])]
            else:
                with ctx.Pool(args.workers) as pool:
                    results = pool.map(measure, jobs)
            rate = sum(n / s for n, s, _ in results)
            per_cpu_s = sum(n for n, _, _ in results) / sum(c for _, _, c in results)
            rows.append({"seq": seq, "mode": mode, "workers": args.workers,
                         "seq_per_s": rate, "seq_per_cpu_s": per_cpu_s, "demand_1xH100": need,
                         "demand_8xH100": 8 * need, "x_8xH100": rate / (8 * need)})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"loader seq/s, {args.workers} process(es), batch {args.batch}; demand: bert-base "
          f"at {MFU:.0%} MFU of an H100's {H100_PEAK / 1e12:.0f} TFLOP/s bf16 dense")
    print(f"{'seq':>4} {'mode':>10} {'seq/s':>9} {'seq/CPU-s':>9} {'1xH100':>8} {'8xH100':>8} "
          f"{'x 8xH100':>9}")
    for r in rows:
        print(f"{r['seq']:>4} {r['mode']:>10} {r['seq_per_s']:>9,.0f} {r['seq_per_cpu_s']:>9,.0f} "
              f"{r['demand_1xH100']:>8,.0f} {r['demand_8xH100']:>8,.0f} "
              f"{r['x_8xH100']:>8.1f}x")


if __name__ == "__main__":
    main()
