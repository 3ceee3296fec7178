"""create_pretraining_data on sample_text.txt, every instance checked against the rules.

The reference is the text itself: each document tokenized line by line with the same
vocab; an instance's A and B must be found there as the rules say (IsNext: B continues
A in the same document; random next: B comes from another document; cuts only where
the pair was truncated; whole sentences where it was not).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_file

from bert_jax.data import PretrainingLoader, create_pretraining_data, masking
from bert_jax.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_vocab(shared_file("vocab", "bert-base-cased", "vocab.txt"))


def _documents(path, tok):
    """[(tokens, set of sentence boundaries)] per document of a sentences-format file."""
    docs, current = [], []
    for line in open(path, encoding="utf-8").read().split("\n"):
        line = line.strip()
        if not line:
            if current:
                docs.append(current)
            current = []
        elif tok.ids(line):
            current.append(tok.ids(line))
    if current:
        docs.append(current)
    out = []
    for sentences in docs:
        bounds = set(np.cumsum([0] + [len(s) for s in sentences]).tolist())
        out.append((sum(sentences, []), bounds))
    return out


def _find(seq: list[int], tokens: list[int]) -> list[int]:
    n = len(seq)
    return [i for i in range(len(tokens) - n + 1) if tokens[i:i + n] == seq]


def _instances(data_dir):
    loader = PretrainingLoader(data_dir, 16, shuffle=False, repeat=False,
                               drop_remainder=False)
    for batch in loader:
        original = masking.unmask(batch["input_ids"], batch["masked_lm_positions"],
                                  batch["masked_lm_ids"], batch["masked_lm_weights"])
        for r in np.nonzero(batch["example_weight"])[0]:
            yield {k: v[r] for k, v in batch.items()}, original[r]


@pytest.mark.parametrize("max_seq_length", [128, 24])
def test_sample_text_instances_follow_the_rules(tmp_path, tokenizer, max_seq_length):
    path = shared_file("corpus", "sample_text.txt")
    docs = _documents(path, tokenizer)
    assert len(docs) == 3
    max_num = max_seq_length - 3
    max_pred = 20 if max_seq_length == 128 else 4
    stats = create_pretraining_data([str(path)], str(tmp_path / "d"), tokenizer,
                                    max_seq_length=max_seq_length,
                                    max_predictions_per_seq=max_pred, progress=False)
    assert stats["documents"] == 3 and stats["same_document_random_next"] == 0
    cls, sep, pad = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
    labels, truncated = [], 0
    for inst, ids in _instances(tmp_path / "d"):
        length = int(inst["attention_mask"].sum())
        a_part = int(((inst["token_type_ids"] == 0) & (inst["attention_mask"] == 1)).sum())
        assert inst["attention_mask"][:length].all() and not inst["attention_mask"][length:].any()
        assert np.array_equal(inst["token_type_ids"][:a_part], np.zeros(a_part))
        assert inst["token_type_ids"][a_part:length].all()
        assert not inst["token_type_ids"][length:].any()
        assert ids[0] == cls and ids[a_part - 1] == sep and ids[length - 1] == sep
        assert (ids[length:] == pad).all()
        a, b = ids[1:a_part - 1].tolist(), ids[a_part:length - 1].tolist()
        assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= max_num
        cut = len(a) + len(b) == max_num  # only then may tokens have been cut
        truncated += cut
        label = int(inst["next_sentence_label"])
        labels.append(label)
        ok = False
        for d, (tokens, bounds) in enumerate(docs):
            for i in _find(a, tokens):
                a_whole = i in bounds and i + len(a) in bounds
                if not (cut or a_whole):
                    continue
                if label == 0:  # B continues A in the same document
                    for j in _find(b, tokens):
                        gap = j - (i + len(a))
                        if gap == 0 or (cut and gap > 0):
                            ok = ok or cut or (j + len(b)) in bounds
                else:  # B comes from another document, from a sentence start
                    for r, (other, other_bounds) in enumerate(docs):
                        if r != d and any(cut or j in other_bounds for j in _find(b, other)):
                            ok = True
        assert ok, (label, tokenizer.decode(a), "||", tokenizer.decode(b))
        # Static masks: the count the rule gives, never a special token.
        k = int(inst["masked_lm_weights"].sum())
        assert k == min(max_pred, max(1, int(round(length * 0.15))))
        positions = inst["masked_lm_positions"][:k]
        assert np.all(np.diff(positions) > 0) and np.all(positions < length)
        assert not np.isin(ids[positions], (cls, sep, pad)).any()
    assert len(labels) == stats["num_instances"] > 10
    assert 0 < np.mean(labels) < 1
    if max_seq_length == 24:
        assert truncated > len(labels) / 2


def test_nsp_off_makes_single_segments(tmp_path, tokenizer):
    path = shared_file("corpus", "sample_text.txt")
    docs = _documents(path, tokenizer)
    create_pretraining_data([str(path)], str(tmp_path / "d"), tokenizer, pair_objective="none",
                            max_seq_length=64, dupe_factor=3, progress=False)
    count = 0
    for inst, ids in _instances(tmp_path / "d"):
        length = int(inst["attention_mask"].sum())
        assert not inst["token_type_ids"].any() and inst["next_sentence_label"] == 0
        assert ids[0] == tokenizer.cls_id and ids[length - 1] == tokenizer.sep_id
        seg = ids[1:length - 1].tolist()
        assert tokenizer.sep_id not in seg and 1 <= len(seg) <= 62
        assert any(_find(seg, tokens) for tokens, _ in docs)
        count += 1
    assert count > 10
