"""The persistent compilation cache in the commands: run a second time, in a fresh process,
`bert-jax embed` and `bert-jax glue` load every program from the cache and compile none;
JAX_ENABLE_COMPILATION_CACHE=false writes nothing. Counts come from jax's own monitoring
events (cache hits and misses), recorded in the child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from test_glue_cli import FIXTURES, TINY, tiny_model  # noqa: F401  (tiny_model: a fixture)

# Runs the CLI with argv[1:] and prints, after its output, the cache events it caused.
CHILD = """
import json, sys
from jax import monitoring
counts = {}
monitoring.register_event_listener(
    lambda event, **kw: counts.__setitem__(event, counts.get(event, 0) + 1))
from bert_jax import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code,
                  "hits": counts.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": counts.get("/jax/compilation_cache/cache_misses", 0)}))
"""


def run_cli(cache, *argv, enabled=True) -> tuple[dict, list[str]]:
    """(the cache events, the command's output lines) of the CLI in a fresh process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "BERT_JAX_CACHE": str(cache),
           "JAX_ENABLE_COMPILATION_CACHE": str(enabled).lower()}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, argv)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    *lines, counts = out.stdout.strip().splitlines()
    counts = json.loads(counts)
    assert counts.pop("code") == 0, out.stderr[-3000:]
    return counts, lines


def entries(cache) -> int:
    return sum(1 for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0


@pytest.mark.slow
def test_embed_run_again_compiles_nothing(tiny_model, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    argv = ("embed", "--model", tiny_model, "--json", "the man went out .", "a cat ?")
    first, out1 = run_cli(cache, *argv)
    written = entries(cache)
    second, out2 = run_cli(cache, *argv)
    assert first["misses"] >= 1 and first["hits"] == 0 and written >= first["misses"]
    assert second == {"hits": first["misses"], "misses": 0}
    assert entries(cache) == written  # nothing new to store
    assert out2 == out1 and len(out1) == 2  # the same embeddings, from the cached programs

    off = tmp_path / "off"
    third, out3 = run_cli(off, *argv, enabled=False)
    assert third == {"hits": 0, "misses": 0} and entries(off) == 0
    assert out3 == out1


@pytest.mark.slow
def test_glue_sweep_run_again_compiles_nothing(tiny_model, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"

    def sweep(workdir):
        return run_cli(cache, "glue", "--task", "MNLI", "--model", tiny_model, "--data-dir",
                       FIXTURES, "--workdir", tmp_path / workdir, "--lrs", "1e-3",
                       "--seeds", "1", "--no-progress", "--json", *TINY)

    first, out1 = sweep("a")
    second, out2 = sweep("b")  # the same sweep from scratch: fine-tuned again, not compiled
    assert first["misses"] >= 3 and first["hits"] == 0  # init, train step, predict, ...
    assert second == {"hits": first["misses"], "misses": 0}
    runs = [json.loads(out[-1])["tasks"]["MNLI"]["runs"] for out in (out1, out2)]
    assert [r["metrics"] for r in runs[0]] == [r["metrics"] for r in runs[1]]
