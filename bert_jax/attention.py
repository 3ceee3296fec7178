"""Scaled dot-product attention behind one function, with the kernel a config names.

`config.attention` picks it:
- "xla" (default): softmax(QK^T / sqrt d + mask) V written out, with dropout on the
  attention probabilities as the original recipe; the probabilities can be returned.
- "dot_product": `jax.nn.dot_product_attention`, cuDNN's fused flash attention on GPU
  (`implementation="cudnn"`), XLA's own lowering elsewhere.
- "splash": the Pallas splash-attention kernel, TPU only; kept to the few lines that map
  our inputs onto its API. Tests run it in Pallas' interpreter on CPU, not the TPU kernel.

The fused kernels never write the [B, heads, Q, L] probabilities, so they cannot drop
them out: asking for attention dropout in training with one of them is an error.
Padding is a [B, L] 0/1 mask; packed rows add [B, L] segment ids (a query sees only keys
of its own segment). With `query_positions` [B, Q] the queries are those rows of the
sequence (the sparse last layer) and their segment ids are read there.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from bert_jax.errors import UserError

Array = jax.Array
BACKENDS = ("xla", "dot_product", "splash")


def allowed(mask: Array, segment_ids: Array | None = None,
            query_positions: Array | None = None) -> Array:
    """[B, 1, Q, L] (or [B, 1, 1, L] without segments) bool: which keys each query sees."""
    keep = mask.astype(bool)[:, None, None, :]
    if segment_ids is None:
        return keep
    q_seg = segment_ids if query_positions is None else jnp.take_along_axis(
        segment_ids, query_positions.astype(jnp.int32), axis=1)
    return keep & (q_seg[:, None, :, None] == segment_ids[:, None, None, :])


def attention(q: Array, k: Array, v: Array, mask: Array, *,
              segment_ids: Array | None = None, query_positions: Array | None = None,
              backend: str = "xla", dropout: Callable[..., Array] | None = None,
              deterministic: bool = True) -> tuple[Array, Array | None]:
    """Attention of queries q [B, Q, heads, d] over keys and values [B, L, heads, d].

    `mask` [B, L]: 1 for real tokens, 0 for padding. `segment_ids` [B, L], optional:
    packed examples. `query_positions` [B, Q]: the positions q was taken at (only needed
    with segment ids). `dropout(probs, deterministic)`: the attention-probability
    dropout, "xla" only. Returns the context [B, Q, heads, d] and, for "xla", the
    probabilities [B, heads, Q, L] (None otherwise)."""
    scale = q.shape[-1] ** -0.5
    if backend == "xla":
        return _xla(q * jnp.asarray(scale, q.dtype), k, v,
                    allowed(mask, segment_ids, query_positions), dropout, deterministic)
    if backend not in BACKENDS:
        raise UserError(f"attention {backend!r} is not one of {BACKENDS}")
    if dropout is not None and not deterministic:
        raise UserError(f'attention "{backend}" is a fused kernel without attention dropout: '
                        'set attention_probs_dropout_prob=0 or use attention "xla"')
    if backend == "dot_product":
        impl = "cudnn" if jax.default_backend() == "gpu" else "xla"
        out = jax.nn.dot_product_attention(
            q, k, v, mask=allowed(mask, segment_ids, query_positions), scale=scale,
            implementation=impl)
        return out, None
    if jax.default_backend() != "tpu":
        raise UserError('attention "splash" runs only on TPU; use "dot_product" or "xla"')
    return _splash(q * jnp.asarray(scale, q.dtype), k, v, mask, segment_ids,
                   query_positions), None


def _xla(q: Array, k: Array, v: Array, keep: Array, dropout: Callable[..., Array] | None,
         deterministic: bool) -> tuple[Array, Array]:
    """The written-out path: fp32 scores, an additive mask, softmax, dropout, PV."""
    bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # [B, heads, L, d]
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(scores + bias, axis=-1)
    dropped = probs if dropout is None else dropout(probs, deterministic=deterministic)
    context = jnp.einsum("bhqk,bhkd->bhqd", dropped.astype(v.dtype), v)
    return context.transpose(0, 2, 1, 3), probs


def _splash(q: Array, k: Array, v: Array, mask: Array, segment_ids: Array | None,
            query_positions: Array | None, interpret: bool = False) -> Array:
    """Splash attention, one kernel call per example (vmap). Padding and packing are both
    segment ids to the kernel: padded keys get segment -1, which no query has. Its
    blocks are 128 long, so the query rows are padded up to a multiple of 128 (and the
    sequence must be one). `interpret`: Pallas' interpreter, which runs on CPU (tests)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    seg = jnp.ones(mask.shape, jnp.int32) if segment_ids is None else segment_ids.astype(
        jnp.int32)
    q_seg = seg if query_positions is None else jnp.take_along_axis(
        seg, query_positions.astype(jnp.int32), axis=1)
    kv_seg = jnp.where(mask.astype(bool), seg, -1)
    n_q, heads = q.shape[1], q.shape[2]
    pad = -n_q % 128
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    q_seg = jnp.pad(q_seg, ((0, 0), (0, pad)))
    full = splash.FullMask((n_q + pad, k.shape[1]))
    kernel = splash.make_splash_mha(splash.MultiHeadMask([full] * heads),
                                    head_shards=1, q_seq_shards=1, interpret=interpret)

    def one(q1, k1, v1, qs, ks):  # [L, heads, d] -> the kernel's [heads, L, d]
        out = kernel(q1.transpose(1, 0, 2), k1.transpose(1, 0, 2), v1.transpose(1, 0, 2),
                     segment_ids=splash.SegmentIds(q=qs, kv=ks))
        return out.transpose(1, 0, 2)

    return jax.vmap(one)(q, k, v, q_seg, kv_seg)[:, :n_q]
