"""The optimizer and schedule against the original formulas, step by step.

The reference below is a plain-numpy transcription of google-research/bert
`optimization.py` (AdamWeightDecayOptimizer + the warmup/polynomial-decay schedule +
clip_by_global_norm), written independently of bert_jax.optim.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bert_jax import optim
from bert_jax.errors import UserError


def reference_lr(step, peak, warmup, total):
    decayed = peak * (1.0 - min(step, total) / total)  # polynomial_decay, power 1, end 0
    if warmup and step < warmup:
        return peak * step / warmup
    return decayed


def reference_bert_adam(params, grads_per_step, peak, warmup, total, wd=0.01,
                        b1=0.9, b2=0.999, eps=1e-6, clip=1.0):
    params = {k: v.astype(np.float64).copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    for step, grads in enumerate(grads_per_step):
        norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
        scale = clip / max(norm, clip)
        lr = reference_lr(step, peak, warmup, total)
        for name, g in grads.items():
            g = g * scale
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g * g
            update = m[name] / (np.sqrt(v[name]) + eps)  # no bias correction
            if not any(s in name for s in ("LayerNorm", "layer_norm", "bias")):
                update = update + wd * params[name]
            params[name] = params[name] - lr * update
    return params


NAMES = ["encoder_layer_0/intermediate_dense/kernel", "encoder_layer_0/intermediate_dense/bias",
         "encoder_layer_0/output_LayerNorm/scale", "cls_predictions/bias",
         "embeddings/word_embeddings/embedding"]


def nested(flat):
    out = {}
    for name, value in flat.items():
        node = out
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flatten(tree):
    return {optim.path_name(p): np.asarray(x) for p, x in
            jax.tree_util.tree_flatten_with_path(tree)[0]}


def config(**kw):
    c = optim.default_config()
    c.update(kw)
    return c


def test_schedule_matches_original_formula():
    total, warmup, peak = 100, 10, 1e-4
    _, schedule = optim.build(config(lr=peak, warmup_steps=warmup), total)
    for step in range(0, total + 5):
        assert float(schedule(step)) == pytest.approx(reference_lr(step, peak, warmup, total),
                                                      rel=1e-5, abs=1e-12)
    # At the end of warmup the rate steps down from peak to peak * (1 - warmup/total).
    assert float(schedule(warmup - 1)) == pytest.approx(peak * 9 / 10, rel=1e-6)
    assert float(schedule(warmup)) == pytest.approx(peak * (1 - warmup / total), rel=1e-6)
    assert float(schedule(0)) == 0.0


def test_bert_adam_matches_original_step_by_step():
    rng = np.random.RandomState(0)
    flat = {n: rng.randn(3, 4).astype(np.float32) for n in NAMES}
    grads = [{n: (rng.randn(3, 4) * s).astype(np.float32) for n in NAMES}
             for s in (0.1, 3.0, 0.5, 1.0, 0.2)]  # step 1 is clipped (norm > 1)
    total, warmup, peak = 20, 2, 1e-2
    tx, _ = optim.build(config(lr=peak, warmup_steps=warmup), total)
    params = nested({k: jnp.asarray(v) for k, v in flat.items()})
    opt_state = tx.init(params)
    for g in grads:
        updates, opt_state = tx.update(nested(g), opt_state, params)
        params = optax.apply_updates(params, updates)
    expected = reference_bert_adam(flat, grads, peak, warmup, total)
    got = flatten(params)
    for name in NAMES:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_no_bias_correction_first_step_size():
    # With m = 0.1 g and v = 0.001 g^2 after one step, the raw ratio is
    # 0.1 / sqrt(0.001) = 3.162 (a bias-corrected Adam would give 1).
    tx = optim.scale_by_adam_no_bias_correction(eps=0.0)
    g = {"w": jnp.array([2.0, -0.5])}
    update, _ = tx.update(g, tx.init(g))
    np.testing.assert_allclose(update["w"], np.sign([2.0, -0.5]) * 0.1 / np.sqrt(0.001),
                               rtol=1e-5)


def test_decay_mask_by_name():
    mask = flatten(optim.decay_mask(nested({n: np.zeros(1) for n in NAMES})))
    assert mask == {
        "encoder_layer_0/intermediate_dense/kernel": True,
        "encoder_layer_0/intermediate_dense/bias": False,
        "encoder_layer_0/output_LayerNorm/scale": False,
        "cls_predictions/bias": False,
        "embeddings/word_embeddings/embedding": True,
    }


def test_adamw_option_has_bias_correction():
    rng = np.random.RandomState(1)
    w = rng.randn(5).astype(np.float32)
    g = rng.randn(5).astype(np.float32) * 0.1
    tx, _ = optim.build(config(name="adamw", lr=1e-3, warmup_steps=0, weight_decay=0.0,
                               decay="constant", clip_norm=0.0), 10)
    params = {"kernel": jnp.asarray(w)}
    updates, _ = tx.update({"kernel": jnp.asarray(g)}, tx.init(params), params)
    m_hat = (0.1 * g) / (1 - 0.9)
    v_hat = (0.001 * g * g) / (1 - 0.999)
    np.testing.assert_allclose(updates["kernel"], -1e-3 * m_hat / (np.sqrt(v_hat) + 1e-6),
                               rtol=1e-5)


def test_lamb_option_matches_optax_lamb():
    rng = np.random.RandomState(2)
    params = nested({n: jnp.asarray(rng.randn(3, 4), jnp.float32) for n in NAMES})
    grads = nested({n: jnp.asarray(rng.randn(3, 4), jnp.float32) for n in NAMES})
    tx, schedule = optim.build(config(name="lamb", lr=1e-3, warmup_steps=0, clip_norm=0.0,
                                      decay="constant"), 10)
    ref = optax.lamb(schedule, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
                     mask=optim.decay_mask)
    ours, _ = tx.update(grads, tx.init(params), params)
    theirs, _ = ref.update(grads, ref.init(params), params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_cosine_and_decay_from_warmup_options():
    _, schedule = optim.build(config(lr=1.0, warmup_steps=10, decay="cosine",
                                     decay_from_warmup=True), 110)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(60)) == pytest.approx(0.5, abs=1e-6)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-6)


def test_bad_optimizer_config_is_a_user_error():
    with pytest.raises(UserError, match="unknown optimizer"):
        optim.build(config(name="sgdd", warmup_steps=0), 10)
    with pytest.raises(UserError, match="warmup_steps"):
        optim.build(config(warmup_steps=100), 10)


@pytest.mark.parametrize("factor", [0.3, 1.0, 4.0])
def test_clip_by_global_norm_is_the_original_formula(factor):
    """g * c / max(||g||, c): untouched below the threshold, norm exactly c above it."""
    rng = np.random.default_rng(0)
    grads = {"a": rng.normal(size=(5, 3)), "b": rng.normal(size=(7,))}
    norm = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
    grads = {k: (g / norm * factor).astype(np.float32) for k, g in grads.items()}
    tx = optim.clip_by_global_norm(1.0)
    clipped, _ = tx.update(jax.tree.map(jnp.asarray, grads), tx.init(grads))
    for k, g in grads.items():
        np.testing.assert_allclose(clipped[k], g / max(factor, 1.0), rtol=1e-6)
    assert float(optax.tree.norm(clipped)) == pytest.approx(min(factor, 1.0), rel=1e-6)
