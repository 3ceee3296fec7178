"""The BERT model in flax.linen: embeddings, post-LN encoder, pooler and heads.

Parameters are a plain pytree; every `apply` is pure. Module names spell the
HuggingFace PyTorch names with `_` for `.` (`bert/encoder_layer_0/attention_self/query/kernel`
is `bert.encoder.layer.0.attention.self.query.weight`), so weight conversion is a
rename plus a transpose (see `weights.py`).

The building blocks (Dense, LayerNorm, embedding tables with logical axis names, which
`sharding.py` maps onto mesh axes) are in `layers.py`. Compute dtype (`config.dtype`) is separate
from storage dtype (`config.param_dtype`): bf16 matmuls on fp32 parameters is
`dtype="bfloat16"`. Attention scores and softmax, LayerNorm statistics and the logits
heads (MLM decoder, NSP, classifier: fp32 accumulation, fp32 bias) stay in fp32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bert_jax import heads, sharding
from bert_jax.attention import attention
from bert_jax.config import BertConfig
from bert_jax.errors import UserError
from bert_jax.layers import dense, embedding, gather_positions, in_use, layer_norm, lookup
from bert_jax.ops import Dropout, activation, matmul

Array = jax.Array


# ---- the encoder ------------------------------------------------------------------------

class BertEmbeddings(nn.Module):
    config: BertConfig

    def setup(self) -> None:
        cfg = self.config
        self.word_embeddings = embedding(cfg, cfg.padded_vocab_size, ("vocab", "embed"),
                                         "word_embeddings", used_rows=cfg.vocab_size)
        self.position_embeddings = embedding(cfg, cfg.max_position_embeddings,
                                             (None, "embed"), "position_embeddings")
        self.token_type_embeddings = embedding(cfg, cfg.type_vocab_size, (None, "embed"),
                                               "token_type_embeddings")
        self.LayerNorm = layer_norm(cfg)
        self.dropout = Dropout(cfg.hidden_dropout_prob, cfg.dropout_impl)

    def __call__(self, input_ids: Array, token_type_ids: Array, position_ids: Array,
                 deterministic: bool) -> Array:
        x = (lookup(self.word_embeddings, input_ids, "vocab")
             + lookup(self.position_embeddings, position_ids)
             + lookup(self.token_type_embeddings, token_type_ids))
        return self.dropout(self.LayerNorm(x), deterministic=deterministic)

    def attend(self, x: Array) -> Array:
        """x @ word_embeddings.T: the tied MLM decoder, in the compute dtype with float32
        accumulation and output (the logits; bf16 would round them to 8 bits)."""
        dtype = jnp.dtype(self.config.dtype)
        table = sharding.constrain(self.word_embeddings.embedding,
                                   in_use(("vocab", "embed"))).astype(dtype)
        return matmul(self.config.matmul_impl)(x.astype(dtype), table,
                                               (((x.ndim - 1,), (1,)), ((), ())),
                                               preferred_element_type=jnp.float32)


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool,
                 queries: Array | None = None, positions: Array | None = None,
                 segment_ids: Array | None = None) -> tuple[Array, Array | None]:
        """Self-attention of x [B, L, H] under the padding `mask` [B, L]; `queries`
        [B, Q, H], the rows of x at `positions` [B, Q], attend to all of x instead,
        giving context [B, Q, H]. With `segment_ids` [B, L] (packed rows) a token sees
        only its own segment. Also returns the probabilities [B, heads, Q, L] where the
        kernel (`config.attention`) makes them."""
        cfg = self.config
        heads, head_dim = cfg.num_attention_heads, cfg.head_dim
        queries = x if queries is None else queries

        def project(name: str, y: Array) -> Array:
            y = dense(cfg, cfg.hidden_size, ("embed", "heads"), name)(y)
            y = y.reshape(*y.shape[:2], heads, head_dim)
            return sharding.constrain(y, ("batch", "length", "heads", None))

        rate = cfg.attention_probs_dropout_prob
        context, probs = attention(
            project("query", queries), project("key", x), project("value", x), mask,
            segment_ids=segment_ids, query_positions=positions, backend=cfg.attention,
            dropout=Dropout(rate, cfg.dropout_impl) if rate > 0 else None,
            deterministic=deterministic)
        context = sharding.constrain(context, ("batch", "length", "heads", None)).reshape(
            queries.shape)
        return context, probs


class BertLayer(nn.Module):
    """One post-LN transformer block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool,
                 positions: Array | None = None, segment_ids: Array | None = None,
                 ) -> tuple[Array, Array | None]:
        """x [B, L, H] -> [B, L, H]; with `positions` [B, P] only those rows are computed
        (they attend to all of x, or to their own segment of it): [B, P, H], the same
        values as the full block's rows."""
        cfg = self.config
        drop = Dropout(cfg.hidden_dropout_prob, cfg.dropout_impl)

        queries = None if positions is None else gather_positions(x, positions)
        context, probs = BertSelfAttention(cfg, name="attention_self")(
            x, mask, deterministic, queries, positions, segment_ids)
        if queries is not None:
            x = queries
        y = dense(cfg, cfg.hidden_size, ("heads", "embed"), "attention_output_dense")(context)
        x = layer_norm(cfg, "attention_output_LayerNorm")(
            x + drop(y, deterministic=deterministic))
        x = sharding.constrain(x, ("batch", "length", "act_embed"))

        y = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate_dense")(x)
        y = sharding.constrain(activation(cfg.hidden_act)(y), ("batch", "length", "mlp"))
        y = dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output_dense")(y)
        x = layer_norm(cfg, "output_LayerNorm")(x + drop(y, deterministic=deterministic))
        x = sharding.constrain(x, ("batch", "length", "act_embed"))
        return x, probs


