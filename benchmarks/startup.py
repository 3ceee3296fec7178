"""Start-up of the demo with an empty and with a warm compilation cache.

  python benchmarks/startup.py            # two fresh demo runs sharing a new cache

Each run is `bert-jax pretrain --config configs/pretrain.py:demo` (a few steps) in a fresh
process and a fresh workdir (so both build the demo data, and neither resumes), logging
every step.
Start-up = from launching the process to the first step's metrics record (so it holds
one step and the demo data build). The cache's entries are counted after each run: a
second run that compiles nothing adds none.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(workdir: Path, cache: Path, steps: int) -> float:
    from bert_jax.runs import RunDir

    env = {**os.environ, "BERT_JAX_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    start = time.time()
    subprocess.run([sys.executable, "-m", "bert_jax.cli", "pretrain", "--workdir",
                    str(workdir), "--no-progress", f"--config.train.total_steps={steps}",
                    "--config.train.log_every=1", "--config.optimizer.warmup_steps=1"],
                   cwd=REPO, env=env, check=True, capture_output=True)
    first = json.loads(RunDir(workdir).metrics.read_text().splitlines()[0])
    return first["time"] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for name in ("empty cache", "warm cache"):
            seconds = run(Path(tmp) / name.replace(" ", "_"), cache, args.steps)
            entries = sum(1 for p in cache.rglob("*") if p.is_file())
            print(f"{name}: first step {seconds:.1f} s after launch; cache entries {entries}")


if __name__ == "__main__":
    main()
