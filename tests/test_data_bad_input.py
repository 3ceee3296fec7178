"""Bad input: each case gives a clear UserError or a counted, logged skip, never a crash."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from bert_jax import cli
from bert_jax.data import PretrainingLoader, create_pretraining_data, demo_corpus_path
from bert_jax.data.masking import unmask
from bert_jax.data.vocab import train_vocab
from bert_jax.errors import UserError
from bert_jax.tokenizer import Tokenizer

TWO_DOCS = ("The cat sat on the mat.\nIt was a sunny day.\nThe dog ran in the park.\n\n"
            "Anna went to the market.\nShe bought some apples.\nThen she walked home.\n")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("vocab")
    return Tokenizer.from_vocab(train_vocab([str(demo_corpus_path())], out, vocab_size=1000))


def _make(tmp_path, tokenizer, text: str | bytes, **kw):
    path = tmp_path / "in.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return create_pretraining_data([str(path)], str(tmp_path / "out"), tokenizer,
                                   progress=False, **{"dupe_factor": 2, **kw})


def _rows(data_dir) -> dict[str, np.ndarray]:
    loader = PretrainingLoader(data_dir, 4, shuffle=False, repeat=False, drop_remainder=False)
    parts = list(loader)
    out = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
    keep = out.pop("example_weight") > 0
    return {k: v[keep] for k, v in out.items()}


def test_empty_files_are_counted_and_skipped(tmp_path, tokenizer, caplog):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "text.txt").write_text(TWO_DOCS)
    with caplog.at_level(logging.WARNING):
        stats = create_pretraining_data([str(tmp_path / "empty.txt"), str(tmp_path / "text.txt")],
                                        str(tmp_path / "out"), tokenizer, progress=False)
    assert stats["empty_files"] == 1 and stats["documents"] == 2 and stats["num_instances"] > 0
    assert "empty input file" in caplog.text
    with pytest.raises(UserError, match="no text"):
        create_pretraining_data([str(tmp_path / "empty.txt")], str(tmp_path / "out2"),
                                tokenizer, progress=False)
    (tmp_path / "blank.txt").write_text("\n\n  \n\n")
    with pytest.raises(UserError, match="no text"):
        create_pretraining_data([str(tmp_path / "blank.txt")], str(tmp_path / "out3"),
                                tokenizer, progress=False)


def test_single_document_corpus(tmp_path, tokenizer):
    one_doc = "The cat sat on the mat.\nIt was a sunny day.\n"
    with pytest.raises(UserError, match="single document.*--no-nsp"):
        _make(tmp_path, tokenizer, one_doc)
    assert not any((tmp_path / "out").iterdir())  # a failed run leaves nothing behind
    stats = _make(tmp_path, tokenizer, one_doc, pair_objective="none")
    assert stats["num_instances"] >= 2 and stats["documents"] == 1


def test_one_sentence_document_is_paired_with_a_random_next(tmp_path, tokenizer, caplog):
    text = "A lonely sentence stands here.\n\n" + TWO_DOCS
    with caplog.at_level(logging.WARNING):
        stats = _make(tmp_path, tokenizer, text, dupe_factor=4)
    assert stats["single_sentence_documents"] == 1 and "one-sentence documents" in caplog.text
    lonely = tokenizer.ids("A lonely sentence stands here.")
    rows = _rows(tmp_path / "out")
    found = 0
    for i in range(len(rows["input_ids"])):
        ids = unmask(rows["input_ids"][i:i + 1], rows["masked_lm_positions"][i:i + 1],
                     rows["masked_lm_ids"][i:i + 1], rows["masked_lm_weights"][i:i + 1])[0]
        if ids[1:1 + len(lonely)].tolist() == lonely and ids[1 + len(lonely)] == tokenizer.sep_id:
            assert rows["next_sentence_label"][i] == 1  # a one-sentence chunk: random next
            found += 1
    assert found == 4  # once per pass


@pytest.mark.parametrize("line", ["word " * 20_000, "x" * 100_000], ids=["words", "one_word"])
def test_a_line_of_100000_characters(tmp_path, tokenizer, line):
    assert len(line.strip()) >= 99_999
    stats = _make(tmp_path, tokenizer, TWO_DOCS + "\n" + line + "\nShort end.\n",
                  max_seq_length=32, max_predictions_per_seq=5)
    assert stats["longest_line_chars"] >= 99_999 and stats["documents"] == 3
    rows = _rows(tmp_path / "out")
    assert (rows["attention_mask"].sum(1) <= 32).all()
    assert (rows["masked_lm_weights"].sum(1) >= 1).all()


def test_invalid_utf8_bytes_are_dropped_and_counted(tmp_path, tokenizer, caplog):
    text = TWO_DOCS.encode() + b"\nBad \xff\xfe bytes here.\nGood line \xc3\xa9t\xc3\xa9.\n"
    with caplog.at_level(logging.WARNING):
        stats = _make(tmp_path, tokenizer, text)
    assert stats["invalid_utf8_lines"] == 1 and "invalid UTF-8" in caplog.text
    assert stats["documents"] == 3 and stats["sentences"] == 8


def test_bad_knobs(tmp_path, tokenizer):
    for kw, message in (({"max_seq_length": 4}, "max_seq_length"),
                        ({"masked_lm_prob": 0.0}, "masked_lm_prob"),
                        ({"dupe_factor": 0}, "dupe_factor"),
                        ({"masking": "random"}, "masking"),
                        ({"input_format": "xml"}, "input format"),
                        ({"max_predictions_per_seq": 0}, "max_predictions")):
        with pytest.raises(UserError, match=message):
            _make(tmp_path, tokenizer, TWO_DOCS, **kw)
    with pytest.raises(UserError, match="no input file matches"):
        create_pretraining_data([str(tmp_path / "*.nothing")], str(tmp_path / "o"), tokenizer)
    with pytest.raises(UserError, match="directory"):
        create_pretraining_data([str(tmp_path)], str(tmp_path / "o"), tokenizer)


@pytest.fixture
def dataset(tmp_path, tokenizer):
    _make(tmp_path, tokenizer, TWO_DOCS * 3)
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    return tmp_path / "out", tmp_path / "out" / meta["shards"][0]["name"]


def test_truncated_shard_is_named(dataset):
    root, shard = dataset
    path = shard / "input_ids.npy"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(UserError, match=f"{shard.name}.*input_ids.npy.*truncated"):
        PretrainingLoader(root, 2)


def test_corrupt_shard_is_named(dataset):
    root, shard = dataset
    path = shard / "lengths.npy"
    data = bytearray(path.read_bytes())
    data[:6] = b"garbag"  # a broken header, same size: found when the shard is first read
    path.write_bytes(bytes(data))
    loader = PretrainingLoader(root, 2, shuffle=False)
    with pytest.raises(UserError, match=f"{shard.name}.*lengths.npy"):
        next(loader)


def test_corrupt_values_are_caught_by_the_checksum(dataset):
    root, shard = dataset
    path = shard / "input_ids.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    PretrainingLoader(root, 2)  # sizes and headers still agree
    with pytest.raises(UserError, match=f"{shard.name}.*sha256"):
        PretrainingLoader(root, 2, verify=True)


def test_missing_shard_and_index(dataset):
    root, shard = dataset
    (shard / "index.json").unlink()
    with pytest.raises(UserError, match=f"{shard.name}.*index.json"):
        PretrainingLoader(root, 2)
    for f in shard.iterdir():
        f.unlink()
    shard.rmdir()
    with pytest.raises(UserError, match=f"{shard.name} is missing"):
        PretrainingLoader(root, 2)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert cli.main(["create-data", "--input", str(tmp_path / "nope.txt"), "--output",
                     str(tmp_path / "o"), "--vocab", str(tmp_path / "v.txt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: input file not found: {tmp_path}/nope.txt"


def test_documents_without_tokens_are_counted(tmp_path, tokenizer, caplog):
    # Control characters only: the BERT normaliser removes them, leaving no tokens.
    with caplog.at_level(logging.WARNING):
        stats = _make(tmp_path, tokenizer, TWO_DOCS + "\n\x01\x02\x03\n\x07\n")
    assert stats["documents"] == 3 and stats["documents_without_tokens"] == 1
    assert "no tokens" in caplog.text
