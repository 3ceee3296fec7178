"""Basic model behaviour: shapes per head, masking, gathered MLM logits, bf16, remat, axes."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from bert_jax.config import preset
from bert_jax.model import (
    build,
    init_params,
    matmul_2d,
    param_logical_axes,
    param_shapes,
    threefry2x32,
)

CFG = preset("tiny", num_labels=3)
B, L = 3, 16


def inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, CFG.vocab_size, (B, L)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types)


@pytest.fixture(scope="module")
def params():
    return {head: init_params(build(CFG, head), jax.random.key(0))
            for head in ("encoder", "pretraining", "mlm", "classification")}


def test_output_shapes_of_every_head(params):
    ids, mask, types = inputs()
    H, V = CFG.hidden_size, CFG.vocab_size
    enc = build(CFG, "encoder").apply({"params": params["encoder"]}, ids, mask, types,
                                      output_hidden_states=True, output_attentions=True)
    assert enc.last_hidden_state.shape == (B, L, H) and enc.pooler_output.shape == (B, H)
    assert len(enc.hidden_states) == CFG.num_hidden_layers + 1
    assert all(h.shape == (B, L, H) for h in enc.hidden_states)
    assert len(enc.attentions) == CFG.num_hidden_layers
    assert all(a.shape == (B, CFG.num_attention_heads, L, L) for a in enc.attentions)
    np.testing.assert_allclose(np.asarray(enc.attentions[0]).sum(-1), 1.0, atol=1e-5)

    pre = build(CFG, "pretraining").apply({"params": params["pretraining"]}, ids, mask, types)
    assert pre.mlm_logits.shape == (B, L, V) and pre.nsp_logits.shape == (B, 2)
    assert pre.mlm_logits.dtype == jnp.float32
    mlm = build(CFG, "mlm").apply({"params": params["mlm"]}, ids, mask, types)
    assert mlm.mlm_logits.shape == (B, L, V) and mlm.nsp_logits is None
    assert "cls_seq_relationship" not in params["mlm"]
    logits = build(CFG, "classification").apply({"params": params["classification"]},
                                                ids, mask, types)
    assert logits.shape == (B, 3)


def test_attention_mask_really_masks(params):
    """Changing padded tokens changes nothing at the real positions."""
    ids, mask, types = inputs()
    other = jnp.where(mask == 0, 7, ids)  # new ids at the padding only
    net = build(CFG, "pretraining")
    a = net.apply({"params": params["pretraining"]}, ids, mask, types)
    b = net.apply({"params": params["pretraining"]}, other, mask, types)
    keep = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(a.encoder.last_hidden_state)[keep],
                               np.asarray(b.encoder.last_hidden_state)[keep], atol=1e-6)
    np.testing.assert_allclose(np.asarray(a.nsp_logits), np.asarray(b.nsp_logits), atol=1e-6)
    # ... whereas without the mask the same change does reach the real positions.
    c = net.apply({"params": params["pretraining"]}, other, jnp.ones_like(mask), types)
    d = net.apply({"params": params["pretraining"]}, ids, jnp.ones_like(mask), types)
    assert np.abs(np.asarray(c.encoder.last_hidden_state)[keep]
                  - np.asarray(d.encoder.last_hidden_state)[keep]).max() > 1e-3


@pytest.mark.slow
def test_masked_positions_gather_the_full_logits(params):
    ids, mask, types = inputs()
    positions = jnp.array([[1, 2, 15], [0, 9, 9], [3, 1, 0]], jnp.int32)
    net = build(CFG, "pretraining")
    full = net.apply({"params": params["pretraining"]}, ids, mask, types)
    part = net.apply({"params": params["pretraining"]}, ids, mask, types, positions)
    assert part.mlm_logits.shape == (B, 3, CFG.vocab_size)
    for b in range(B):
        for p in range(3):
            np.testing.assert_allclose(np.asarray(part.mlm_logits[b, p]),
                                       np.asarray(full.mlm_logits[b, int(positions[b, p])]),
                                       atol=1e-5)
    # The last layer ran only at [CLS] and the masked positions: the same states, the
    # same pooled [CLS], so the same NSP logits.
    assert part.encoder.last_hidden_state.shape == (B, 4, CFG.hidden_size)
    rows = np.concatenate([np.zeros((B, 1), int), np.asarray(positions)], axis=1)
    np.testing.assert_allclose(
        np.asarray(part.encoder.last_hidden_state),
        np.take_along_axis(np.asarray(full.encoder.last_hidden_state), rows[..., None], 1),
        atol=1e-5)
    np.testing.assert_allclose(np.asarray(part.nsp_logits), np.asarray(full.nsp_logits),
                               atol=1e-5)


@pytest.mark.slow
def test_masked_positions_give_the_full_models_gradients(params):
    """Computing the last layer at the masked positions only changes no gradient."""
    ids, mask, types = inputs()
    positions = jnp.array([[1, 2, 15], [0, 9, 9], [3, 1, 0]], jnp.int32)
    targets = jnp.asarray(np.random.default_rng(2).integers(0, CFG.vocab_size, (B, 3)))
    net = build(CFG, "pretraining")

    def loss(p, sparse: bool):
        out = net.apply({"params": p}, ids, mask, types, positions if sparse else None)
        logits = out.mlm_logits if sparse else jnp.take_along_axis(
            out.mlm_logits, positions[..., None], axis=1)
        mlm = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1).mean()
        return mlm + jax.nn.log_softmax(out.nsp_logits)[:, 0].mean()

    sparse = jax.grad(loss)(params["pretraining"], True)
    full = jax.grad(loss)(params["pretraining"], False)
    for a, b in zip(jax.tree.leaves(sparse), jax.tree.leaves(full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


@pytest.mark.slow
def test_bf16_compute_close_to_fp32_with_fp32_params(params):
    ids, mask, types = inputs()
    fp32 = build(CFG, "pretraining").apply({"params": params["pretraining"]}, ids, mask, types)
    bf16_net = build(CFG.replace(dtype="bfloat16"), "pretraining")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(param_shapes(bf16_net)))
    out = bf16_net.apply({"params": params["pretraining"]}, ids, mask, types)
    assert out.encoder.last_hidden_state.dtype == jnp.bfloat16
    a, b = np.asarray(out.mlm_logits), np.asarray(fp32.mlm_logits)
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max() + 0.02
    np.testing.assert_allclose(np.asarray(out.encoder.last_hidden_state, np.float32),
                               np.asarray(fp32.encoder.last_hidden_state), atol=0.1)


@pytest.mark.slow
def test_remat_gives_identical_gradients(params):
    ids, mask, types = inputs()
    labels = jnp.asarray(np.random.default_rng(1).integers(0, CFG.vocab_size, (B, L)))

    def grads(remat: bool):
        net = build(CFG.replace(remat=remat), "pretraining")

        def loss(p):
            out = net.apply({"params": p}, ids, mask, types)
            logp = jax.nn.log_softmax(out.mlm_logits)
            return -jnp.take_along_axis(logp, labels[..., None], -1).mean() + out.nsp_logits.sum()

        return jax.jit(jax.grad(loss))(params["pretraining"])

    plain, remat = grads(False), grads(True)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert jax.tree.structure(plain) == jax.tree.structure(remat)


@pytest.mark.parametrize("head", ["encoder", "pretraining", "mlm", "classification"])
def test_every_param_has_logical_axes_of_its_rank(params, head):
    axes = param_logical_axes(build(CFG, head))
    leaves = jax.tree_util.tree_leaves_with_path(params[head])
    specs = dict(jax.tree_util.tree_leaves_with_path(
        axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
    assert len(specs) == len(leaves)
    known = {None, "vocab", "embed", "heads", "mlp"}
    for path, x in leaves:
        spec = specs[path]
        assert isinstance(spec, jax.sharding.PartitionSpec), path
        assert len(spec) == x.ndim, (path, spec, x.shape)
        assert set(spec) <= known, (path, spec)
    word = params[head].get("bert", params[head])["embeddings"]["word_embeddings"]["embedding"]
    assert word.shape == (CFG.vocab_size, CFG.hidden_size)


def test_layer_norm_and_gelu_follow_their_formulas():
    """The two building blocks written here rather than taken from flax/jax: LayerNorm
    (two-pass variance, eps inside the root) and GELU's erf form, against numpy/scipy."""
    from scipy.special import erf

    from bert_jax.model import LayerNorm, gelu

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 5, 32)) * 3 + 7).astype(np.float32)
    scale, bias = rng.normal(size=32).astype(np.float32), rng.normal(size=32).astype(np.float32)
    eps = 1e-12
    mean = x.astype(np.float64).mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + eps) * scale + bias
    params = {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}}
    got = LayerNorm(eps).apply(params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)
    assert LayerNorm(eps, dtype=jnp.bfloat16).apply(params, x.astype(jnp.bfloat16)).dtype == \
        jnp.bfloat16

    z = np.linspace(-10, 10, 2001).astype(np.float32)
    np.testing.assert_allclose(np.asarray(gelu(jnp.asarray(z))),
                               0.5 * z * (1 + erf(z / np.sqrt(2.0))), atol=1e-6)


