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
from bert_jax.errors import EXIT_RESUMABLE, UserError
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


@pytest.mark.slow
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
        # The step time, split into the wait for the next batch and the device's share.
        assert r["data_wait_s"] >= 0 and r["device_s"] >= 0
        assert r["step_s"] == pytest.approx(r["data_wait_s"] + r["device_s"])
        batch = 8 if r["seq_len"] == 32 else 4  # the preset's batch sizes per phase
        assert r["step_s"] * r["seq_per_s"] == pytest.approx(batch)
    assert [r["step"] for r in records if r["split"] == "eval"] == [4, 8]
    saved = json.loads((reference_run / "config.json").read_text())
    assert saved["data"]["train"] == tiny_data["train"] and saved["train"]["total_steps"] == 8
    # keep_checkpoints=3 of the every-2-steps saves
    assert checkpoint.Checkpointer(reference_run / "checkpoints").all_steps() == [4, 6, 8]


@pytest.mark.slow
def test_finished_run_resumed_reports_its_last_metrics(reference_run, tiny_data, tmp_path):
    # Nothing is left to train: the result is what the run logged last, not an empty dict.
    workdir = tmp_path / "finished"
    shutil.copytree(reference_run, workdir)
    result = pretrain.run(tiny_config(tiny_data), workdir, progress=False)
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    last_train = [r for r in lines if r["split"] == "train"][-1]
    last_eval = [r for r in lines if r["split"] == "eval"][-1]
    assert last_train["step"] == last_eval["step"] == 8
    assert result["loss"] == last_train["loss"]
    assert result["masked_lm_accuracy"] == last_train["masked_lm_accuracy"]
    assert result["eval_masked_lm_accuracy"] == last_eval["masked_lm_accuracy"]
    assert "step" not in result and "eval_split" not in result


@pytest.mark.slow
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


@pytest.mark.slow
def test_loader_worker_processes_do_not_change_the_run(reference_run, tiny_data, tmp_path):
    pretrain.run(tiny_config(tiny_data, **{"data.workers": 2}), tmp_path, progress=False)
    assert train_records(tmp_path) == train_records(reference_run)
    assert_same_params(final_params(tmp_path)[0], final_params(reference_run)[0])


@pytest.mark.slow
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


def wait_for_training(proc: subprocess.Popen, workdir: Path, timeout: float = 120) -> None:
    """Until the run has logged a train record (its steps are running)."""
    deadline = time.time() + timeout
    while not any(r["split"] == "train" for r in read_metrics(workdir)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no train record within the timeout"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_step_says_how_to_resume_and_resumes(tiny_data, tmp_path, signum):
    """Ctrl-C and SIGTERM: one line naming the saved step and the command that resumes,
    exit status 75 (not 0: the run did not finish); the re-run continues from that step."""
    workdir = tmp_path / "run"
    flags = overrides(tiny_data, **{"train.total_steps": 10_000, "train.phase2_start": 0,
                                    "train.checkpoint_every": 100_000, "train.log_every": 1,
                                    "train.eval_every": 100_000})
    cmd = [sys.executable, "-m", "bert_jax.cli", "pretrain", "--config",
           "configs/pretrain.py:tiny", "--workdir", str(workdir), "--no-progress", *flags]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_training(proc, workdir)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_RESUMABLE == 75, err[-3000:]
    assert "done:" not in out and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("stopped")]
    assert len(lines) == 1, err[-3000:]
    step = checkpoint.Checkpointer(workdir / "checkpoints").latest_step()
    assert step is not None and 0 < step < 10_000
    name = signal.Signals(signum).name
    resume = ("bert-jax pretrain --config configs/pretrain.py:tiny --workdir "
              f"{workdir} {' '.join(flags)}")
    assert lines[0] == (f"stopped ({name}): saved step {step} in {workdir / 'checkpoints'}; "
                        f"resume with: {resume}")
    def logged() -> list[int]:  # every train record, repeats included
        return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()
                if json.loads(line)["split"] == "train"]

    before = logged()
    assert before == list(range(1, step + 1))  # log_every=1: nothing ran past the saved step

    # The re-run (2 more steps) starts after the saved step: nothing is trained twice.
    cmd[cmd.index("--config.train.total_steps=10000")] = f"--config.train.total_steps={step + 2}"
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done:" in done.stdout
    assert logged() == before + [step + 1, step + 2]
    assert checkpoint.Checkpointer(workdir / "checkpoints").latest_step() == step + 2