@flax.struct.dataclass
class BertOutput:
    last_hidden_state: Array  # [B, L, H]
    pooler_output: Array | None = None  # [B, H], or [B, K, H] per packed example
    hidden_states: tuple[Array, ...] | None = None  # embeddings + every layer: L+1 of [B, L, H]
    attentions: tuple[Array, ...] | None = None  # every layer: [B, heads, L, L]


class BertModel(nn.Module):
    """The encoder: embeddings, `num_hidden_layers` blocks, and the [CLS] pooler.

    Packed rows (several examples in one row, `bert_jax/packing.py`) take `segment_ids`
    [B, L] (0 padding, k = the row's k-th example: a token attends to its own example
    only), `position_ids` restarting at 0 per example, and `cls_positions` [B, K] (each
    example's [CLS]; negative for an empty slot, whose outputs are meaningless): the
    pooler then gives one vector per example, [B, K, H]."""

    config: BertConfig
    add_pooling_layer: bool = True

    def setup(self) -> None:
        cfg = self.config
        layer_cls = BertLayer
        if cfg.remat:
            # deterministic (argument 3, counting self) is a Python bool: static.
            layer_cls = nn.remat(BertLayer, static_argnums=(3,))
        self.embeddings = BertEmbeddings(cfg)
        self.layers = [layer_cls(cfg, name=f"encoder_layer_{i}")
                       for i in range(cfg.num_hidden_layers)]
        if self.add_pooling_layer:
            self.pooler = dense(cfg, cfg.hidden_size, ("embed", None), "pooler_dense")

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
        *,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        last_layer_positions: Array | None = None,
        segment_ids: Array | None = None,
        cls_positions: Array | None = None,
    ) -> BertOutput:
        """`last_layer_positions` [B, P]: compute the last layer only at these positions,
        so last_hidden_state is [B, P, H] (row p: the state at position last_layer_positions[:, p])
        and the pooler reads its first row (its first K rows with `cls_positions` [B, K]):
        put the [CLS] position(s) first when the pooler is wanted."""
        if segment_ids is not None and position_ids is None:
            raise UserError("packed rows (segment_ids) need position_ids restarting at 0 "
                            "per example: bert_jax.packing.pack makes both")
        if attention_mask is None:
            attention_mask = (jnp.ones_like(input_ids) if segment_ids is None
                              else (segment_ids > 0).astype(jnp.int32))
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if output_attentions and self.config.attention != "xla":
            raise UserError(f'output_attentions needs attention "xla" (the fused '
                            f'"{self.config.attention}" never forms the probabilities)')
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)

        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        x = sharding.constrain(x, ("batch", "length", "act_embed"))
        hidden, attentions = [x], []
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            x, probs = layer(x, attention_mask, deterministic,
                             last_layer_positions if last else None, segment_ids)
            hidden.append(x)
            attentions.append(probs)
        pooled = None
        if self.add_pooling_layer:
            if cls_positions is None:
                first = x[:, 0]
            elif last_layer_positions is None:
                first = gather_positions(x, jnp.maximum(cls_positions, 0))
            else:
                first = x[:, :cls_positions.shape[1]]
            pooled = jnp.tanh(self.pooler(first))
        return BertOutput(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )

    def attend(self, x: Array) -> Array:
        return self.embeddings.attend(x)


