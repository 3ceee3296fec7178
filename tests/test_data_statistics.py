"""Statistics of create_pretraining_data on WikiText-2 (valid) with the bert-base-cased vocab.

Tolerances are 4 binomial standard deviations around the rate the rules give.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_file

from bert_jax.data import PretrainingLoader, create_pretraining_data, documents, instances
from bert_jax.data.masking import unmask
from bert_jax.data.rng import Uniforms
from bert_jax.tokenizer import Tokenizer


def _within(observed: float, p: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - p) <= sigmas * np.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_vocab(shared_file("vocab", "bert-base-cased", "vocab.txt"))


@pytest.fixture(scope="module")
def valid() -> str:
    return str(shared_file("corpus", "wikitext-2-raw", "valid.txt"))


def _everything(data_dir) -> dict[str, np.ndarray]:
    loader = PretrainingLoader(data_dir, 512, shuffle=False, repeat=False,
                               drop_remainder=False)
    parts = [b for b in loader]
    out = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
    keep = out.pop("example_weight") > 0
    return {k: v[keep] for k, v in out.items()}


@pytest.fixture(scope="module")
def static_data(tmp_path_factory, tokenizer, valid):
    out = tmp_path_factory.mktemp("wiki") / "static"
    stats = create_pretraining_data([valid], str(out), tokenizer, dupe_factor=2,
                                    input_format="wikitext", progress=False)
    return stats, _everything(out)


def test_masked_fraction_and_count_rule(static_data, tokenizer):
    _, d = static_data
    lengths = d["attention_mask"].sum(1)
    k = d["masked_lm_weights"].sum(1)
    expected = np.array([min(20, max(1, int(round(n * 0.15)))) for n in lengths])
    assert np.array_equal(k, expected)  # the rule, instance by instance
    non_special = lengths - 3  # [CLS], [SEP], [SEP]
    fraction = k.sum() / non_special.sum()
    assert abs(fraction - 0.15) < 0.005, fraction  # 19 of 125 at full length: 15.2%
    # At 128 tokens the cap of 20 never binds: round(128 * 0.15) = 19.
    assert k.max() == 19


def test_80_10_10_split_of_masked_positions(static_data, tokenizer):
    _, d = static_data
    rows, slots = np.nonzero(d["masked_lm_weights"])
    shown = d["input_ids"][rows, d["masked_lm_positions"][rows, slots]]
    original = d["masked_lm_ids"][rows, slots]
    n = len(shown)
    assert n > 50_000
    V = tokenizer.vocab_size
    assert _within(np.mean(shown == tokenizer.mask_id), 0.8 + 0.1 / V, n)
    assert _within(np.mean(shown == original), 0.1 + 0.1 / V, n)
    assert _within(np.mean((shown != original) & (shown != tokenizer.mask_id)),
                   0.1 * (1 - 2 / V), n)


def test_special_tokens_never_masked_and_layout(static_data, tokenizer):
    _, d = static_data
    ids = unmask(d["input_ids"], d["masked_lm_positions"], d["masked_lm_ids"],
                 d["masked_lm_weights"])
    specials = [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id]
    rows, slots = np.nonzero(d["masked_lm_weights"])
    assert not np.isin(ids[rows, d["masked_lm_positions"][rows, slots]], specials).any()
    N, L = ids.shape
    lengths = d["attention_mask"].sum(1)
    a_part = ((d["token_type_ids"] == 0) & (d["attention_mask"] == 1)).sum(1)
    pos = np.arange(L)[None, :]
    assert np.array_equal(d["attention_mask"], (pos < lengths[:, None]).astype(np.int32))
    assert np.array_equal(d["token_type_ids"],
                          ((pos >= a_part[:, None]) & (pos < lengths[:, None])).astype(int))
    assert (ids[:, 0] == tokenizer.cls_id).all()
    assert (ids[np.arange(N), a_part - 1] == tokenizer.sep_id).all()
    assert (ids[np.arange(N), lengths - 1] == tokenizer.sep_id).all()
    assert ((ids == tokenizer.sep_id).sum(1) == 2).all()  # WikiText holds no "[SEP]"
    assert (ids[pos >= lengths[:, None]] == tokenizer.pad_id).all()
    assert (a_part >= 3).all() and (lengths - a_part >= 2).all() and (lengths <= 128).all()
    # Most instances fill the sequence: the target is 125 tokens except 10% of the time.
    assert np.mean(lengths == 128) > 0.5


def test_nsp_labels(static_data, tokenizer, valid):
    stats, d = static_data
    labels = d["next_sentence_label"]
    assert set(np.unique(labels)) == {0, 1}
    assert labels.sum() == stats["random_next"]
    # Rule: random next with probability 1/2, and always when the chunk has one sentence.
    unit = _unit(valid, tokenizer)
    plan = instances.Plan()
    cfg = instances.InstanceConfig()
    for dupe in range(4):
        instances.plan_pass(unit, cfg, Uniforms(1, dupe), plan)
    label, k = np.array(plan.label), np.array(plan.chunk_sentences)
    multi = k >= 2
    assert (label[~multi] == 1).all()
    assert _within(label[multi].mean(), 0.5, multi.sum())
    # Overall ~50/50, a little above: one-sentence chunks are always random next. Their
    # share clusters by document (a short target makes most of a document's chunks one
    # sentence), so it is not binomial; bound it loosely.
    assert 0.5 - 4 * np.sqrt(0.25 / len(labels)) < labels.mean() < 0.6
    random_doc, doc = np.array(plan.random_document), np.array(plan.document)
    assert (random_doc[label == 1] != doc[label == 1]).all()


def _unit(path: str, tokenizer) -> instances.TokenizedUnit:
    docs = list(documents.read_documents([__import__("pathlib").Path(path)], "wikitext",
                                         documents.ReadStats()))
    return instances.tokenize_unit(docs, tokenizer.backend)


def test_short_seq_prob(tokenizer, valid):
    unit = _unit(valid, tokenizer)
    cfg = instances.InstanceConfig()
    passes = 40
    plan = instances.Plan()
    for dupe in range(passes):
        instances.plan_pass(unit, cfg, Uniforms(2, dupe), plan)
    draws = unit.num_documents * passes
    assert _within(plan.short_targets / draws, 0.1, draws)
    # Short targets are randint(2, 125): uniform, mean 63.5, sd 36.
    target = np.array(plan.target)
    per_doc = {(d, t) for d, t in zip(plan.document, target) if t < 125}
    short = np.array([t for _, t in per_doc])
    assert short.min() >= 2 and abs(short.mean() - 63.5) < 4 * 36 / np.sqrt(len(short))
    # Those documents give shorter instances: pairs no longer than target + a sentence.
    lengths = np.array(plan.a_len) + np.array(plan.b_len)
    sentence_max = int(np.diff(unit.sent_start).max())
    assert (lengths[target < 125] <= target[target < 125] + sentence_max).all()
    assert np.median(lengths[target < 125]) < 0.75 * np.median(lengths[target == 125])


def test_whole_word_masking_never_splits_a_word(tmp_path, tokenizer, valid):
    create_pretraining_data([valid], str(tmp_path / "wwm"), tokenizer, dupe_factor=1,
                            whole_word_masking=True, input_format="wikitext", progress=False)
    d = _everything(tmp_path / "wwm")
    ids = unmask(d["input_ids"], d["masked_lm_positions"], d["masked_lm_ids"],
                 d["masked_lm_weights"])
    vocab = tokenizer.backend.get_vocab()
    cont = np.zeros(tokenizer.vocab_size, bool)
    cont[[i for t, i in vocab.items() if t.startswith("##")]] = True
    N, L = ids.shape
    masked = np.zeros((N, L), bool)
    rows, slots = np.nonzero(d["masked_lm_weights"])
    masked[rows, d["masked_lm_positions"][rows, slots]] = True
    special = np.isin(ids, [tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id])
    is_cont = cont[ids]
    # A masked piece's whole word is masked: its "##" neighbours on both sides.
    prev_masked = np.zeros_like(masked)
    prev_masked[:, 1:] = masked[:, :-1]
    prev_special = np.ones_like(masked)
    prev_special[:, 1:] = special[:, :-1]
    assert not (masked & is_cont & ~prev_special & ~prev_masked).any()
    next_cont = np.zeros_like(masked)
    next_cont[:, :-1] = is_cont[:, 1:]
    next_masked = np.zeros_like(masked)
    next_masked[:, :-1] = masked[:, 1:]
    assert not (masked & next_cont & ~next_masked).any()
    assert (masked & is_cont).sum() > 1000  # words with several pieces were masked
    k = d["masked_lm_weights"].sum(1)
    cap = np.array([min(20, max(1, int(round(n * 0.15)))) for n in d["attention_mask"].sum(1)])
    assert (k <= cap).all() and np.mean(k == cap) > 0.5
