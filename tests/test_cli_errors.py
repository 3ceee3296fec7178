"""Bad input to every subcommand: exit status 2, one `error: ...` line naming the problem
and the file or flag, no traceback. Plus the help texts and the vocab/embedding check.

All in-process (`cli.main(argv)` with capsys), on a tiny random model saved to disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import pytest

from bert_jax import cli, weights
from bert_jax.config import preset
from bert_jax.model import build, init_params
from bert_jax.tokenizer import SPECIAL_TOKENS, Tokenizer

WORDS = [f"w{i}" for i in range(123)]


def save_model(d: Path, *, rows: int = 128, tokens: int = 128, head: str = "pretraining",
               task: str | None = None) -> Path:
    """A random tiny model with `rows` embedding rows and a vocab of `tokens` tokens."""
    cfg = preset("tiny", vocab_size=rows, num_labels=2)
    vocab = d.parent / f"{d.name}-vocab.txt"
    vocab.write_text("\n".join([*SPECIAL_TOKENS, *WORDS][:tokens]) + "\n")
    weights.save_pretrained(d, cfg, init_params(build(cfg, head), jax.random.key(0)),
                            Tokenizer.from_vocab(vocab), head)
    if task:
        hf = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**hf, "finetuning_task": task}))
    return d


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A directory with a model, an RTE classifier, and the bad files the cases use."""
    root = tmp_path_factory.mktemp("cli_errors")
    save_model(root / "model")
    save_model(root / "rte", head="classification", task="RTE")
    (root / "a_file").write_text("not a directory\n")
    (root / "latin1.txt").write_bytes("caf\xe9 w1 [MASK]\n".encode("latin-1"))
    (root / "garbage.bin").write_bytes(bytes(range(256)) * 400)
    (root / "corpus.txt").write_text("w1 w2 w3.\nw4 w5.\n\nw6 w7.\n")
    (root / "bad_config.py").write_text("def get_config(:\n")
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


