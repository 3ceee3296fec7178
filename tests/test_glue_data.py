"""GLUE readers: every row of the real files (published counts and label balances), MNLI,
QQP and AX on the project's fixtures, featurisation against transformers, bad input."""

from __future__ import annotations

import collections
import csv
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import require, shared_file

from bert_jax.errors import UserError
from bert_jax.glue import features, tasks

FIXTURES = Path(__file__).parent / "fixtures" / "glue"

# Published GLUE row counts (gluebenchmark.com, the GLUE paper's table 1 and the
# `datasets` card): (task, split) -> rows.
PUBLISHED_ROWS = {
    ("CoLA", "train"): 8551, ("CoLA", "dev"): 1043, ("CoLA", "test"): 1063,
    ("SST-2", "train"): 67349, ("SST-2", "dev"): 872, ("SST-2", "test"): 1821,
    ("MRPC", "train"): 3668, ("MRPC", "dev"): 408, ("MRPC", "test"): 1725,
    ("STS-B", "train"): 5749, ("STS-B", "dev"): 1500, ("STS-B", "test"): 1379,
    ("QNLI", "dev"): 5463, ("QNLI", "test"): 5463,
    ("RTE", "train"): 2490, ("RTE", "dev"): 277, ("RTE", "test"): 3000,
    ("WNLI", "train"): 635, ("WNLI", "dev"): 71, ("WNLI", "test"): 146,
}
# Published label counts, as GLUE spells the labels (the dev ones are the majority-class
# baselines everyone quotes: MRPC 68.4, RTE 52.7, QNLI 50.5, WNLI 56.3).
PUBLISHED_LABELS = {
    ("CoLA", "train"): {"1": 6023, "0": 2528}, ("CoLA", "dev"): {"1": 721, "0": 322},
    ("SST-2", "train"): {"1": 37569, "0": 29780}, ("SST-2", "dev"): {"1": 444, "0": 428},
    ("MRPC", "train"): {"1": 2474, "0": 1194}, ("MRPC", "dev"): {"1": 279, "0": 129},
    ("QNLI", "dev"): {"entailment": 2702, "not_entailment": 2761},
    ("RTE", "train"): {"entailment": 1249, "not_entailment": 1241},
    ("RTE", "dev"): {"entailment": 146, "not_entailment": 131},
    ("WNLI", "train"): {"0": 323, "1": 312}, ("WNLI", "dev"): {"0": 40, "1": 31},
}
# The column claims, written out here independently of the reader:
# (task, labelled) -> (header?, text_a column, text_b column, label column, width).
COLUMNS = {
    ("CoLA", True): (False, 3, None, 1, 4), ("CoLA", False): (True, 1, None, None, 2),
    ("SST-2", True): (True, 0, None, 1, 2), ("SST-2", False): (True, 1, None, None, 2),
    ("MRPC", True): (True, 3, 4, 0, 5), ("MRPC", False): (True, 3, 4, None, 5),
    ("STS-B", True): (True, 7, 8, 9, 10), ("STS-B", False): (True, 7, 8, None, 9),
    ("QNLI", True): (True, 1, 2, 3, 4), ("QNLI", False): (True, 1, 2, None, 3),
    ("RTE", True): (True, 1, 2, 3, 4), ("RTE", False): (True, 1, 2, None, 3),
    ("WNLI", True): (True, 1, 2, 3, 4), ("WNLI", False): (True, 1, 2, None, 3),
}


def _glue_dir(task: str, split: str) -> Path:
    return shared_file("glue", task, f"{split}.tsv").parent.parent


