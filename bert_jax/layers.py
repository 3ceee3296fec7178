"""The parameterised building blocks of the model: a Dense, LayerNorm and embedding
tables with logical axis names and the layout their weights take where they are used.

Each weight carries logical axis names (`vocab`, `embed`, `heads`, `mlp`, ...) that
`sharding.py` maps onto mesh axes; `in_use` is the layout a weight is constrained to
right before its use (the FSDP all-gather). Compute dtype (`config.dtype`) is separate
from storage dtype (`config.param_dtype`). `model.py` builds BERT from these.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax import sharding
from bert_jax.config import BertConfig
from bert_jax.ops import LayerNorm, matmul

Array = jax.Array


def in_use(names: tuple[str | None, ...]) -> tuple[str | None, ...]:
    """A parameter's layout where it is used: whole along `embed` (the dim that FSDP
    shards for storage), still split along a tensor-parallel dim (heads, mlp, vocab).
    Constraining a weight to it right before use is the FSDP all-gather (and, through
    autodiff, the gradient's reduce-scatter); left to XLA, a weight split along the
    hidden dim can split the activations along it too, which then get gathered."""
    return tuple(None if n == "embed" else n for n in names)


class Dense(nn.Module):
    """`nn.Dense` (the same parameters and values) with the weights laid out for use
    (`in_use`) and the matmul `config.matmul_impl` names (see `ops.matmul`).

    `out_dtype` (logits heads): the product accumulates and is returned in it, and the
    bias is added in it, instead of the compute dtype; with bf16 compute, float32 keeps
    the logits from being rounded to bf16's 8 bits before the loss."""

    features: int
    axes: tuple[str | None, str | None]  # logical names of the kernel [in, out]
    config: BertConfig
    out_dtype: Any = None  # None: the compute dtype (config.dtype)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.initializer_range), self.axes),
            (x.shape[-1], self.features), param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(
            nn.initializers.zeros, self.axes[1:]), (self.features,), param_dtype)
        kernel = sharding.constrain(kernel, in_use(self.axes))
        bias = sharding.constrain(bias, in_use(self.axes[1:]))
        out_dtype = None if self.out_dtype is None else jnp.dtype(self.out_dtype)
        y = matmul(cfg.matmul_impl)(x.astype(dtype), kernel.astype(dtype),
                                    (((x.ndim - 1,), (0,)), ((), ())),
                                    preferred_element_type=out_dtype)
        return y + bias.astype(y.dtype)


def dense(cfg: BertConfig, features: int, axes: tuple[str | None, str | None],
          name: str, out_dtype: Any = None) -> Dense:
    """A `Dense` named `name` (the HF name with `_` for `.`), kernel axes `axes`."""
    return Dense(features, axes, cfg, out_dtype, name=name)


def layer_norm(cfg: BertConfig, name: str = "LayerNorm") -> LayerNorm:
    """BERT's LayerNorm (`config.layer_norm_eps`; statistics in fp32, see ops.LayerNorm)."""
    return LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.dtype(cfg.dtype),
                     param_dtype=jnp.dtype(cfg.param_dtype), name=name)


def embedding(cfg: BertConfig, num: int, axes: tuple[str | None, str], name: str,
              used_rows: int | None = None) -> nn.Embed:
    """An embedding table of `num` rows; rows from `used_rows` on (vocabulary padding)
    start at zero and, never looked up or predicted, stay zero."""
    init = nn.initializers.normal(cfg.initializer_range)
    if used_rows is not None and used_rows < num:
        normal = init

        def init(key, shape, dtype=jnp.float32):
            used = normal(key, (used_rows, *shape[1:]), dtype)
            return jnp.pad(used, [(0, shape[0] - used_rows)] + [(0, 0)] * (len(shape) - 1))

    return nn.Embed(
        num, cfg.hidden_size,
        dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        embedding_init=nn.with_logical_partitioning(init, axes),
        name=name,
    )


def lookup(embed: nn.Embed, ids: Array, rows: str | None = None) -> Array:
    """`embed(ids)` with the table's embedding dim whole: gathered over fsdp before the
    lookup (as every FSDP weight is before its use), its rows left split over `rows`'
    mesh axes. A lookup from a table split along the embedding dim into a batch-split
    output is a reshard XLA can only do by replicating the whole result."""
    table = sharding.constrain(embed.embedding, in_use((rows, "embed")))
    return jnp.take(table, ids, axis=0).astype(embed.dtype)


def gather_positions(x: Array, positions: Array) -> Array:
    """x[b, positions[b, p]] for every b, p: [B, L, H] x [B, P] -> [B, P, H]."""
    return jnp.take_along_axis(x, positions[..., None].astype(jnp.int32), axis=1)
