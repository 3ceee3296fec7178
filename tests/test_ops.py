"""The building blocks of bert_jax/ops.py: GELU, LayerNorm, dropout and its threefry
bits (bit-identity with jax, counters past 2**32), matmul_2d, the per-backend choices."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from bert_jax import ops
from bert_jax.ops import Dropout, LayerNorm, gelu, matmul_2d, threefry2x32


def test_layer_norm_and_gelu_follow_their_formulas():
    """The two building blocks written here rather than taken from flax/jax: LayerNorm
    (two-pass variance, eps inside the root) and GELU's erf form, against numpy/scipy."""

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


def _old_counters(blocks):
    """The counter of the 32-bit-only dropout it replaced: the row-major index in one
    uint32 word (numpy, independently of the code under test)."""
    return np.arange(np.prod(blocks), dtype=np.uint64).reshape(blocks).astype(np.uint32)


@pytest.mark.parametrize("blocks,offset", [((3, 5, 7), 0), ((4, 6), 11)])
def test_counters_below_2_32_are_the_flat_index(blocks, offset):
    hi, lo = ops.block_counters(blocks, offset)
    full = _old_counters((blocks[0] + offset, *blocks[1:]))[offset:]
    np.testing.assert_array_equal(np.asarray(lo), full)
    assert not np.asarray(hi).any()
    # A traced offset (a shard inside shard_map) takes the 64-bit path: the same words.
    hi2, lo2 = jax.jit(lambda o: ops.block_counters(blocks, o))(jnp.int32(offset))
    np.testing.assert_array_equal(np.asarray(lo2), full)
    assert not np.asarray(hi2).any()


def test_counters_carry_past_2_32():
    """Rows far out (as a shard of a huge global mask sees them) count on in 64 bits."""
    row = 3 * 1000003
    offset = 2**32 // row - 1  # the carry happens inside this shard's rows
    hi, lo = ops.block_counters((4, 3, 1000003), offset)
    got = (np.asarray(hi).astype(np.uint64) << np.uint64(32)) | np.asarray(lo)
    expected = (np.uint64(offset * row)
                + np.arange(4 * row, dtype=np.uint64).reshape(4, 3, 1000003))
    np.testing.assert_array_equal(got, expected)
    assert np.asarray(hi).any() and not np.asarray(hi)[0].any()


def test_dropout_mask_bits_unchanged_below_2_32():
    """The 16-bit draws are threefry of (0, block index) as before: recomputed here from
    jax's own threefry primitive, so masks below 2**32 blocks are bit-identical."""
    key = jax.random.key(7)
    shape = (3, 5, 10)
    got = np.asarray(ops.random_uint16(key, shape, 2))
    k = jax.random.key_data(key)
    counters = _old_counters((5, 5, 3))[2:]
    w0, w1 = jax.extend.random.threefry2x32_p.bind(
        k[0], k[1], jnp.zeros(counters.shape, jnp.uint32), jnp.asarray(counters))
    words = np.stack([np.asarray(w0), np.asarray(w1)], -1)
    np.testing.assert_array_equal(got, words.view(np.uint16).reshape(3, 5, 12)[..., :10])


def test_dropout_mask_past_2_32_elements_traces():
    """A global attention mask of (5462, 12, 512, 512), 2**34 elements (the 64-chip seq-512
    batch), used to raise; now it lowers (abstractly: nothing of that size is made)."""
    shape = (5462, 12, 512, 512)
    x = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    out = jax.eval_shape(lambda x: Dropout(0.1, "threefry16").apply(
        {}, x, False, rngs={"dropout": jax.random.key(0)}), x)
    assert out.shape == shape
    jax.jit(lambda k: ops.random_uint16(k, shape)).lower(jax.random.key(0))


@pytest.mark.parametrize("impl", ["jax", "rbg", "unsafe_rbg"])
def test_jax_prng_dropout_has_the_rate_and_scale(impl):
    x = jnp.ones((64, 1024))
    y = np.asarray(Dropout(0.1, impl).apply({}, x, False, rngs={"dropout": jax.random.key(0)}))
    assert abs((y == 0).mean() - 0.1) < 5e-3  # 65,536 draws: std ~1.2e-3
    np.testing.assert_allclose(y[y != 0], 1 / (1 - round(0.1 * 65536) / 65536), rtol=1e-6)
    again = Dropout(0.1, impl).apply({}, x, False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(y, np.asarray(again))
    other = Dropout(0.1, "threefry16").apply({}, x, False, rngs={"dropout": jax.random.key(0)})
    assert (np.asarray(other) != y).any()  # really another generator


def test_auto_picks_the_cpu_kernels_on_cpu_and_jaxs_elsewhere(monkeypatch):
    assert ops.resolve("dropout_impl", "auto") == "threefry16"
    assert ops.matmul("auto") is matmul_2d
    assert ops.resolve("dropout_impl", "jax") == "jax"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert ops.resolve("dropout_impl", "auto") == "jax"
    assert ops.matmul("auto") is jax.lax.dot_general
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert ops.resolve("dropout_impl", "auto") == "unsafe_rbg"