# argv (with {d} for the files directory) -> what the one error line must say
CASES = {
    "config for another command": (
        "pretrain --config configs/glue.py --workdir {d}/w",
        "--config configs/glue.py is not a config for this command: it lacks data"),
    "config that does not run": (
        "pretrain --config {d}/bad_config.py --workdir {d}/w",
        "bad_config.py does not run: SyntaxError"),
    "config that is not a python file": (
        "pretrain --config {d}/corpus.txt --workdir {d}/w",
        "corpus.txt is not a Python config file"),
    "unknown preset": (
        "pretrain --config configs/pretrain.py:huge --workdir {d}/w",
        "get_config('huge') failed: unknown preset 'huge'"),
    "workdir is a file": (
        "pretrain --workdir {d}/a_file", "--workdir {d}/a_file exists and is not a directory"),
    "glue workdir is a file": (
        "glue --task RTE --model {d}/model --data-dir {d} --workdir {d}/a_file",
        "--workdir {d}/a_file exists and is not a directory"),
    "export workdir is a file": (
        "export --workdir {d}/a_file --to {d}/o", "--workdir {d}/a_file is a file"),
    "export of a model directory": (
        "export --workdir {d}/model --to {d}/o",
        "--workdir {d}/model is not a `bert-jax pretrain` workdir"),
    "export workdir missing": (
        "export --workdir {d}/nowhere --to {d}/o", "{d}/nowhere holds no config.json"),
    "convert output is a file": (
        "convert --from {d}/model --to {d}/a_file",
        "output directory {d}/a_file exists and is not a directory"),
    "train-vocab output is a file": (
        "train-vocab --input {d}/corpus.txt --output {d}/a_file",
        "--output {d}/a_file exists and is not a directory"),
    "create-data output is a file": (
        "create-data --input {d}/corpus.txt --output {d}/a_file --vocab {d}/model-vocab.txt",
        "output {d}/a_file exists and is not a directory"),
    "vocab not utf-8": (
        "create-data --input {d}/corpus.txt --output {d}/cd --vocab {d}/latin1.txt",
        "vocab file {d}/latin1.txt is not UTF-8 text (byte 3: b'\\xe9')"),
    "fill-mask input not utf-8": (
        "fill-mask --model {d}/model --input {d}/latin1.txt",
        "--input file {d}/latin1.txt is not UTF-8 text (byte 3"),
    "predict input not utf-8": (
        "predict --model {d}/rte --input {d}/latin1.txt",
        "--input file {d}/latin1.txt is not UTF-8 text (byte 3"),
    "embed input is a directory": (
        "embed --model {d}/model --input {d}", "--input file {d} is a directory, not a file"),
    "binary corpus for create-data": (
        "create-data --input {d}/garbage.bin --output {d}/cd --vocab {d}/model-vocab.txt",
        "input {d}/garbage.bin is not UTF-8 text (binary data?"),
    "binary corpus for train-vocab": (
        "train-vocab --input {d}/garbage.bin --output {d}/v",
        "input {d}/garbage.bin is not UTF-8 text (binary data?"),
    "override with a space and no value": (
        "pretrain --workdir {d}/w --config.train.total_steps",
        "--config.train.total_steps has no value: write --config.train.total_steps=VALUE"),
    "override of the wrong type": (
        "pretrain --workdir {d}/w --config.train.total_steps=ten",
        "--config.train.total_steps=ten: expected an integer (default 600), got a string"),
    "override of a float into an int": (
        "pretrain --workdir {d}/w --config.train.batch_size=1.5",
        "--config.train.batch_size=1.5: expected an integer (default 32), got a number"),
    "override of a group": (
        "pretrain --workdir {d}/w --config.train=3",
        "--config.train is a group of fields (accum_steps,"),
    "unknown override": (
        "pretrain --workdir {d}/w --config.train.total_step=3",
        "unknown config field 'train.total_step' (did you mean total_steps"),
    "override for a command without a config": (
        "fill-mask --model {d}/model --config.x=1 a", "fill-mask takes no --config overrides"),
    "convert from a file that is not weights": (
        "convert --from {d}/corpus.txt --to {d}/o",
        "{d}/corpus.txt is not a weights file"),
    "glue batch size 0": (
        "glue --task RTE --model {d}/model --data-dir {d} --workdir {d}/g "
        "--config.batch_size=0", "--config.batch_size=0: must be greater than 0"),
    "glue batch size negative": (
        "glue --task RTE --model {d}/model --data-dir {d} --workdir {d}/g "
        "--config.batch_size=-4", "--config.batch_size=-4: must be greater than 0"),
    "glue eval batch size 0": (
        "glue --task RTE --model {d}/model --data-dir {d} --workdir {d}/g "
        "--config.eval_batch_size=0", "--config.eval_batch_size=0: must be greater than 0"),
    "glue warmup above 1": (
        "glue --task RTE --model {d}/model --data-dir {d} --workdir {d}/g "
        "--config.warmup_proportion=1.5", "--config.warmup_proportion=1.5: must be between"),
    "predict with another task": (
        "predict --model {d}/rte --task MRPC A B",
        "--task MRPC: {d}/rte was fine-tuned on RTE; drop --task (or pass --task RTE)"),
    "fill-mask top-k 0": (
        "fill-mask --model {d}/model --top-k 0 w1 [MASK]",
        "--top-k must be between 1 and 128 (the vocab size), got 0"),
    "bad flag value": (
        "fill-mask --model {d}/model --top-k x w1", "argument --top-k: invalid int value: 'x'"),
    "unknown flag": ("pretrain --workdir {d}/w --steps 3", "unrecognized arguments: --steps 3"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(files, capsys, case):
    argv, message = CASES[case]
    argv = argv.format(d=files).split(" ")
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as e:  # argparse's own errors exit from the parser
        code, err = e.code, capsys.readouterr().err
    assert code == 2
    assert message.format(d=files) in one_error_line(err)


def test_override_with_a_space_is_the_override(files, capsys, monkeypatch):
    """`--config.a.b VALUE` means `--config.a.b=VALUE` (here: found bad before any work)."""
    code, _, err = run(capsys, "pretrain", "--workdir", str(files / "w"),
                       "--config.train.total_steps", "ten")
    assert code == 2 and "--config.train.total_steps=ten: expected an integer" in err


def test_an_os_error_naming_a_file_is_one_line(files, capsys, monkeypatch):
    """A full disk (or any OSError with a file name) deep inside a command: one line."""
    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device", str(files / "o" / "model.safetensors"))

    monkeypatch.setattr(weights, "save_pretrained", full)
    code, _, err = run(capsys, "convert", "--from", str(files / "model"), "--to",
                       str(files / "o"))
    assert code == 2
    assert one_error_line(err) == (f"error: No space left on device: "
                                   f"{files / 'o' / 'model.safetensors'}")


def test_a_bug_keeps_its_traceback(files, monkeypatch):
    def bug(*_args, **_kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(weights, "save_pretrained", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["convert", "--from", str(files / "model"), "--to", str(files / "o")])


# ---- the vocab against the embedding rows --------------------------------------------------

def test_a_vocab_far_shorter_than_the_embeddings_is_refused(tmp_path, capsys):
    model = save_model(tmp_path / "m", rows=300, tokens=100)
    code, _, err = run(capsys, "fill-mask", "--model", str(model), "w1 [MASK]")
    assert code == 2
    assert one_error_line(err) == (
        f"error: {model / 'tokenizer.json'} has 100 tokens but the word embeddings have 300 "
        "rows (padding goes to 128 at most): wrong vocab for these weights")


def test_a_vocab_longer_than_the_embeddings_is_refused(tmp_path, capsys):
    model = save_model(tmp_path / "m", rows=128, tokens=128)
    (model / "tokenizer.json").unlink()
    with open(model / "vocab.txt", "a") as f:
        f.write("extra\n")
    code, _, err = run(capsys, "embed", "--model", str(model), "w1")
    assert code == 2 and one_error_line(err) == (
        f"error: {model / 'vocab.txt'} has 129 tokens but the word embeddings have 128 rows: "
        "wrong vocab for these weights")


def test_padding_rows_are_never_predicted(tmp_path, capsys):
    """14 tokens, 15 rows (like the TF toy checkpoint): the 15th row is padding."""
    model = save_model(tmp_path / "m", rows=15, tokens=14)
    code, out, err = run(capsys, "fill-mask", "--model", str(model), "--top-k", "14", "--json",
                         "w1 [MASK] w3")
    assert code == 0, err
    top = json.loads(out)["masks"][0]
    assert sorted(r["token_id"] for r in top) == list(range(14))
    assert sum(r["score"] for r in top) == pytest.approx(1.0, abs=1e-5)
    code, _, err = run(capsys, "fill-mask", "--model", str(model), "--top-k", "15", "w1 [MASK]")
    assert code == 2 and "--top-k must be between 1 and 14 (the vocab size), got 15" in err


# ---- files written ---------------------------------------------------------------------------

def test_every_exported_file_is_0644_and_no_temporary_is_left(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert cli.main(["convert", "--from", str(save_model(tmp_path / "m")), "--to",
                         str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in (tmp_path / "out").iterdir()}
    assert modes == {"config.json": "0o644", "model.safetensors": "0o644",
                     "tokenizer.json": "0o644", "tokenizer_config.json": "0o644",
                     "vocab.txt": "0o644"}


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    from bert_jax import files as file_io

    target = tmp_path / "vocab.txt"
    target.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with file_io.atomic_path(target) as tmp, open(tmp, "w") as f:
            f.write("half of the new")
            raise KeyboardInterrupt
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["vocab.txt"]


# ---- help ------------------------------------------------------------------------------------

def subcommand(name: str):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


def test_export_help_does_not_say_it_resumes(capsys):
    text = subcommand("export").format_help()
    assert "resume" not in text and "nothing in it is changed" in " ".join(text.split())


@pytest.mark.parametrize("name", ["create-data", "train-vocab"])
def test_data_commands_document_every_flag_and_default(name):
    for action in subcommand(name)._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, action.option_strings
        if action.default not in (None, False) and action.dest != "json":
            assert "default" in action.help, action.option_strings


def test_pretrain_help_names_the_presets_and_how_to_shorten_a_run():
    text = subcommand("pretrain").format_help()
    for preset_name in ("demo", "base", "base_128", "large", "lamb", "tiny"):
        assert f"\n  {preset_name} " in text
    assert "--config.train.total_steps=100" in text


# ---- found by trying every subcommand as a user would -------------------------------------

MORE_CASES = {
    "train-vocab negative min frequency (was an OverflowError)": (
        "train-vocab --input {d}/corpus.txt --output {d}/v --min-frequency -1",
        "--min-frequency -1: must be 0 or more"),
    "pretrain log_every 0 (was a ZeroDivisionError after the first step)": (
        "pretrain --workdir {d}/w --config.train.log_every=0",
        "--config.train.log_every=0: must be greater than 0"),
    "pretrain checkpoint_every 0": (
        "pretrain --workdir {d}/w --config.train.checkpoint_every=0",
        "--config.train.checkpoint_every=0: must be greater than 0"),
    "pretrain eval_every 0": (
        "pretrain --workdir {d}/w --config.train.eval_every=0",
        "--config.train.eval_every=0: must be greater than 0"),
    "pretrain batch size 0 (was found after the data was built)": (
        "pretrain --workdir {d}/w --config.train.batch_size=0",
        "--config.train.batch_size=0: must be greater than 0"),
    "pretrain keep no checkpoints": (
        "pretrain --workdir {d}/w --config.train.keep_checkpoints=0",
        "--config.train.keep_checkpoints=0: must be greater than 0"),
    "pretrain on_nonfinite misspelt": (
        "pretrain --workdir {d}/w --config.train.on_nonfinite=skipp",
        "--config.train.on_nonfinite='skipp': choose stop or skip"),
    "negative learning rate (ran to the end, ascending the loss)": (
        "pretrain --workdir {d}/w --config.optimizer.lr=-1e-4",
        "--config.optimizer.lr=-0.0001: must be 0 or more"),
    "unknown lr decay (failed inside the first jit trace)": (
        "pretrain --workdir {d}/w --config.optimizer.decay=cosin",
        "unknown decay 'cosin'; choose linear, cosine or constant"),
    "model config.json not JSON (named twice)": (
        "fill-mask --model {d}/badjson w1 [MASK]",
        "{d}/badjson/config.json: not valid JSON (Expecting property name"),
    "workdir killed before its first checkpoint (said 'holds no weights')": (
        "fill-mask --model {d}/nockpt w1 [MASK]",
        "{d}/nockpt is a bert-jax workdir with no checkpoints yet"),
    "glue run that kept no weights": (
        "predict --model {d}/glue_run a b",
        "{d}/glue_run is a fine-tuning run that did not keep its weights: run `bert-jax glue` "
        "with --config.save_checkpoint=True"),
    "predict max length too small": (
        "predict --model {d}/rte --max-length 2 a b",
        "--max-length 2: must be at least 3 ([CLS] x [SEP])"),
    "workdir config.json not JSON (said 'holds no weights')": (
        "fill-mask --model {d}/badworkdir w1 [MASK]",
        "saved config {d}/badworkdir/config.json is not valid JSON (line 1"),
}


@pytest.fixture(scope="module")
def more_files(files) -> Path:
    (files / "badjson").mkdir()
    for f in (files / "model").iterdir():
        (files / "badjson" / f.name).write_bytes(f.read_bytes())
    (files / "badjson" / "config.json").write_text("{bad")
    (files / "badworkdir" / "checkpoints").mkdir(parents=True)
    (files / "badworkdir" / "config.json").write_text("{bad")
    (files / "glue_run").mkdir()
    (files / "glue_run" / "config.json").write_text(json.dumps({"model": {}, "task": "RTE"}))
    (files / "nockpt").mkdir()
    (files / "nockpt" / "config.json").write_text(json.dumps({"model": {"hidden_size": 32},
                                                              "train": {}}))
    return files


@pytest.mark.parametrize("case", sorted(MORE_CASES))
def test_more_bad_input_is_one_line_and_exit_2(more_files, capsys, case):
    argv, message = MORE_CASES[case]
    code, _, err = run(capsys, *argv.format(d=more_files).split(" "))
    assert code == 2
    assert message.format(d=more_files) in one_error_line(err)


def test_device_out_of_memory_is_one_line_saying_what_to_lower(files, capsys, monkeypatch):
    from bert_jax.train import pretrain

    def oom(*_args, **_kwargs):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17179869184 bytes.\n"
            "BufferAssignment OOM Debugging.\n...")

    monkeypatch.setattr(pretrain, "run", oom)
    code, _, err = run(capsys, "pretrain", "--workdir", str(files / "w"))
    assert code == 2 and one_error_line(err) == (
        "error: the device ran out of memory (RESOURCE_EXHAUSTED: Out of memory while trying "
        "to allocate 17179869184 bytes.); lower the batch size, or split it with "
        "--config.train.accum_steps, or set --config.model.remat=True")