@pytest.mark.slow
def test_profile_window_writes_a_trace(tiny_data, tmp_path):
    """--config.train.profile=2,3: a jax.profiler trace in <workdir>/tensorboard, the layout
    TensorBoard's profile plugin reads (plugins/profile/<run>/<host>.xplane.pb). Run as the
    CLI, in its own process, as a user would (the profiler is process-wide)."""
    cmd = [sys.executable, "-m", "bert_jax.cli", "pretrain", "--config",
           "configs/pretrain.py:tiny", "--workdir", str(tmp_path), "--no-progress",
           *overrides(tiny_data, **{"train.profile": "2,3", "train.total_steps": 6,
                                    "train.phase2_start": 0})]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 10_000


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def launch_two(workdir: Path, flags: list[str]) -> list[subprocess.Popen]:
    """The CLI as 2 jax.distributed processes on localhost, one CPU device each."""
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return [subprocess.Popen(
        [sys.executable, "-m", "bert_jax.cli", "pretrain", "--config",
         "configs/pretrain.py:tiny", "--workdir", str(workdir), "--no-progress", *flags,
         f"--config.distributed.coordinator_address={address}",
         "--config.distributed.num_processes=2", f"--config.distributed.process_id={pid}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for pid in range(2)]


@pytest.mark.slow
def test_sigterm_on_one_host_stops_both_at_the_same_step(tiny_data, tmp_path):
    """Preemption of one host of two: both save the same step (JAX's preemption sync point),
    exit 75 within a bounded time, and the resumed run equals an uninterrupted one."""
    flags = overrides(tiny_data, **{"train.total_steps": 200, "train.phase2_start": 0,
                                    "train.checkpoint_every": 100_000, "train.log_every": 1,
                                    "train.eval_every": 100_000})
    workdir = tmp_path / "run"
    procs = launch_two(workdir, flags)
    wait_for_training(procs[0], workdir)
    sent = time.time()
    procs[1].send_signal(signal.SIGTERM)  # host 1 only
    outputs = [p.communicate(timeout=90) for p in procs]
    took = time.time() - sent
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == EXIT_RESUMABLE, err[-3000:]
    lines = [[x for x in err.splitlines() if x.startswith("stopped")] for _, err in outputs]
    assert all(len(x) == 1 for x in lines), lines
    steps = [int(x[0].split("saved step ")[1].split()[0]) for x in lines]
    assert steps[0] == steps[1] < 200, lines
    assert checkpoint.Checkpointer(workdir / "checkpoints").latest_step() == steps[0]
    assert took < 60, f"the hosts took {took:.0f} s to stop"
    print(f"both hosts saved step {steps[0]} and exited {took:.1f} s after the SIGTERM")

    for p in launch_two(workdir, flags):  # resume: both hosts go on to step 200
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    reference = tmp_path / "reference"
    for p in launch_two(reference, flags):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    assert train_records(workdir) == train_records(reference)
    assert_same_params(final_params(workdir)[0], final_params(reference)[0])


@pytest.mark.slow
def test_tensor_axis_across_two_hosts_is_a_one_line_error(tiny_data, tmp_path):
    """Mesh (1, 1, 2) over 2 processes of 1 device: each batch row would get two hosts'
    different examples. Both hosts refuse at start-up, with one line, exit 2."""
    procs = launch_two(tmp_path / "run", overrides(tiny_data, **{"mesh.shape": "(1,1,2)"}))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2, err[-3000:]
        assert "Traceback" not in err
        assert [x for x in err.splitlines() if x.startswith("error:")] == [
            "error: mesh (data, fsdp, tensor) = (1, 1, 2): batch block 0 is on devices of "
            "hosts [0, 1], because the tensor axis (2) spans hosts; each host's loader reads "
            "different examples, so they would be mixed into rows that must be the same. "
            "Keep the tensor axis inside a host and spread hosts over data or fsdp"]


@pytest.mark.slow
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
