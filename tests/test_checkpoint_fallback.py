"""Damaged checkpoints, model/config mismatches and moved workdirs, through the CLI.

One tiny pre-training run (4 steps, checkpoints at 2 and 4) is copied and damaged the
ways a shared cluster damages files: a data file truncated (a full disk) or deleted (a
cleanup script). Resume and export must take the newest checkpoint that restores and
say in one line which one they skipped and why; a workdir moved elsewhere must still
resume, export and serve fill-mask.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bert_jax import checkpoint, cli, data
from bert_jax.tokenizer import Tokenizer
from bert_jax.train.writer import read_metrics, without_timing

VOCAB_SIZE = 320


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single `error: ...` line of stderr (no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fallback_data")
    docs = data.demo_corpus_path().read_text(encoding="utf-8").strip().split("\n\n")
    (root / "train.txt").write_text("\n\n".join(docs[:40]) + "\n")
    vocab = data.train_vocab([str(root / "train.txt")], root / "vocab", vocab_size=VOCAB_SIZE)
    data.create_pretraining_data([str(root / "train.txt")], str(root / "train32"),
                                 Tokenizer.from_vocab(vocab), max_seq_length=32,
                                 max_predictions_per_seq=5, dupe_factor=1, progress=False)
    return {"vocab": str(vocab), "train": str(root / "train32")}


def pretrain_argv(tiny_data, workdir: Path, steps: int, *extra: str) -> list[str]:
    return ["pretrain", "--config", "configs/pretrain.py:tiny", "--workdir", str(workdir),
            "--no-progress", f"--config.data.train={tiny_data['train']}",
            f"--config.data.vocab={tiny_data['vocab']}", f"--config.model.vocab_size={VOCAB_SIZE}",
            "--config.train.phase2_start=0", f"--config.train.total_steps={steps}",
            "--config.train.keep_checkpoints=5", *extra]


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """A 4-step run (checkpoints 2, 4) and the same run taken to 6 steps (2, 4, 6)."""
    root = tmp_path_factory.mktemp("fallback_runs")
    assert cli.main(pretrain_argv(tiny_data, root / "four", 4)) == 0
    assert cli.main(pretrain_argv(tiny_data, root / "six", 6)) == 0
    return {"four": root / "four", "six": root / "six"}


def copy_run(runs, tmp_path) -> Path:
    workdir = tmp_path / "run"
    shutil.copytree(runs["four"], workdir)
    return workdir


def data_files(workdir: Path, step: int) -> list[Path]:
    files = sorted((workdir / "checkpoints" / str(step) / "state" / "d").iterdir())
    assert files
    return files


def truncate(workdir: Path, step: int) -> None:
    for f in data_files(workdir, step):
        f.write_bytes(f.read_bytes()[:100])


def delete(workdir: Path, step: int) -> None:
    for f in data_files(workdir, step):
        f.unlink()


DAMAGE = {"truncated": (truncate, "OUT_OF_RANGE"), "deleted": (delete, "NOT_FOUND")}


@pytest.mark.slow
@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_resume_skips_a_damaged_latest_checkpoint(runs, tiny_data, tmp_path, capsys, how):
    damage, cause = DAMAGE[how]
    workdir = copy_run(runs, tmp_path)
    damage(workdir, 4)
    code, _, err = run_cli(capsys, *pretrain_argv(tiny_data, workdir, 6))
    assert code == 0 and "Traceback" not in err and "Event loop is closed" not in err
    skipped = [line for line in err.splitlines() if "skipping checkpoint" in line]
    assert len(skipped) == 1
    assert f"{workdir / 'checkpoints' / '4'}: it does not restore ({cause}" in skipped[0]
    assert "INFO bert_jax.train.pretrain: resumed from step 2" in err
    assert "Metadata file does not exist" not in err
    assert (workdir / "checkpoints" / "4.damaged").is_dir()
    assert checkpoint.Checkpointer(workdir / "checkpoints").all_steps() == [2, 4, 6]
    # Resumed from 2, the run is the uninterrupted 6-step run, step for step.
    assert ([without_timing(r) for r in read_metrics(workdir)]
            == [without_timing(r) for r in read_metrics(runs["six"])])


@pytest.mark.slow
@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_export_skips_a_damaged_latest_checkpoint(runs, tmp_path, capsys, how):
    damage, cause = DAMAGE[how]
    workdir = copy_run(runs, tmp_path)
    damage(workdir, 4)
    code, out, err = run_cli(capsys, "export", "--workdir", str(workdir),
                             "--to", str(tmp_path / "out"))
    assert code == 0 and "Traceback" not in err and "Event loop is closed" not in err
    assert "Metadata file does not exist" not in err
    skipped = [line for line in err.splitlines() if line.strip()]
    assert len(skipped) == 1 and "skipping checkpoint" in skipped[0] and cause in skipped[0]
    assert out.strip() == f"exported step 2 to {tmp_path / 'out'}"
    assert not (workdir / "checkpoints" / "4.damaged").exists()  # export changes nothing

    code, _, err = run_cli(capsys, "export", "--workdir", str(workdir), "--step", "4",
                           "--to", str(tmp_path / "out"))
    line = one_error_line(err)
    assert code == 2 and f"checkpoint {workdir / 'checkpoints' / '4'} does not restore: " \
                          f"{cause}" in line


@pytest.mark.slow
def test_export_of_a_step_that_does_not_exist_lists_the_steps(runs, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", "--workdir", str(runs["four"]), "--step", "3",
                           "--to", str(tmp_path / "out"))
    assert code == 2
    assert one_error_line(err) == (f"error: no checkpoint at step 3 in "
                                   f"{runs['four'] / 'checkpoints'} (steps there: 2, 4)")


@pytest.mark.slow
def test_every_checkpoint_damaged_is_one_line(runs, tmp_path, capsys):
    workdir = copy_run(runs, tmp_path)
    truncate(workdir, 4)
    delete(workdir, 2)
    code, _, err = run_cli(capsys, "export", "--workdir", str(workdir),
                           "--to", str(tmp_path / "out"))
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"error: no checkpoint in {workdir / 'checkpoints'} "
                                         "restores (step 4: OUT_OF_RANGE")
    assert "step 2: NOT_FOUND" in line


@pytest.mark.slow
def test_resume_with_another_model_size_is_one_line(runs, tiny_data, tmp_path, capsys):
    workdir = copy_run(runs, tmp_path)
    code, _, err = run_cli(capsys, *pretrain_argv(tiny_data, workdir, 6,
                                                  "--config.model.intermediate_size=48"))
    line = one_error_line(err)
    assert code == 2
    assert line.startswith(f"error: checkpoint {workdir / 'checkpoints' / '4'} holds params[")
    assert "of shape (64,) but the model config has (48,)" in line
    assert line.endswith("use the model config the run was started with (its config.json), "
                         "or a new --workdir")


@pytest.mark.slow
def test_export_when_config_json_disagrees_with_the_checkpoint(runs, tmp_path, capsys):
    workdir = copy_run(runs, tmp_path)
    saved = json.loads((workdir / "config.json").read_text())
    saved["model"]["hidden_size"] = 64
    saved["model"]["intermediate_size"] = 64
    (workdir / "config.json").write_text(json.dumps(saved))
    code, _, err = run_cli(capsys, "export", "--workdir", str(workdir),
                           "--to", str(tmp_path / "out"))
    line = one_error_line(err)
    assert code == 2 and "config hidden_size=64 but the checkpoint has 32" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_moved_workdir_resumes_exports_and_serves_fill_mask(runs, tiny_data, tmp_path,
                                                              capsys, monkeypatch):
    """The demo keeps its data and vocab in the workdir: moved, they move with it."""
    workdir = tmp_path / "made-here" / "run"
    shutil.copytree(runs["four"], workdir)
    vocab_inside = workdir / "vocab.txt"
    shutil.copy(tiny_data["vocab"], vocab_inside)
    saved = json.loads((workdir / "config.json").read_text())
    saved["data"]["vocab"] = str(vocab_inside)
    (workdir / "config.json").write_text(json.dumps(saved))
    monkeypatch.chdir(tmp_path / "made-here")
    # Re-saved by a resume from inside its parent: paths inside are stored relative.
    assert cli.main(pretrain_argv(tiny_data, Path("run"), 4,
                                  "--config.data.vocab=run/vocab.txt")) == 0
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["vocab"] == "vocab.txt"
    assert saved["data"]["train"] == str(Path(tiny_data["train"]).resolve())
    capsys.readouterr()

    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(workdir), moved)
    shutil.rmtree(tmp_path / "made-here")
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out, err = run_cli(capsys, "fill-mask", "--model", str(moved), "--top-k", "2",
                             "--json", "Anna is a [MASK].")
    assert code == 0, err
    assert len(json.loads(out)["masks"][0]) == 2
    code, out, err = run_cli(capsys, "export", "--workdir", "run", "--to", "hf")
    assert code == 0, err
    assert (Path("hf") / "vocab.txt").read_bytes() == Path(tiny_data["vocab"]).read_bytes()
    code, _, err = run_cli(capsys, *pretrain_argv(tiny_data, Path("run"), 6,
                                                  "--config.data.vocab=run/vocab.txt"))
    assert code == 0 and "resumed from step 4" in err
    assert checkpoint.Checkpointer(moved / "checkpoints").all_steps() == [2, 4, 6]


@pytest.mark.slow
def test_divergence_before_the_first_checkpoint_says_so(tiny_data, tmp_path, capsys):
    """It said `the last good checkpoint (step None) is kept`."""
    code, _, err = run_cli(capsys, *pretrain_argv(
        tiny_data, tmp_path / "run", 4, "--config.optimizer.lr=1e30",
        "--config.optimizer.warmup_steps=0", "--config.optimizer.clip_norm=0.0",
        "--config.train.log_every=1", "--config.train.checkpoint_every=100"))
    line = one_error_line(err)
    assert code == 2 and line.startswith("error: non-finite loss or gradients at step ")
    assert "no checkpoint was saved yet (rerunning starts from step 0)" in line
    assert "None" not in line
