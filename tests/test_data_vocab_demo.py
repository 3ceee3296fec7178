"""WordPiece vocab training, the generated demo corpus, and the two data commands."""

from __future__ import annotations

import json

import pytest

from bert_jax import cli
from bert_jax.data import PretrainingLoader, demo, demo_corpus_path, train_vocab
from bert_jax.tokenizer import SPECIAL_TOKENS, Tokenizer


def test_demo_corpus_is_the_generators_output():
    path = demo_corpus_path()
    text = path.read_text(encoding="utf-8")
    assert 200_000 <= path.stat().st_size <= 400_000
    assert text == demo.generate()  # re-made byte for byte from the committed generator
    docs = text.strip().split("\n\n")
    assert len(docs) == demo.NUM_DOCUMENTS
    assert all(line.strip() and line.rstrip()[-1] in ".!?" for d in docs for line in d.split("\n"))


@pytest.mark.parametrize("lowercase", [False, True])
def test_trained_vocab_loads_and_is_cased_right(tmp_path, lowercase):
    path = train_vocab([str(demo_corpus_path())], tmp_path, vocab_size=3000,
                       lowercase=lowercase)
    tokens = path.read_text(encoding="utf-8").split("\n")[:-1]
    assert tokens[:5] == list(SPECIAL_TOKENS) and len(tokens) == len(set(tokens)) <= 3000
    tok = Tokenizer.from_vocab(path)  # infers cased / uncased from the vocab itself
    pieces = tok.tokenize("Anna went to the Market.")
    assert pieces[0] == ("anna" if lowercase else "Anna") and "[UNK]" not in pieces
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert Tokenizer.from_dir(tmp_path).tokenize("Anna") == tok.tokenize("Anna")
    # The closed demo world needs few pieces: all its words are whole tokens.
    words = set(demo_corpus_path().read_text().replace(".", " ").replace(",", " ").split())
    assert sum(len(tok.tokenize(w)) == 1 for w in words) > 0.95 * len(words)


def test_trained_vocab_is_byte_identical_on_every_run(tmp_path):
    """The tokenizers trainer alone gave a different vocab (order and set) on each run,
    in-process too; three runs of the demo vocab must agree byte for byte."""
    runs = [train_vocab([str(demo_corpus_path())], tmp_path / str(i), vocab_size=1024)
            .read_bytes() for i in range(3)]
    assert runs[0] == runs[1] == runs[2]
    tokens = runs[0].decode().split("\n")[:-1]
    assert tokens[:5] == list(SPECIAL_TOKENS) and len(tokens) == len(set(tokens)) <= 1024


def test_cli_train_vocab_then_create_data(tmp_path, capsys):
    corpus = str(demo_corpus_path())
    assert cli.main(["train-vocab", "--input", corpus, "--output", str(tmp_path / "v"),
                     "--vocab-size", "2000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["vocab_size"] <= 2000
    args = ["create-data", "--input", corpus, "--output", str(tmp_path / "d"), "--vocab",
            str(tmp_path / "v"), "--max-seq-length", "64", "--max-predictions", "10",
            "--dupe-factor", "1", "--masking", "dynamic", "--whole-word", "--json"]
    assert cli.main(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_instances"] > 1000 and stats["documents"] == demo.NUM_DOCUMENTS
    loader = PretrainingLoader(tmp_path / "d", 8)
    meta = loader.metadata
    assert (meta["masking"], meta["whole_word_masking"], meta["max_seq_length"],
            meta["max_predictions_per_seq"], meta["dupe_factor"]) == ("dynamic", True, 64, 10, 1)
    assert next(loader)["masked_lm_ids"].shape == (8, 10)
    assert cli.main(args) == 0  # a finished dataset: the re-run returns at once
    assert json.loads(capsys.readouterr().out)["already_complete"]
    assert cli.main(args[:-1] + ["--seed", "1"]) == 2
    assert "random_seed: 12345 there, 1 now" in capsys.readouterr().err


def test_cli_documents_format(tmp_path, capsys):
    vocab = train_vocab([str(demo_corpus_path())], tmp_path / "v", vocab_size=1000)
    docs = demo_corpus_path().read_text().strip().split("\n\n")[:50]
    (tmp_path / "docs.txt").write_text("\n".join(d.replace("\n", " ") for d in docs) + "\n")
    assert cli.main(["create-data", "--input", str(tmp_path / "*.txt"), "--output",
                     str(tmp_path / "d"), "--vocab", str(vocab), "--input-format",
                     "documents", "--dupe-factor", "2", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    sentences = sum(len(d.split("\n")) for d in docs)
    assert stats["documents"] == 50 and stats["sentences"] == sentences


def test_demo_data_rewrites_a_text_file_a_kill_cut_short(tmp_path):
    """The demo's text files were reused because they existed: a file cut short by a
    kill was used silently. Now they are written atomically and rewritten when they
    differ from the packaged corpus's split."""
    from bert_jax import configlib
    from bert_jax.train.pretrain import prepare_demo_data

    config = configlib.load("configs/pretrain.py:demo", ["--config.data.demo_dupe_factor=1",
                                                          "--config.data.demo_max_seq_length=32",
                                                          "--config.data.demo_max_predictions=5"])
    given = config.to_json()
    paths = prepare_demo_data(config, tmp_path)
    data = tmp_path / "data"
    train = (data / "demo_train.txt").read_bytes()
    vocab = (data / "vocab" / "vocab.txt").read_bytes()
    (data / "demo_train.txt").write_bytes(train[:1000])  # what a kill mid-write left
    prepare_demo_data(config, tmp_path)
    assert (data / "demo_train.txt").read_bytes() == train
    assert (data / "vocab" / "vocab.txt").read_bytes() == vocab
    assert paths == {"train": str(data / "train"), "eval": str(data / "eval"),
                     "vocab": str(data / "vocab" / "vocab.txt")}
    assert config.to_json() == given  # the config it was given is not written into
    assert not [p for p in data.rglob(".tmp-*")]
