"""The model's building blocks below the transformer: GELU, LayerNorm, dropout and its
random bits, and the dense-layer matmul.

Several are written for XLA's CPU backend, where bert-jax was tuned: a threefry PRNG in
jnp ops with 16-bit dropout draws, and a matmul that merges leading axes before
differentiating. Each such choice is a `BertConfig` field (`dropout_impl`,
`matmul_impl`) whose "auto" picks per backend (`resolve`): the CPU versions on CPU,
jax's own PRNG and plain `dot_general` elsewhere, where the CPU tricks buy nothing.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import sharding

Array = jax.Array
_SQRT_HALF = math.sqrt(0.5)

# "auto" of each backend-dependent choice: backend -> implementation (others: "default").
# Dropout: the hand-written threefry beats jax's rolled threefry loop only on CPU; on TPU
# the hardware generator behind the rbg key types is the fast one (jax's documentation of
# `jax.random`); on GPU jax's threefry kernel is already fused. Not measured off CPU here.
_AUTO = {
    "dropout_impl": {"cpu": "threefry16", "tpu": "unsafe_rbg", "default": "jax"},
    "matmul_impl": {"cpu": "2d", "default": "dot_general"},
}
DROPOUT_IMPLS = ("auto", "threefry16", "jax", "rbg", "unsafe_rbg")
MATMUL_IMPLS = ("auto", "2d", "dot_general")


def resolve(field: str, value: str) -> str:
    """The implementation `value` of config field `field` names; "auto" is the one for
    the default backend (read when the model is traced)."""
    if value != "auto":
        return value
    choices = _AUTO[field]
    return choices.get(jax.default_backend(), choices["default"])


# ---- activations ------------------------------------------------------------------------

def gelu(x: Array) -> Array:
    """Exact GELU in the erf form of the original and of PyTorch: x/2 (1 + erf(x/sqrt 2)).

    `jax.nn.gelu(approximate=False)` uses erfc, which XLA's CPU backend evaluates through
    exp and a piecewise select; erf is a single rational approximation. The two agree to
    fp32 rounding wherever GELU is not already ~0 (the erfc form is only more precise in
    relative terms deep in the negative tail).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


def activation(name: str):
    """The activation a config names; "gelu" is the exact erf form, as the original."""
    return {
        "gelu": gelu,
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "tanh": jnp.tanh,
    }[name]


# ---- matmul -----------------------------------------------------------------------------

def matmul_2d(lhs: Array, rhs: Array, dimension_numbers: Any, precision: Any = None,
              preferred_element_type: Any = None) -> Array:
    """`lax.dot_general` for x [..., K] times a 2-D weight, with x's leading axes merged
    first ([B, L, K] -> [B*L, K]): the same products, a faster backward pass on CPU.

    Differentiating the 3-D product makes XLA's CPU backend transpose the output gradient
    and run the weight gradient as a slow generic dot; from the 2-D product all three
    matmuls reach its fast kernels. Fwd+bwd of a 768x3072 dense layer at 1024 rows: 176
    -> 259 GFLOP/s; the tied 768x28996 decoder at 160 rows: 152 -> 180; bert-base's
    training step 10% faster. Other contractions go to `lax.dot_general` unchanged."""
    (lhs_contract, rhs_contract), (lhs_batch, _) = dimension_numbers
    if (rhs.ndim != 2 or lhs.ndim < 3 or lhs_batch
            or tuple(lhs_contract) != (lhs.ndim - 1,)):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                                   preferred_element_type=preferred_element_type)
    y = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs,
                            (((1,), tuple(rhs_contract)), ((), ())), precision,
                            preferred_element_type=preferred_element_type)
    return y.reshape(*lhs.shape[:-1], y.shape[-1])


def matmul(impl: str) -> Any:
    """The `dot_general` a config's `matmul_impl` names ("auto", "2d", "dot_general")."""
    return {"2d": matmul_2d, "dot_general": jax.lax.dot_general}[resolve("matmul_impl", impl)]


# ---- LayerNorm --------------------------------------------------------------------------

class LayerNorm(nn.Module):
    """LayerNorm over the last axis with params `scale` and `bias`, statistics in fp32.

    Equal to flax's `nn.LayerNorm` up to rounding (the variance is the two-pass mean of
    squared deviations, as PyTorch's), but the scale multiplies the normalised input
    instead of flax's per-row inverse std: flax's product is a full [batch, length,
    hidden] array that autodiff keeps and XLA materialises as a broadcast, ~2% of a
    bert-base train step on CPU.
    """

    epsilon: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = (x.shape[-1],)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           features, self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                          features, self.param_dtype)
        # Whole where used (gathered over fsdp, which shards `embed` for storage).
        scale, bias = (sharding.constrain(p, (None,)) for p in (scale, bias))
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = x.mean(-1, keepdims=True)
        centred = x - mean
        var = jnp.square(centred).mean(-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.epsilon)
        return (y * scale.astype(y.dtype) + bias.astype(y.dtype)).astype(self.dtype)


