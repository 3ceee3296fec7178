"""Sentence-order prediction data (`--pair-objective sop`): the rule, checked two ways.

On the plan (offsets into the tokenized text, thousands of instances): both segments
inside one document, never a random document, B right after A in the text when in
order and right before it when swapped, and the two orders 50/50 within a tolerance of
four binomial standard deviations. End to end (create-data -> loader, static and
dynamic masking) on sample_text.txt: each instance's A and B found in one document in
the order its label says.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import shared_file
from test_data_instances import _documents, _find, _instances

from bert_jax import cli
from bert_jax.data import create_pretraining_data, demo_corpus_path, instances
from bert_jax.data.rng import Uniforms
from bert_jax.errors import UserError
from bert_jax.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_vocab(shared_file("vocab", "bert-base-cased", "vocab.txt"))


def _plan(tokenizer, cfg: instances.InstanceConfig, num_docs: int, passes: int):
    text = demo_corpus_path().read_text(encoding="utf-8").strip().split("\n\n")[:num_docs]
    unit = instances.tokenize_unit([doc.split("\n") for doc in text], tokenizer.backend)
    plan = instances.Plan()
    for dupe in range(passes):
        instances.plan_pass(unit, cfg, Uniforms(cfg.random_seed, instances.PLAN, 0, dupe),
                            plan)
    return unit, plan


@pytest.mark.parametrize("max_seq_length,short_seq_prob", [(64, 0.1), (24, 0.5)])
def test_sop_pairs_stay_in_one_document_half_of_them_swapped(tokenizer, max_seq_length,
                                                             short_seq_prob):
    cfg = instances.InstanceConfig(max_seq_length=max_seq_length, pair_objective="sop",
                                   short_seq_prob=short_seq_prob)
    unit, plan = _plan(tokenizer, cfg, num_docs=500, passes=4)
    starts, first = np.asarray(unit.sent_start), np.asarray(unit.doc_first)
    doc = plan.document
    lo, hi = starts[first[doc]], starts[first[doc + 1]]
    a0, la, b0, lb, label = plan.a_start, plan.a_len, plan.b_start, plan.b_len, plan.label
    # Both segments inside the instance's own document; no random document drawn.
    assert ((lo <= a0) & (a0 + la <= hi) & (lo <= b0) & (b0 + lb <= hi)).all()
    assert (plan.random_document == -1).all() and plan.same_document_random_next == 0
    assert ((la >= 1) & (lb >= 1) & (la + lb <= cfg.max_num_tokens)).all()
    # In order: B after A; swapped: B (the earlier text) before A.
    in_order, swapped = label == 0, label == 1
    assert (in_order | swapped).all()
    assert (a0 + la <= b0)[in_order].all() and (b0 + lb <= a0)[swapped].all()
    # Untruncated pairs are exactly adjacent: B is A's true continuation (or vice versa).
    whole = la + lb < cfg.max_num_tokens
    assert whole.sum() > len(plan) // 4
    assert (a0 + la == b0)[in_order & whole].all() and (b0 + lb == a0)[swapped & whole].all()
    # 50/50: within 4 binomial standard deviations of one half.
    n = len(plan)
    assert n > 1500
    assert abs(swapped.mean() - 0.5) <= 4 * math.sqrt(0.25 / n), (swapped.mean(), n)
    if max_seq_length == 24:  # short targets make one-sentence chunks: cut inside them
        assert (plan.chunk_sentences == 1).sum() > 100


def test_sop_one_token_chunk_makes_no_instance(tokenizer):
    unit = instances.tokenize_unit([["Hello"], ["The cat sat.", "It slept."]],
                                   tokenizer.backend)
    cfg = instances.InstanceConfig(pair_objective="sop", short_seq_prob=0.0)
    plan = instances.plan_pass(unit, cfg, Uniforms(1, instances.PLAN, 0, 0))
    assert plan.sop_unsplittable_chunks == 1 and len(plan) == 1
    assert set(plan.document.tolist()) == {1}


@pytest.mark.parametrize("masking", ["static", "dynamic"])
def test_sop_instances_end_to_end(tmp_path, tokenizer, masking):
    path = shared_file("corpus", "sample_text.txt")
    docs = _documents(path, tokenizer)
    stats = create_pretraining_data([str(path)], str(tmp_path / "d"), tokenizer,
                                    pair_objective="sop", masking=masking, dupe_factor=5,
                                    max_seq_length=64, progress=False)
    assert "random_next" not in stats and stats["same_document_random_next"] == 0
    labels = []
    for inst, ids in _instances(tmp_path / "d"):
        length = int(inst["attention_mask"].sum())
        a_part = int(((inst["token_type_ids"] == 0) & (inst["attention_mask"] == 1)).sum())
        a, b = ids[1:a_part - 1].tolist(), ids[a_part:length - 1].tolist()
        cut = len(a) + len(b) == 64 - 3
        label = int(inst["next_sentence_label"])
        labels.append(label)
        first, second = (a, b) if label == 0 else (b, a)  # in text order
        found = False
        for tokens, _ in docs:  # both in one document, `first` before `second`
            for i in _find(first, tokens):
                for j in _find(second, tokens):
                    gap = j - (i + len(first))
                    found = found or gap == 0 or (cut and gap > 0)
        assert found, (label, tokenizer.decode(a), "||", tokenizer.decode(b))
        assert int(inst["masked_lm_weights"].sum()) >= 1
    assert len(labels) == stats["num_instances"] > 50
    assert sum(labels) == stats["swapped_order"]
    assert 0.3 < np.mean(labels) < 0.7


def test_sop_needs_no_second_document(tmp_path, tokenizer):
    (tmp_path / "one.txt").write_text("The cat sat on the mat.\nIt was a sunny day.\n")
    stats = create_pretraining_data([str(tmp_path / "one.txt")], str(tmp_path / "d"),
                                    tokenizer, pair_objective="sop", progress=False)
    assert stats["num_instances"] >= 1 and stats["documents"] == 1


def test_create_data_pair_objective_flag():
    parser = cli.build_parser()
    base = ["create-data", "--input", "x.txt", "--output", "out", "--vocab", "v.txt"]
    assert parser.parse_args(base).pair_objective == "nsp"
    assert parser.parse_args(base + ["--pair-objective", "sop"]).pair_objective == "sop"
    assert parser.parse_args(base + ["--no-nsp"]).pair_objective == "none"
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--pair-objective", "random"])


@pytest.mark.parametrize("nsp,pair", [(True, "nsp"), (False, "none")])
def test_data_made_before_pair_objective_still_reads_and_resumes(tmp_path, tokenizer, nsp,
                                                                  pair):
    """Metadata written before `pair_objective` existed has `nsp`, a bool."""
    import json

    from bert_jax.data import PretrainingLoader

    path = str(shared_file("corpus", "sample_text.txt"))
    create_pretraining_data([path], str(tmp_path / "d"), tokenizer, pair_objective=pair,
                            dupe_factor=1, progress=False)
    meta_path = tmp_path / "d" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["nsp"] = nsp
    del meta["pair_objective"]
    meta_path.write_text(json.dumps(meta))
    assert PretrainingLoader(tmp_path / "d", 4).pair_objective == pair
    again = create_pretraining_data([path], str(tmp_path / "d"), tokenizer,
                                    pair_objective=pair, dupe_factor=1, progress=False)
    assert again["already_complete"]
    with pytest.raises(UserError, match="pair_objective"):
        create_pretraining_data([path], str(tmp_path / "d"), tokenizer,
                                pair_objective="sop", dupe_factor=1, progress=False)
