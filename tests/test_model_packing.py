"""Packed rows in the model: per-example logits equal the unpacked model's for every GLUE
task shape and attention backend, and a packed example never sees another."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from bert_jax.config import preset
from bert_jax.errors import UserError
from bert_jax.model import build, init_params
from bert_jax.packing import pack

CLS, SEP = 2, 3


# Eager, not jitted: on a tiny model compiling costs more than it saves.
def init(module):
    return init_params(module, jax.random.key(0))


def apply(module, params, **inputs):
    return module.apply({"params": params}, **inputs)
# initializer_range 0.2: outputs that differ clearly between examples (at the default
# 0.02 every example's logits are nearly the same, and equality would prove little).
CFG = preset("tiny", initializer_range=0.2)
SHAPES = {  # GLUE task shapes: (num_labels, sentence pairs)
    "single": (2, False),   # SST-2, CoLA
    "pair": (3, True),      # MNLI, QNLI, RTE, MRPC, QQP
    "regression": (1, True),  # STS-B
}


def examples(n: int, pairs: bool, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """n random [CLS] A [SEP] (B [SEP]) examples of 3..15 tokens."""
    rng = np.random.default_rng(seed)
    ids, types = [], []
    for _ in range(n):
        a = rng.integers(5, CFG.vocab_size, rng.integers(1, 7)).tolist()
        b = rng.integers(5, CFG.vocab_size, rng.integers(1, 7)).tolist() if pairs else []
        ids.append([CLS, *a, SEP] + ([*b, SEP] if pairs else []))
        types.append([0] * (len(a) + 2) + [1] * (len(b) + 1 if pairs else 0))
    return ids, types


def padded(ids: list[list[int]], types: list[list[int]], length: int = 16):
    """The unpacked batch: one example per row, padded to `length`."""
    out = {k: np.zeros((len(ids), length), np.int32)
           for k in ("input_ids", "attention_mask", "token_type_ids")}
    for r, (i, t) in enumerate(zip(ids, types)):
        out["input_ids"][r, :len(i)] = i
        out["token_type_ids"][r, :len(t)] = t
        out["attention_mask"][r, :len(i)] = 1
    return out


@pytest.fixture(scope="module")
def classifier_params():
    return {labels: init(build(CFG.replace(num_labels=labels), "classification"))
            for labels, _ in SHAPES.values()}


@pytest.mark.parametrize("backend", ["xla", "dot_product"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_packed_classifier_logits_equal_unpacked(classifier_params, shape, backend):
    labels, pairs = SHAPES[shape]
    module = build(CFG.replace(num_labels=labels, attention=backend), "classification")
    params = classifier_params[labels]
    ids, types = examples(11, pairs, seed=labels)
    unpacked = np.asarray(apply(module, params, **padded(ids, types)))
    packed = pack(ids, types, 32, max_examples=4)
    assert packed.input_ids.shape[0] < len(ids)  # several examples share a row
    logits = apply(module, params, **packed.model_inputs())
    assert logits.shape == (*packed.example_index.shape, labels)
    out = packed.unpack(np.asarray(logits))
    assert out.shape == unpacked.shape == (len(ids), labels)
    assert unpacked.std(0).min() > 1e-2  # the examples' logits really differ
    np.testing.assert_allclose(out, unpacked, atol=2e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["xla", "dot_product"])
def test_packed_pretraining_heads_equal_unpacked(backend):
    """NSP per example and MLM at masked positions spread over a row's examples, with
    the sparse last layer at the [CLS]s and the masked positions."""
    module = build(CFG.replace(attention=backend), "pretraining")
    params = init(module)
    ids, types = examples(7, True, seed=3)
    packed = pack(ids, types, 32, max_examples=3)
    # Two masked positions per example (its 2nd and last token), in row coordinates.
    masked = [[packed.start[i] + 1, packed.start[i] + len(ids[i]) - 1] for i in range(7)]
    positions = np.zeros((len(packed.input_ids), 6), np.int32)
    for i in range(7):
        slot = np.flatnonzero(packed.example_index[packed.row[i]] == i)[0]
        positions[packed.row[i], 2 * slot:2 * slot + 2] = masked[i]
    out = apply(module, params, masked_positions=positions, **packed.model_inputs())
    ref = apply(module, params, **padded(ids, types))
    nsp = packed.unpack(np.asarray(out.nsp_logits))
    np.testing.assert_allclose(nsp, np.asarray(ref.nsp_logits), atol=2e-5, rtol=1e-5)
    mlm = packed.unpack(np.asarray(out.mlm_logits).reshape(*positions.shape[:1], 3, 2, -1))
    for i in range(7):
        expected = np.asarray(ref.mlm_logits)[i, [1, len(ids[i]) - 1]]
        np.testing.assert_allclose(mlm[i], expected, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["xla", "dot_product"])
def test_a_packed_example_never_sees_another(backend):
    """Changing every token (and token type) of one example leaves the other examples
    of its row bit-identical: hidden states, pooled vectors and classifier logits."""
    ids, types = examples(3, True, seed=5)
    packed = pack(ids, types, 40)
    assert packed.input_ids.shape[0] == 1  # all three in one row
    victim = 1
    row = packed.model_inputs()
    changed = dict(row)
    span = slice(packed.start[victim] + 1, packed.start[victim] + packed.length[victim])
    changed["input_ids"] = row["input_ids"].copy()
    changed["input_ids"][0, span] = (row["input_ids"][0, span] + 7) % CFG.vocab_size
    changed["token_type_ids"] = row["token_type_ids"].copy()
    changed["token_type_ids"][0, span] = 1 - row["token_type_ids"][0, span]
    others = [i for i in range(3) if i != victim]
    tokens = np.concatenate([np.arange(packed.start[i], packed.start[i] + packed.length[i])
                             for i in others])
    slots = [int(np.flatnonzero(packed.example_index[0] == i)[0]) for i in (*others, victim)]

    encoder = build(CFG.replace(attention=backend), "encoder")
    params = init(encoder)
    a, b = (apply(encoder, params, **x) for x in (row, changed))
    np.testing.assert_array_equal(np.asarray(a.last_hidden_state)[0, tokens],
                                  np.asarray(b.last_hidden_state)[0, tokens])
    np.testing.assert_array_equal(np.asarray(a.pooler_output)[0, slots[:2]],
                                  np.asarray(b.pooler_output)[0, slots[:2]])
    assert np.abs(np.asarray(a.pooler_output - b.pooler_output)[0, slots[2]]).max() > 1e-3

    classifier = build(CFG.replace(attention=backend, num_labels=3), "classification")
    cparams = init(classifier)
    la, lb = (np.asarray(apply(classifier, cparams, **x)) for x in (row, changed))
    np.testing.assert_array_equal(la[0, slots[:2]], lb[0, slots[:2]])
    assert np.abs(la[0, slots[2]] - lb[0, slots[2]]).max() > 1e-4


def test_segment_ids_without_position_ids_is_an_error():
    encoder = build(CFG, "encoder")
    params = init(encoder)
    inputs = pack(*examples(2, False), 16).model_inputs()
    del inputs["position_ids"]
    with pytest.raises(UserError, match="position_ids"):
        encoder.apply({"params": params}, **inputs)


@pytest.mark.parametrize("shape", ["pair", "regression"])
def test_classification_objective_on_packed_batch_equals_unpacked(classifier_params, shape):
    """The fine-tuning objective sums the same loss and accuracy over a packed batch
    (labels per slot, empty slots weightless) as over the padded one."""
    from bert_jax.train.objectives import Classification

    labels, pairs = SHAPES[shape]
    objective = Classification(build(CFG.replace(num_labels=labels), "classification"))
    params = classifier_params[labels]
    ids, types = examples(9, pairs, seed=11)
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 5, 9).astype(np.float32) if labels == 1 else rng.integers(0, 3, 9)
    padded_batch = {**padded(ids, types), "labels": y}
    packed = pack(ids, types, 32, max_examples=4)
    packed_batch = {**packed.model_inputs(), "labels": packed.per_slot(y)}
    assert (packed.example_index < 0).any()  # some empty slots, which must weigh nothing
    want, got = (objective.numerators(params, b, None, False)
                 for b in (padded_batch, packed_batch))
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-5)
    assert objective.denominators(packed_batch) == objective.denominators(padded_batch)
    # A ragged last batch's per-row weight (train/finetune.py's `example_weight` [B])
    # drops every example of a zero-weight row, and only those.
    row_weight = np.ones(len(packed.input_ids), np.float32)
    row_weight[-1] = 0.0
    kept = np.isin(np.arange(9), packed.example_index[:-1])
    want = objective.numerators(params, {k: v[kept] for k, v in padded_batch.items()}, None,
                                False)
    got = objective.numerators(params, {**packed_batch, "example_weight": row_weight}, None,
                               False)
    for name in want:
        np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), rtol=1e-5)