def test_dropout_rate_scale_and_determinism():
    from bert_jax.model import Dropout

    x = jnp.ones((32, 64, 96))

    def apply(rate, seed, deterministic=False):
        return Dropout(rate).apply({}, x, deterministic, rngs={"dropout": jax.random.key(seed)})

    y = np.asarray(apply(0.1, 0))
    dropped = (y == 0).mean()
    # 196,608 Bernoulli draws: the std of the fraction is ~7e-4
    assert abs(dropped - 0.1) < 4e-3
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1 / (1 - round(0.1 * 65536) / 65536), rtol=1e-6)
    assert abs(y.mean() - 1.0) < 5e-3  # expectation kept
    np.testing.assert_array_equal(y, np.asarray(apply(0.1, 0)))  # same key, same mask
    assert (np.asarray(apply(0.1, 1)) != y).any()
    np.testing.assert_array_equal(np.asarray(apply(0.1, 0, deterministic=True)), np.asarray(x))
    assert abs((np.asarray(apply(0.5, 2)) == 0).mean() - 0.5) < 5e-3
    assert not np.asarray(apply(1.0, 0)).any()


def test_dropout_lanes_of_one_draw_are_independent():
    """Four neighbours share one threefry evaluation: their drops must still be
    independent, P(both dropped) = rate**2 for every offset within and across draws."""
    from bert_jax.model import Dropout

    x = jnp.ones((64, 4096))
    y = np.asarray(Dropout(0.5).apply({}, x, False, rngs={"dropout": jax.random.key(3)}))
    dropped = (y == 0).astype(np.float64)
    for offset in range(1, 6):
        both = (dropped[:, :-offset] * dropped[:, offset:]).mean()
        # 262,144 pairs: the std of the fraction is ~8.5e-4
        assert abs(both - 0.25) < 5e-3, (offset, both)
    # rows draw distinct blocks: no row repeats another's mask
    assert len({r.tobytes() for r in dropped[:, :64]}) == 64


