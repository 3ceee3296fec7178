"""Test-server files: names, header, label spellings, MNLI-m/mm and AX, the zip."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_file

from bert_jax.errors import UserError
from bert_jax.glue import submission as glue_submission
from bert_jax.glue import tasks

FIXTURES = Path(__file__).parent / "fixtures" / "glue"

# What gluebenchmark.com reads in each file's `prediction` column.
SPELLINGS = {
    "CoLA": {"0", "1"}, "SST-2": {"0", "1"}, "MRPC": {"0", "1"}, "QQP": {"0", "1"},
    "WNLI": {"0", "1"}, "QNLI": {"entailment", "not_entailment"},
    "RTE": {"entailment", "not_entailment"},
    "MNLI": {"entailment", "neutral", "contradiction"},
    "AX": {"entailment", "neutral", "contradiction"},
}


def _read(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _predict(task: tasks.TaskSpec, n: int) -> np.ndarray:
    """Stand-in predictions that use every label (cycling) or span past [0, 5]."""
    if task.is_regression:
        return np.linspace(-1.0, 6.0, n)
    return np.arange(n) % task.num_labels


def test_a_full_submission(tmp_path):
    out = tmp_path / "submission"
    real = shared_file("glue", "CoLA", "test.tsv").parent.parent
    written = {}
    for name in tasks.GLUE_TASKS + ("AX",):
        task = tasks.get_task(name)
        for split in task.test_splits:
            data_dir = FIXTURES if name in ("MNLI", "QQP", "AX") else real
            examples = tasks.read_split(task, data_dir, split)
            # AX is predicted by the MNLI model: MNLI label indices, AX's file.
            preds = _predict(task, len(examples))
            path = glue_submission.write_predictions(
                task, [e.guid for e in examples], preds, out, split=split)
            written[path.name] = (task, examples, preds)
    assert sorted(written) == sorted(glue_submission.SUBMISSION_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(glue_submission.SUBMISSION_FILES)

    for name, (task, examples, preds) in written.items():
        rows = _read(out / name)
        assert rows[0] == ["index", "prediction"], name
        assert [r[0] for r in rows[1:]] == [e.guid for e in examples], name
        got = [r[1] for r in rows[1:]]
        if task.is_regression:
            values = np.array([float(v) for v in got])
            np.testing.assert_allclose(values, np.clip(preds, 0, 5), atol=1e-5)
            assert values.min() == 0.0 and values.max() == 5.0
        else:
            assert set(got) <= SPELLINGS[task.name], name
            assert len(got) < task.num_labels or set(got) == SPELLINGS[task.name], name
    # Labels map back through GLUE's spelling, not a shifted order.
    rte = _read(out / "RTE.tsv")
    assert rte[1] == ["0", "entailment"] and rte[2] == ["1", "not_entailment"]
    assert [r[1] for r in _read(out / "MNLI-m.tsv")[1:]] == [
        "contradiction", "entailment", "neutral"]
    assert len(_read(out / "MNLI-mm.tsv")) == 3 and len(_read(out / "AX.tsv")) == 5

    zip_path = glue_submission.write_zip(out, tmp_path / "glue.zip")
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == sorted(glue_submission.SUBMISSION_FILES)  # flat
        for name in zf.namelist():
            assert zf.read(name) == (out / name).read_bytes()


def test_partial_zip_warns_about_missing_files(tmp_path, caplog):
    glue_submission.write_predictions("WNLI", ["0", "1"], [1, 0], tmp_path)
    (tmp_path / "notes.txt").write_text("not part of a submission")
    path = glue_submission.write_zip(tmp_path)
    assert path == tmp_path / "submission.zip"
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["WNLI.tsv"]
    assert "lacks CoLA.tsv" in caplog.text


def test_bad_calls(tmp_path):
    with pytest.raises(ValueError, match="split= one of test_matched, test_mismatched"):
        glue_submission.write_predictions("MNLI", ["0"], [0], tmp_path)
    with pytest.raises(ValueError, match="2 indices but 1 predictions"):
        glue_submission.write_predictions("RTE", ["0", "1"], [0], tmp_path)
    with pytest.raises(ValueError, match="not a label index"):
        glue_submission.write_predictions("MNLI", ["0"], [3], tmp_path, split="test_matched")
    with pytest.raises(ValueError, match="integers"):
        glue_submission.write_predictions("CoLA", ["0"], [0.7], tmp_path)
    with pytest.raises(ValueError, match="duplicate"):
        glue_submission.write_predictions("CoLA", ["0", "0"], [0, 1], tmp_path)
    with pytest.raises(UserError, match="no GLUE prediction files"):
        glue_submission.write_zip(tmp_path)
