"""Packed GLUE fine-tuning and prediction (`--config.packing`, `glue/packed.py`).

The packed batches keep the recipe (each step the same examples as the padded batches of
the same seed); at dropout 0 a packed step computes the padded step's loss and gradient,
and two steps leave the same parameters, for single sentences, pairs and regression;
packed evaluation and `classify(..., packing=True)` predict what the padded path does
(on the GLUE fixtures, and `bert-jax glue`/`predict` end to end: tests/test_glue_cli.py).
"""

from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np
import pytest
from test_model_packing import CFG, SHAPES, examples, padded

from bert_jax import configlib, optim, sharding, weights
from bert_jax.errors import UserError
from bert_jax.glue import classifier, finetune, packed, sweep
from bert_jax.model import build, init_params
from bert_jax.train import objectives
from bert_jax.train import programs as programs_lib

LENGTH = 32  # the features' width: rows of 32 tokens hold 2-10 of the 3..15-token examples


def task_features(shape: str, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n random examples of a GLUE task shape, featurized as `features.featurize` makes
    them (rows padded to LENGTH), with labels."""
    labels, pairs = SHAPES[shape]
    ids, types = examples(n, pairs, seed=seed)
    rng = np.random.default_rng(seed + 1)
    y = (rng.uniform(0, 5, n).astype(np.float32) if labels == 1
         else rng.integers(0, labels, n).astype(np.int32))
    return {**padded(ids, types, LENGTH), "labels": y}


def glue_config(batch_size: int, packing: bool) -> ml_collections.ConfigDict:
    return configlib.load("configs/glue.py:default", [
        f"--config.batch_size={batch_size}", f"--config.packing={packing}",
        "--config.length_buckets=()", "--config.model.hidden_dropout_prob=0.0"])


def test_packing_slots_must_be_positive():
    with pytest.raises(UserError, match="packing_slots=0: must be greater than 0"):
        sweep.check_config(configlib.load("configs/glue.py", ["--config.packing_slots=0"]))


def test_row_multiple():
    assert packed.row_multiple(32) == 4 and packed.row_multiple(64) == 8
    assert packed.row_multiple(20) == 3 and packed.row_multiple(4) == 1
    assert packed.row_multiple(32, data_parallel=8) == 8  # rows split over 8 devices
    assert packed.row_multiple(20, data_parallel=2) == 4


def test_packed_train_batches_hold_the_padded_batches_examples():
    """Each packed step takes exactly the examples of the padded step of the same seed (the
    order, step count and loss denominators of the recipe), in few row counts."""
    data = task_features("single", 61)
    data["labels"] = np.arange(61, dtype=np.float32)  # a label that names its example
    mesh = sharding.make_mesh((-1, 1, 1))
    for seed in (1, 2):
        plain = list(finetune.train_batches(data, glue_config(16, False), seed, mesh))
        packs = list(finetune.train_batches(data, glue_config(16, True), seed, mesh))
        assert len(packs) == len(plain) == 61 // 16  # the ragged rest is dropped, as before
        for p, b in zip(packs, plain):
            rows, slots = p["cls_positions"].shape
            assert p["input_ids"].shape == (rows, LENGTH) and slots == packed.DEFAULT_SLOTS
            assert rows % packed.row_multiple(16) == 0 and rows <= 16
            assert rows < 16  # several examples share a row
            real = (p["cls_positions"] >= 0) & (p["example_weight"][:, None] > 0)
            assert sorted(p["labels"][real]) == sorted(b["labels"])
            assert real.sum() == p["example_weight"] @ (p["cls_positions"] >= 0).sum(1) == 16
    # Packing is deterministic: the same seed gives the same batches.
    again = list(finetune.train_batches(data, glue_config(16, True), 2, mesh))
    for a, b in zip(again, packs):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _programs(shape: str, total: int) -> programs_lib.Programs:
    labels, _ = SHAPES[shape]
    ocfg = optim.default_config()
    ocfg.lr, ocfg.warmup_steps = 1e-2, 1
    optimizer, schedule = optim.build(ocfg, total)
    mesh, rules = programs_lib.mesh_from_config(configlib.load("configs/glue.py").mesh)
    cfg = CFG.replace(num_labels=labels, num_hidden_layers=1, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
    return programs_lib.build(cfg, "classification", objectives.Classification, optimizer,
                              schedule, mesh, rules)


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_packed_steps_equal_padded_steps(shape):
    """At dropout 0, the first two packed steps have the padded steps' loss and gradient,
    and leave the same parameters (fp32 rounding); their row counts (multiples of 3 at
    batch 24) include a padding row, which must weigh nothing."""
    data = task_features(shape, 48, seed=3)
    p = _programs(shape, total=2)
    params = jax.device_get(init_params(p.module, jax.random.key(0)))

    def loss(params, batch):
        nums = p.objective.numerators(params, batch, None, train=False)
        return nums["loss"] / p.objective.denominators(batch)["loss"]

    grad = jax.jit(jax.value_and_grad(loss))
    runs = {}
    for packing in (False, True):
        batches = list(finetune.train_batches(data, glue_config(24, packing), 7, p.mesh))
        state = p.init_state(0, params=jax.tree.map(np.copy, params))
        steps = []
        for batch in batches:
            value, grads = grad(state.params, batch)
            state, metrics = p.train_step(state, sharding.global_batch(batch, p.mesh))
            steps.append((value, grads, metrics["loss"]))
        runs[packing] = steps, jax.device_get(state.params), batches
    (plain, plain_params, plain_batches), (packs, pack_params, pack_batches) = runs[0], runs[1]
    assert len(pack_batches) == len(plain_batches) == 2
    assert pack_batches[0]["input_ids"].size < plain_batches[0]["input_ids"].size / 2
    assert all((b["example_weight"] == 0).any() for b in pack_batches)
    for (v0, g0, l0), (v1, g1, l1) in zip(plain, packs):
        np.testing.assert_allclose(v1, v0, rtol=1e-5)
        np.testing.assert_allclose(l1, l0, rtol=1e-5)  # the train step's own loss
        assert np.abs(np.asarray(g0["classifier"]["kernel"])).max() > 1e-3
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                     g1, g0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 pack_params, plain_params)
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), plain_params, params)
    assert max(jax.tree.leaves(moved)) > 1e-3  # the steps did change the parameters


@functools.lru_cache
def _classifier_params() -> dict:
    cfg = CFG.replace(num_labels=3, num_hidden_layers=1)
    return jax.jit(lambda key: init_params(build(cfg, "classification"), key))(
        jax.random.key(0))


def classify_model(labels: int) -> weights.Pretrained:
    """A random tiny classifier (outputs that differ clearly between examples), as
    `classifier.load_classifier` returns one: one initialisation, its classifier cut to
    `labels` outputs."""
    params = dict(_classifier_params())
    params["classifier"] = {k: v[..., :labels] for k, v in params["classifier"].items()}
    cfg = CFG.replace(num_labels=labels, num_hidden_layers=1)
    return weights.Pretrained(cfg, params, None, None, "classification")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_packed_classify_equals_padded(shape):
    """Packed prediction (several row batches, the last one ragged) gives the padded
    path's logits, in example order."""
    data = task_features(shape, 45, seed=5)
    model = classify_model(SHAPES[shape][0])
    want = classifier.classify(model, data, batch_size=8, buckets=())
    got = classifier.classify(model, data, batch_size=8, packing=True, packing_slots=6)
    assert got.shape == want.shape == (45, SHAPES[shape][0])
    assert want.std(0).min() > 1e-2  # the examples' logits really differ
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