# ---- dropout and its random bits --------------------------------------------------------

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k0: Array, k1: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), the function behind jax's PRNG:
    bit-identical to `jax.extend.random.threefry2x32_p`. Written out in jnp ops because
    jax lowers that primitive on CPU as a rolled loop, which XLA cannot fuse with its
    consumers; unrolled, a dropout mask costs 3.5x less there."""
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = ((x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def _mul_wide(a: Array, b: int) -> tuple[Array, Array]:
    """The 64-bit product of uint32 `a` and a constant b < 2**32 as (high, low) words,
    from 16-bit halves (no 64-bit integers without jax_enable_x64)."""
    a_lo, a_hi = a & jnp.uint32(0xFFFF), a >> jnp.uint32(16)
    b_lo, b_hi = jnp.uint32(b & 0xFFFF), jnp.uint32(b >> 16)
    p0, p1, p2, p3 = a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi
    mid = (p0 >> 16) + (p1 & jnp.uint32(0xFFFF)) + (p2 & jnp.uint32(0xFFFF))
    lo = (p0 & jnp.uint32(0xFFFF)) | (mid << 16)
    hi = p3 + (p1 >> 16) + (p2 >> 16) + (mid >> 16)
    return hi, lo


def block_counters(blocks: tuple[int, ...], row_offset: Array | int = 0) -> tuple[Array, Array]:
    """The row-major index of every element of an array of shape `blocks`, counted from
    `row_offset` rows before it, as a 64-bit counter in two uint32 words (high, low).

    Below 2**32 the high word is 0 and the low word is the index, which is jax's own
    counter layout (`jax.random.bits`); beyond, the index carries into the high word, so
    a mask of any size (a global (5462, 12, 512, 512) attention mask: 2**33.5 elements)
    draws distinct counters."""
    row = math.prod(blocks[1:])
    if row >= 2**32:
        raise ValueError(f"dropout mask rows of {blocks[1:]} blocks need a 64-bit row index")
    within = jnp.zeros(blocks, jnp.uint32)
    stride = 1
    for axis in reversed(range(1, len(blocks))):  # the index within a row, from iotas
        within = within + jax.lax.broadcasted_iota(jnp.uint32, blocks, axis) * stride
        stride *= blocks[axis]
    if isinstance(row_offset, int) and (row_offset + blocks[0]) * row <= 2**32:
        # Every index fits in 32 bits: one multiply-add, as jax counts.
        rows = jax.lax.broadcasted_iota(jnp.uint32, blocks, 0) + jnp.uint32(row_offset)
        return jnp.zeros(blocks, jnp.uint32), rows * jnp.uint32(row) + within
    # The first index of each row in 64 bits (per row, then broadcast), plus the index
    # within the row with its carry.
    first_hi, first_lo = _mul_wide(
        jnp.arange(blocks[0], dtype=jnp.uint32) + jnp.asarray(row_offset, jnp.uint32), row)
    first_hi, first_lo = (w.reshape(-1, *[1] * (len(blocks) - 1)) for w in (first_hi, first_lo))
    lo = first_lo + within
    return first_hi + (lo < first_lo).astype(jnp.uint32), lo


def random_uint16(key: Array, shape: tuple[int, ...], row_offset: Array | int = 0) -> Array:
    """Uniform 16-bit draws: threefry2x32 of counter (high, low) = j gives elements
    4j .. 4j+3; `row_offset` rows of `shape` come before these (rows of a larger,
    sharded array), so a shard draws exactly its rows of the global array's bits."""
    *lead, n = shape
    blocks = (*lead, -(-n // 4))
    hi, lo = block_counters(blocks, row_offset)
    k = jax.random.key_data(key)
    w0, w1 = threefry2x32(k[0], k[1], hi, lo)
    words = jnp.stack([w0, w1], axis=-1)  # [*lead, blocks, 2] uint32
    return jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(*lead, -1)[..., :n]


def _jax_uint16(key: Array, shape: tuple[int, ...], row_offset: Array | int,
                impl: str) -> Array:
    """16-bit draws from jax's PRNG, with the key re-typed to `impl` ("rbg",
    "unsafe_rbg") if asked. A shard folds its row offset into the key: its own stream,
    not its rows of the global mask (exact sharded equivalence is the CPU path's)."""
    if not isinstance(row_offset, int) or row_offset:
        key = jax.random.fold_in(key, row_offset)
    if impl != "jax":
        # rbg keys take 4 words: two threefry words per half of a split.
        data = jax.random.key_data(jax.random.split(key)).reshape(-1)
        key = jax.random.wrap_key_data(data, impl=impl)
    return jax.random.bits(key, shape, jnp.uint16)


class Dropout(nn.Module):
    """Inverted dropout on 16 random bits per element.

    "threefry16" (CPU's "auto"): four 16-bit draws per threefry call. flax's `nn.Dropout`
    spends one threefry evaluation per element, and `jax.random.bits` keeps 32 of the 64
    bits each evaluation makes. Here the counter of element block j is j itself (as
    `jax.random.bits` counts, so the mask shards with the activations) and both output
    words are used: a quarter of the evaluations. 16-bit draws made a bert-base train
    step on CPU 5.5% faster, and keeping both words another 2% (alternating processes).
    "jax", "rbg", "unsafe_rbg": `jax.random.bits` with that key type.

    The drop probability is `rate` rounded to 1/65536 (0.1 -> 0.100006) and the kept
    values are scaled by the exact keep probability, so the expectation is unchanged.
    """

    rate: float
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        threshold = round(self.rate * 65536)  # drop where the 16 bits are below it
        keep_prob = 1.0 - threshold / 65536
        # Inside the step's shard_map over `data`, x is this shard's rows of the batch:
        # counting from its first row's global index draws the global mask's rows.
        offset = sharding.manual_row_offset(x.shape[0])
        impl = resolve("dropout_impl", self.impl)
        key = self.make_rng("dropout")
        if impl == "threefry16":
            bits = random_uint16(key, x.shape, offset)
        else:
            bits = _jax_uint16(key, x.shape, offset, impl)
        return jnp.where(bits >= threshold, x / keep_prob, 0).astype(x.dtype)
