"""The pre-training loop end to end, on the tiny preset and data made from the demo corpus.

Two phases (seq 32 then 64), checkpoints every 2 steps. What is checked: a resumed run
(from any checkpoint, in either phase, in-process or after SIGKILL of the CLI) equals the
uninterrupted one exactly; non-finite steps stop or are skipped; the exported
checkpoint is what transformers' BertForPreTraining computes; a workdir is a --model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import REPO, require

from bert_jax import checkpoint, configlib, data
from bert_jax.errors import UserError
from bert_jax.tokenizer import Tokenizer
from bert_jax.train import pretrain
from bert_jax.train.writer import read_metrics, without_timing

VOCAB_SIZE = 320  # the model's; the trained vocab is at most this


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, str]:
    """Vocab + seq-32 and seq-64 train/eval data from slices of the demo corpus."""
    root = tmp_path_factory.mktemp("pretrain_data")
    docs = data.demo_corpus_path().read_text(encoding="utf-8").strip().split("\n\n")
    (root / "train.txt").write_text("\n\n".join(docs[:60]) + "\n")
    (root / "eval.txt").write_text("\n\n".join(docs[60:70]) + "\n")
    vocab = data.train_vocab([str(root / "train.txt")], root / "vocab", vocab_size=VOCAB_SIZE)
    tokenizer = Tokenizer.from_vocab(vocab)
    assert tokenizer.vocab_size <= VOCAB_SIZE
    out = {"vocab": str(vocab)}
    for seq, suffix in ((32, ""), (64, "_phase2")):
        for split in ("train", "eval"):
            data.create_pretraining_data(
                [str(root / f"{split}.txt")], str(root / f"{split}{seq}"), tokenizer,
                max_seq_length=seq, max_predictions_per_seq=5, dupe_factor=1, progress=False)
            out[f"{split}{suffix}"] = str(root / f"{split}{seq}")
    return out


def overrides(tiny_data: dict[str, str], **extra) -> list[str]:
    items = {f"data.{k}": v for k, v in tiny_data.items()}
    items |= {"model.vocab_size": VOCAB_SIZE, **extra}
    return [f"--config.{k}={v}" for k, v in items.items()]


def tiny_config(tiny_data, **extra):
    return configlib.load("configs/pretrain.py:tiny", overrides(tiny_data, **extra))


def final_params(workdir: Path):
    params, step = checkpoint.restore_params(workdir / "checkpoints")
    return params, step


def assert_same_params(a, b) -> None:
    flat_a, tree_a = jax.tree.flatten(a)
    flat_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def train_records(workdir: Path) -> dict[int, dict]:
    """step -> train metrics, without the timing fields (those differ between runs)."""
    return {r["step"]: without_timing(r) for r in read_metrics(workdir) if r["split"] == "train"}


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory) -> Path:
    """The uninterrupted two-phase run every resume is compared with."""
    workdir = tmp_path_factory.mktemp("reference")
    pretrain.run(tiny_config(tiny_data), workdir, progress=False)
    return workdir


def test_two_phase_run_logs_checkpoints_and_config(reference_run, tiny_data):
    records = read_metrics(reference_run)
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    # Phase 1 at 32 tokens until step 6, then phase 2 at 64 (the preset's phase2_start).
    assert [r["seq_len"] for r in train] == [32, 32, 32, 64]
    for r in train:
        for key in ("loss", "masked_lm_loss", "masked_lm_accuracy", "next_sentence_loss",
                    "next_sentence_accuracy", "grad_norm", "lr", "seq_per_s", "tokens_per_s"):
            assert np.isfinite(r[key]), key
        assert r["tokens_per_s"] == pytest.approx(r["seq_per_s"] * r["seq_len"])
    assert [r["step"] for r in records if r["split"] == "eval"] == [4, 8]
    saved = json.loads((reference_run / "config.json").read_text())
    assert saved["data"]["train"] == tiny_data["train"] and saved["train"]["total_steps"] == 8
    # keep_checkpoints=3 of the every-2-steps saves
    assert checkpoint.Checkpointer(reference_run / "checkpoints").all_steps() == [4, 6, 8]


@pytest.mark.parametrize("resume_from", [4, 6])  # inside phase 1; at the phase boundary
def test_resumed_run_equals_uninterrupted(reference_run, tiny_data, tmp_path, resume_from):
    """Cut the reference run back to checkpoint `resume_from` and finish it again."""
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    for step_dir in (workdir / "checkpoints").iterdir():
        if step_dir.name.isdigit() and int(step_dir.name) > resume_from:
            shutil.rmtree(step_dir)
    metrics = workdir / "metrics.jsonl"
    metrics.write_text("".join(line for line in metrics.read_text().splitlines(True)
                               if json.loads(line)["step"] <= resume_from))
    pretrain.run(tiny_config(tiny_data), workdir, progress=False)
    assert train_records(workdir) == train_records(reference_run)
    assert_same_params(final_params(workdir)[0], final_params(reference_run)[0])


def test_sigkill_then_resume_equals_uninterrupted(reference_run, tiny_data, tmp_path):
    """The CLI killed with SIGKILL once a checkpoint exists, then re-run on its workdir."""
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "bert_jax.cli", "pretrain", "--config",
           "configs/pretrain.py:tiny", "--workdir", str(workdir), "--no-progress",
           *overrides(tiny_data)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (workdir / "checkpoints" / "2").is_dir() and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert train_records(workdir)[8] == train_records(reference_run)[8]
    assert_same_params(final_params(workdir)[0], final_params(reference_run)[0])


def test_sigterm_saves_and_stops(tiny_data, tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "bert_jax.cli", "pretrain", "--config",
           "configs/pretrain.py:tiny", "--workdir", str(workdir), "--no-progress",
           *overrides(tiny_data, **{"train.total_steps": 10_000, "train.phase2_start": 0,
                                    "train.checkpoint_every": 100_000})]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (workdir / "metrics.jsonl").exists():  # training has started
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    step = checkpoint.Checkpointer(workdir / "checkpoints").latest_step()
    assert step is not None and 0 < step < 10_000  # saved where it stopped


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_steps(tiny_data, tmp_path, mode):
    """An absurd lr blows the parameters up after a few finite steps."""
    config = tiny_config(tiny_data, **{"optimizer.lr": 1e30, "optimizer.warmup_steps": 0,
                                       "train.on_nonfinite": mode, "train.phase2_start": 0,
                                       "optimizer.clip_norm": 0.0, "train.log_every": 1,
                                       "train.checkpoint_every": 1})
    if mode == "stop":
        with pytest.raises(pretrain.DivergedError, match="non-finite"):
            pretrain.run(config, tmp_path, progress=False)
        kept = checkpoint.Checkpointer(tmp_path / "checkpoints").all_steps()
        params, _ = final_params(tmp_path)
        # every kept checkpoint holds finite parameters: the bad update was never applied
        assert kept == [1]
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    else:
        pretrain.run(config, tmp_path, progress=False)
        train = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
        assert sum(r["skipped_steps"] for r in train) > 0
        params, step = final_params(tmp_path)
        assert step == 8
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_export_loads_in_transformers_with_equal_logits(reference_run, tmp_path):
    torch = require("torch")
    transformers = require("transformers")
    from bert_jax import model as model_lib
    from bert_jax import weights
    from bert_jax.cli import main

    out = tmp_path / "hf"
    assert main(["export", "--workdir", str(reference_run), "--to", str(out)]) == 0
    hf, info = transformers.BertForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    hf.eval()
    pretrained = weights.load_pretrained(reference_run, head="pretraining")
    batch = pretrained.tokenizer.encode_batch(["The river ran past the old mill."],
                                              ["It was quiet."])
    module = model_lib.build(pretrained.config, "pretraining")
    out = module.apply({"params": pretrained.params}, batch["input_ids"],
                       batch["attention_mask"], batch["token_type_ids"])
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(v) for k, v in batch.items()})
    np.testing.assert_allclose(np.asarray(out.mlm_logits), ref.prediction_logits.numpy(),
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(out.nsp_logits), ref.seq_relationship_logits.numpy(),
                               atol=1e-4)


def test_bad_config_errors(tiny_data, tmp_path):
    with pytest.raises(UserError, match="does not divide|divisible|split"):
        pretrain.run(tiny_config(tiny_data, **{"train.batch_size": 6,
                                               "train.accum_steps": 4}), tmp_path,
                     progress=False)
    with pytest.raises(UserError, match="train_phase2"):
        pretrain.run(tiny_config(tiny_data, **{"data.train_phase2": ""}), tmp_path,
                     progress=False)
    with pytest.raises(UserError, match="not found"):
        pretrain.run(tiny_config(tiny_data, **{"data.train": str(tmp_path / "nope")}),
                     tmp_path / "w", progress=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(reference_run, tiny_data, tmp_path):
    """jax.distributed over 2 local CPU processes (gloo collectives), one device each:
    each feeds its half of every global batch; the result is the single-process run's."""
    workdir = tmp_path / "run"
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs = [subprocess.Popen(
        [sys.executable, "-m", "bert_jax.cli", "pretrain", "--config",
         "configs/pretrain.py:tiny", "--workdir", str(workdir), "--no-progress", "--json",
         *overrides(tiny_data, **{"distributed.coordinator_address": address,
                                  "distributed.num_processes": 2,
                                  "distributed.process_id": pid})],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for pid in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    # Both processes see the same global metrics; they match the one-process run to fp32
    # reduction-order tolerance (2 devices sum the gradient in a different order).
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results[0]["loss"] == results[1]["loss"]
    ours, ref = train_records(workdir), train_records(reference_run)
    assert sorted(ours) == sorted(ref) == [2, 4, 6, 8]
    for step in ref:
        for key in ("loss", "masked_lm_loss", "next_sentence_loss", "grad_norm"):
            assert ours[step][key] == pytest.approx(ref[step][key], rel=1e-5), (step, key)
    for a, b in zip(jax.tree.leaves(final_params(workdir)[0]),
                    jax.tree.leaves(final_params(reference_run)[0]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)


def test_init_from_another_run_continues_from_its_weights(reference_run, tiny_data, tmp_path):
    """Continued pre-training: with lr 0 (which also zeroes the decoupled weight decay) the
    run's parameters stay exactly the loaded ones."""
    config = tiny_config(tiny_data, **{"init_from": str(reference_run), "optimizer.lr": 0.0,
                                       "train.total_steps": 2, "train.phase2_start": 0})
    pretrain.run(config, tmp_path, progress=False)
    assert_same_params(final_params(tmp_path)[0], final_params(reference_run)[0])
    with pytest.raises(UserError, match="architecture differs"):
        pretrain.run(tiny_config(tiny_data, **{"init_from": str(reference_run),
                                               "model.num_hidden_layers": 1}),
                     tmp_path / "other", progress=False)
