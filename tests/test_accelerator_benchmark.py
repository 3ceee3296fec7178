"""benchmarks/accelerator.py on the CPU: the smoke run writes a JSON row per configuration
with positive throughputs and an MFU in (0, 1]; a backend that fails is recorded in its row
and the run goes on; the time budget stops new configurations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "accelerator.py"
NUMBERS = ("train_steps_per_s", "train_seq_per_s", "train_mfu", "inference_seq_per_s",
           "inference_mfu", "peak_memory_bytes", "train_compile_s", "inference_compile_s",
           "gflop_per_train_step")


def run(tmp_path, *flags: str) -> dict:
    out_json = tmp_path / "out.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out_json),
                          *flags], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out_json.read_text())
    assert doc["smoke"] is True and doc["platform"] == "cpu" and doc["wall_s"] > 0
    return doc


@pytest.mark.slow
def test_smoke_run_writes_every_configuration(tmp_path):
    doc = run(tmp_path, "--peak-tflops", "1", "--steps", "2", "--warmup", "1")
    assert doc["peak_tflops"] == 1.0 and doc["dtype"] == "bfloat16"
    rows = doc["results"]
    assert [(r["model"], r["seq_len"], r["batch_size"], r["attention"]) for r in rows] == [
        (model, seq, 2, attention) for model, seq in
        (("bert-base", 16), ("bert-base", 32), ("bert-large", 16))
        for attention in ("xla", "dot_product")]
    for r in rows:
        assert "error" not in r and "skipped" not in r, r
        assert all(r[k] > 0 for k in NUMBERS), r
        assert 0 < r["train_mfu"] <= 1 and 0 < r["inference_mfu"] <= 1
        assert r["train_seq_per_s"] == pytest.approx(2 * r["train_steps_per_s"])
        assert r["memory_source"] == "memory_analysis"  # the CPU keeps no memory_stats
        assert r["attention_dropout"] == (0.1 if r["attention"] == "xla" else 0.0)
    # The same model and shapes: xla and the fused kernel train to the same first losses
    # only up to dropout, so just check both are finite, positive cross-entropies.
    assert all(0 < r["loss"] < 20 for r in rows)


@pytest.mark.slow
def test_failure_is_recorded_and_budget_stops_new_configurations(tmp_path):
    # "splash" runs only on TPU: the first configuration fails in its own process; the
    # half-second budget is spent by then, so the other two never start.
    doc = run(tmp_path, "--attention", "splash", "--budget-s", "0.5")
    first, *rest = doc["results"]
    assert "splash" in first["error"] and "TPU" in first["error"], first
    assert len(rest) == 2 and all(r["skipped"].startswith("budget") for r in rest), rest
    assert not any(k in r for r in doc["results"] for k in NUMBERS)