def _csv_rows(path: Path) -> list[list[str]]:
    """An independent read: the csv module with quoting off, BOM removed."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.mark.parametrize(("task", "split"), sorted(PUBLISHED_ROWS))
def test_every_row_of_the_real_files(task: str, split: str):
    data_dir = _glue_dir(task, split)
    examples = tasks.read_split(task, data_dir, split)
    assert len(examples) == PUBLISHED_ROWS[task, split]

    labelled = split != "test"
    header, col_a, col_b, col_label, width = COLUMNS[task, labelled]
    rows = _csv_rows(data_dir / task / f"{split}.tsv")
    assert {len(r) for r in rows} == {width}
    rows = rows[1:] if header else rows
    assert [e.text_a for e in examples] == [r[col_a] for r in rows]
    assert [e.text_b for e in examples] == [None if col_b is None else r[col_b] for r in rows]
    spec = tasks.get_task(task)
    if not labelled:
        assert all(e.label is None for e in examples)
        assert [e.guid for e in examples] == [r[0] for r in rows]  # the server's index
    elif spec.is_regression:
        assert [e.label for e in examples] == [float(r[col_label]) for r in rows]
    else:
        assert [spec.labels[e.label] for e in examples] == [r[col_label] for r in rows]
    assert len({e.guid for e in examples}) == len(examples)


@pytest.mark.parametrize(("task", "split"), sorted(PUBLISHED_LABELS))
def test_label_balance_matches_the_published_one(task: str, split: str):
    examples = tasks.read_split(task, _glue_dir(task, split), split)
    labels = tasks.get_task(task).labels
    assert collections.Counter(labels[e.label] for e in examples) == PUBLISHED_LABELS[task, split]


def test_bom_and_bare_quotes_are_kept_as_text():
    dev = tasks.read_split("MRPC", _glue_dir("MRPC", "dev"), "dev")
    # The file starts with a BOM and a header; the first example's second sentence opens
    # with a bare quote that never closes (a csv reader with quoting on joins rows there).
    assert dev[0].text_a.startswith("He said the foodservice pie business")
    assert dev[0].text_b.startswith('"The foodservice pie business')
    assert not any("\ufeff" in e.text_a for e in dev)


def test_stsb_is_regression():
    train = tasks.read_split("STS-B", _glue_dir("STS-B", "train"), "train")
    scores = np.array([e.label for e in train])
    assert tasks.get_task("stsb").labels is None and tasks.get_task("sts-b").num_labels == 1
    assert scores.min() == 0.0 and scores.max() == 5.0
    assert isinstance(train[0].label, float)


# ---- MNLI, QQP, AX on the fixtures -------------------------------------------------------

def test_mnli_fixture():
    task = tasks.get_task("mnli")
    assert task.dev_splits == ("dev_matched", "dev_mismatched")
    assert task.labels == ("contradiction", "entailment", "neutral")
    train = tasks.read_split(task, FIXTURES, "train")
    assert len(train) == 6
    assert train[1] == tasks.Example("1", "Nobody in the village owned a bicycle.",
                                    "Three villagers rode bicycles to work.", 0)
    assert [task.labels[e.label] for e in train] == [
        "entailment", "contradiction", "neutral", "entailment", "contradiction", "neutral"]
    assert train[2].text_a == 'She called the plan "bold" in her memo.'

    matched = tasks.read_split(task, FIXTURES, "dev_matched")
    # Row 3's annotator label1 says neutral; the gold label (last column) is entailment.
    assert [task.labels[e.label] for e in matched] == [
        "entailment", "contradiction", "neutral", "entailment"]
    mismatched = tasks.read_split(task, FIXTURES, "dev_mismatched")
    assert [task.labels[e.label] for e in mismatched] == [
        "contradiction", "neutral", "entailment"]
    assert mismatched[2].text_a == 'The sign read "closed" all week.'

    test_m = tasks.read_split(task, FIXTURES, "test_matched")
    test_mm = tasks.read_split(task, FIXTURES, "test_mismatched")
    assert [e.guid for e in test_m] == ["0", "1", "2"] and len(test_mm) == 2
    assert test_m[0].text_b == "The door is blue now." and test_m[0].label is None


def test_qqp_fixture():
    task = tasks.get_task("QQP")
    train = tasks.read_split(task, FIXTURES, "train")
    assert [e.label for e in train] == [1, 0, 1, 0, 1]
    assert train[2].text_a == 'What does "tabula rasa" mean?'
    dev = tasks.read_split(task, FIXTURES, "dev")
    assert [e.guid for e in dev] == ["100", "101", "102"]
    test = tasks.read_split(task, FIXTURES, "test")
    assert test[0] == tasks.Example("0", "Why is the sky blue?", "How far away is the moon?", None)
    assert len(test) == 4


def test_ax_fixture_in_both_layouts(tmp_path):
    ax = tasks.read_split("diagnostic", FIXTURES, "test")
    assert len(ax) == 4 and ax[1].text_b == "Three villagers rode bicycles to work."
    assert tasks.get_task("AX").labels == tasks.get_task("MNLI").labels
    (tmp_path / "AX").mkdir()
    shutil.copy(FIXTURES / "diagnostic" / "diagnostic.tsv", tmp_path / "AX" / "test.tsv")
    assert tasks.read_split("ax", tmp_path, "test") == ax


def test_registry():
    assert tasks.GLUE_TASKS == ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI",
                               "RTE", "WNLI")
    for name, want in [("sst2", "SST-2"), ("Sst-2", "SST-2"), ("sts-b", "STS-B"),
                       ("STSB", "STS-B"), ("mnli", "MNLI"), ("co_la", "CoLA"), ("AX", "AX")]:
        assert tasks.get_task(name).name == want
    assert tasks.get_task("qnli").labels == ("entailment", "not_entailment")
    assert tasks.get_task("wnli").labels == ("0", "1")
    names = [n for t in tasks.TASKS.values() for n in t.submission.values()]
    assert names == ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv",
                     "MNLI-m.tsv", "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"]


# ---- featurisation -----------------------------------------------------------------------

def test_featurize_matches_transformers():
    transformers = require("transformers")
    from bert_jax.tokenizer import Tokenizer

    vocab = shared_file("vocab", "bert-base-cased", "vocab.txt")
    tok = Tokenizer.from_vocab(vocab)
    reference = transformers.BertTokenizer(str(vocab), do_lower_case=False)
    rte = tasks.read_split("RTE", _glue_dir("RTE", "dev"), "dev")[:8]
    out = features.featurize(rte, tok, max_length=256)
    assert set(out) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert all(v.dtype == np.int32 for v in out.values())
    assert out["input_ids"].shape == (8, 256)
    for i, e in enumerate(rte):
        want = reference(e.text_a, e.text_b)
        n = len(want["input_ids"])
        assert n < 256  # these pairs need no truncation
        np.testing.assert_array_equal(out["input_ids"][i, :n], want["input_ids"])
        np.testing.assert_array_equal(out["token_type_ids"][i, :n], want["token_type_ids"])
        assert out["attention_mask"][i].sum() == n and not out["input_ids"][i, n:].any()
    np.testing.assert_array_equal(out["labels"], [e.label for e in rte])

    long = features.featurize(rte, tok, max_length=16)  # truncated pairs end with [SEP]
    assert long["input_ids"].shape == (8, 16) and (long["input_ids"][:, -1] == 102).all()
    stsb = features.featurize(tasks.read_split("STS-B", _glue_dir("STS-B", "dev"), "dev")[:4], tok)
    assert stsb["labels"].dtype == np.float32
    cola_test = features.featurize(tasks.read_split("CoLA", _glue_dir("CoLA", "test"), "test")[:4],
                               tok, max_length=32)
    assert "labels" not in cola_test and not cola_test["token_type_ids"].any()


def test_crlf_and_headerless_copies_read_the_same(tmp_path):
    _write(tmp_path / "RTE" / "dev.tsv",
           "index\tsentence1\tsentence2\tlabel\r\n0\tA cat sat.\tA cat\rsat.\tentailment\r\n")
    _write(tmp_path / "WNLI" / "dev.tsv", "7\tIt rained.\tIt was wet.\t1")  # no header, no EOL
    assert tasks.read_split("RTE", tmp_path, "dev") == [
        tasks.Example("0", "A cat sat.", "A cat\rsat.", 0)]  # a stray CR inside a field stays
    assert tasks.read_split("WNLI", tmp_path, "dev") == [
        tasks.Example("7", "It rained.", "It was wet.", 1)]


# ---- bad input ---------------------------------------------------------------------------

def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_wrong_column_count_names_file_and_line(tmp_path):
    path = _write(tmp_path / "RTE" / "dev.tsv",
                  "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")
    with pytest.raises(UserError, match=rf"{path}:3: expected 4 tab-separated columns.*found 3"):
        tasks.read_split("RTE", tmp_path, "dev")


def test_mnli_train_file_given_as_dev_is_refused(tmp_path):
    (tmp_path / "MNLI").mkdir()
    shutil.copy(FIXTURES / "MNLI" / "train.tsv", tmp_path / "MNLI" / "dev_matched.tsv")
    with pytest.raises(UserError, match=r"dev_matched.tsv:1: expected 16 .* found 12"):
        tasks.read_split("MNLI", tmp_path, "dev_matched")


def test_unknown_label_lists_the_allowed_ones(tmp_path):
    _write(tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tGood.\ngj04\tyes\t*\tBad.\n")
    with pytest.raises(UserError, match=r"train.tsv:2: unknown CoLA label 'yes'; allowed: 0, 1"):
        tasks.read_split("CoLA", tmp_path, "train")
    _write(tmp_path / "STS-B" / "dev.tsv", "\t".join(["0"] * 7 + ["a", "b", "high"]) + "\n")
    with pytest.raises(UserError, match=r"dev.tsv:1: STS-B score 'high' is not a number"):
        tasks.read_split("STS-B", tmp_path, "dev")


def test_missing_split_names_the_expected_path(tmp_path):
    with pytest.raises(UserError, match=rf"expected {tmp_path / 'QNLI' / 'train.tsv'}"):
        tasks.read_split("QNLI", tmp_path, "train")
    assert not tasks.has_split("QNLI", tmp_path, "train")
    with pytest.raises(UserError, match="MNLI has no split 'dev'.*dev_matched"):
        tasks.read_split("MNLI", tmp_path, "dev")


def test_unknown_task_lists_the_tasks():
    with pytest.raises(UserError, match="unknown GLUE task 'SST-3'.*CoLA, SST-2, MRPC"):
        tasks.get_task("SST-3")


@pytest.mark.parametrize("text", ["", "\n", "sentence\tlabel\n"])
def test_empty_file(tmp_path, text):
    path = _write(tmp_path / "SST-2" / "dev.tsv", text)
    with pytest.raises(UserError, match=rf"{path} is empty"):
        tasks.read_split("SST-2", tmp_path, "dev")


def test_test_file_with_an_unexpected_header(tmp_path):
    _write(tmp_path / "RTE" / "test.tsv", "idx\tpremise\thypothesis\n0\ta\tb\n")
    with pytest.raises(UserError, match=r"test.tsv:1: index 'idx' is not a non-negative"):
        tasks.read_split("RTE", tmp_path, "test")


def test_hf_loader_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(UserError, match="pip install datasets"):
        tasks.load_hf_dataset("RTE", "dev")


def test_hf_loader_maps_splits_and_label_names(monkeypatch):
    """`datasets` orders MNLI as entailment, neutral, contradiction (its GLUE card)."""
    class FakeDataset(list):
        features = {"label": types.SimpleNamespace(
            names=["entailment", "neutral", "contradiction"])}

    calls = []

    def load_dataset(path, config, split):
        calls.append((path, config, split))
        return FakeDataset([{"premise": "p", "hypothesis": "h", "label": lab, "idx": i}
                            for i, lab in enumerate([0, 1, 2, -1])])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    examples = tasks.load_hf_dataset("mnli", "dev_mismatched")
    assert calls == [("glue", "mnli", "validation_mismatched")]
    labels = tasks.get_task("MNLI").labels
    assert [None if e.label is None else labels[e.label] for e in examples] == [
        "entailment", "neutral", "contradiction", None]
    assert examples[0] == tasks.Example("0", "p", "h", 1)