# ---- heads ------------------------------------------------------------------------------

class BertMLMHead(nn.Module):
    """cls.predictions: dense + act + LayerNorm, then the tied decoder plus its own bias."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array, decoder: BertModel, padded_vocab: bool = False) -> Array:
        """Logits [..., vocab_size]; with `padded_vocab`, [..., padded_vocab_size] with
        the padding columns at the float32 minimum (never predicted, no effect on a
        softmax loss): the layout that shards over the mesh, for training."""
        cfg = self.config
        x = dense(cfg, cfg.hidden_size, ("embed", None), "transform_dense")(x)
        x = layer_norm(cfg, "transform_LayerNorm")(activation(cfg.hidden_act)(x))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (cfg.padded_vocab_size,), jnp.dtype(cfg.param_dtype))
        bias = sharding.constrain(bias.astype(jnp.float32), ("vocab",))
        if padded_vocab and cfg.padded_vocab_size > cfg.vocab_size:
            # Masked through the bias (a [V] select, not one per logit): the padding rows
            # of the table are zero, so their logits are exactly the minimum.
            column = jnp.arange(cfg.padded_vocab_size)
            bias = jnp.where(column < cfg.vocab_size, bias, jnp.finfo(jnp.float32).min)
        logits = decoder.attend(x) + bias  # both float32
        logits = sharding.constrain(logits, ("batch", "length", "vocab"))
        return logits if padded_vocab else logits[..., :cfg.vocab_size]


@flax.struct.dataclass
class PreTrainingOutput:
    mlm_logits: Array  # [B, P, V] at masked_positions, or [B, L, V] without them
    # (V: config.vocab_size, or config.padded_vocab_size with padded_vocab=True)
    nsp_logits: Array | None  # [B, 2] ([B, K, 2] packed), or None for an MLM-only model
    encoder: BertOutput


class BertForPreTraining(nn.Module):
    """BERT with the MLM head and (unless `nsp=False`) the next-sentence head."""

    config: BertConfig
    nsp: bool = True

    def setup(self) -> None:
        self.bert = BertModel(self.config)
        self.cls_predictions = BertMLMHead(self.config)
        if self.nsp:
            self.cls_seq_relationship = dense(self.config, 2, ("embed", None),
                                              "cls_seq_relationship", jnp.float32)

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        masked_positions: Array | None = None,
        *,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        padded_vocab: bool = False,
        position_ids: Array | None = None,
        segment_ids: Array | None = None,
        cls_positions: Array | None = None,
    ) -> PreTrainingOutput:
        """`masked_positions` [B, P]: project only these positions onto the vocabulary.
        Nothing else reads the last layer's other rows, so it runs only at [CLS] and the
        masked positions (5.6% of bert-base's FLOPs at S=128, P=20; the same values), and
        encoder.last_hidden_state is [B, 1 + P, H]: [CLS], then the masked positions.
        `padded_vocab`: MLM logits over the padded vocabulary (see BertMLMHead).
        Packed rows: `position_ids`, `segment_ids`, `cls_positions` [B, K] as BertModel;
        the NSP logits are per example, [B, K, 2], and the last layer's rows [B, K + P, H]."""
        positions = None
        if masked_positions is not None:
            cls = (jnp.zeros_like(masked_positions[:, :1]) if cls_positions is None
                   else jnp.maximum(cls_positions, 0).astype(masked_positions.dtype))
            positions = jnp.concatenate([cls, masked_positions], axis=1)
        enc = self.bert(input_ids, attention_mask, token_type_ids, position_ids,
                        deterministic=deterministic,
                        output_hidden_states=output_hidden_states,
                        output_attentions=output_attentions,
                        last_layer_positions=positions,
                        segment_ids=segment_ids, cls_positions=cls_positions)
        x = enc.last_hidden_state
        if masked_positions is not None:
            x = x[:, positions.shape[1] - masked_positions.shape[1]:]
        mlm_logits = self.cls_predictions(x, self.bert, padded_vocab)
        nsp_logits = None
        if self.nsp:
            nsp_logits = self.cls_seq_relationship(enc.pooler_output)
        return PreTrainingOutput(mlm_logits=mlm_logits, nsp_logits=nsp_logits, encoder=enc)


class BertForSequenceClassification(nn.Module):
    """Pooled [CLS] -> dropout -> linear: `num_labels` logits, or 1 value for regression."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None,
                 token_type_ids: Array | None = None, *, deterministic: bool = True,
                 position_ids: Array | None = None, segment_ids: Array | None = None,
                 cls_positions: Array | None = None) -> Array:
        """Logits [B, num_labels]; for packed rows (`position_ids`, `segment_ids`,
        `cls_positions` [B, K] as BertModel) one per example, [B, K, num_labels], with
        the last layer run only at the K [CLS] positions (nothing else reads it)."""
        cfg = self.config
        sparse = None if cls_positions is None else jnp.maximum(cls_positions, 0)
        enc = BertModel(cfg, name="bert")(input_ids, attention_mask, token_type_ids,
                                          position_ids, deterministic=deterministic,
                                          last_layer_positions=sparse,
                                          segment_ids=segment_ids,
                                          cls_positions=cls_positions)
        x = Dropout(cfg.hidden_dropout_prob, cfg.dropout_impl)(
            enc.pooler_output, deterministic=deterministic)
        return dense(cfg, cfg.num_labels, ("embed", None), "classifier", jnp.float32)(x)


# ---- parameters -------------------------------------------------------------------------

def build(config: BertConfig, head: str = "pretraining") -> nn.Module:
    """The module of a registered head (bert_jax/heads.py): encoder, pretraining
    (MLM + the sentence-pair head), mlm, classification."""
    spec = heads.head(head)
    return globals()[spec.module](config, **dict(spec.options))


def _dummy_inputs(config: BertConfig) -> tuple[Array, ...]:
    ids = jnp.zeros((1, min(8, config.max_position_embeddings)), jnp.int32)
    return ids, jnp.ones_like(ids), jnp.zeros_like(ids)


def init_params(model: nn.Module, rng: Array) -> dict[str, Any]:
    """Random parameters, unboxed: a plain pytree of arrays."""
    variables = model.init(rng, *_dummy_inputs(model.config))
    return nn.meta.unbox(variables["params"])


def param_logical_axes(model: nn.Module) -> Any:
    """The logical axis names of every parameter, as a pytree of PartitionSpecs."""
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *_dummy_inputs(model.config)))
    return nn.get_partition_spec(boxed["params"])


def param_shapes(model: nn.Module) -> Any:
    """ShapeDtypeStructs of every parameter, computed without allocating any."""
    return nn.meta.unbox(jax.eval_shape(
        lambda: model.init(jax.random.key(0), *_dummy_inputs(model.config)))["params"])


def count_params(params: Any) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