def test_threefry_is_jaxs_threefry_bit_for_bit():
    # Random123's known-answer vector for threefry2x32_20 ...
    out = threefry2x32(*(jnp.uint32(v) for v in (0x13198A2E, 0x03707344)),
                       jnp.array([0x243F6A88], jnp.uint32), jnp.array([0x85A308D3], jnp.uint32))
    assert [int(w[0]) for w in out] == [0xC4923A9C, 0x483DF7A0]
    # ... and jax's own primitive on random keys and counters.
    r = np.random.default_rng(0)
    for _ in range(3):
        k0, k1 = (jnp.uint32(v) for v in r.integers(0, 2**32, 2))
        x0, x1 = (jnp.asarray(r.integers(0, 2**32, 4096), jnp.uint32) for _ in range(2))
        ours = threefry2x32(k0, k1, x0, x1)
        theirs = jax.extend.random.threefry2x32_p.bind(k0, k1, x0, x1)
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("rhs_shape,dims", [
    ((8, 5), (((2,), (0,)), ((), ()))),   # x @ kernel (nn.Dense)
    ((5, 8), (((2,), (1,)), ((), ()))),   # x @ table.T (the tied decoder)
    ((3, 8, 5), (((2,), (1,)), ((0,), (0,)))),  # batched: passed through unchanged
])
def test_matmul_2d_is_dot_general_with_the_same_gradients(rhs_shape, dims):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 4, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(rhs_shape), jnp.float32)
    ours, ref = matmul_2d(x, w, dims), jax.lax.dot_general(x, w, dims)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-6, atol=1e-6)
    dy = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
    g_ours = jax.vjp(lambda a, b: matmul_2d(a, b, dims), x, w)[1](dy)
    g_ref = jax.vjp(lambda a, b: jax.lax.dot_general(a, b, dims), x, w)[1](dy)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
