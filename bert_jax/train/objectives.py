"""Objectives: what a train step minimises and measures, for each kind of training.

An objective splits every loss and metric into a numerator that depends on the
parameters and a denominator that depends on the batch only (e.g. the MLM loss is
sum(xent * w) / sum(w), the original's weighted mean over the real masked positions).
That split is what makes gradient accumulation exact: the denominators of the whole
batch are known before the micro-batches run, and the micro-batch gradients simply add
up to the gradient of the full batch. Metrics are reported as numerator / denominator.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bert_jax.packing import PACKED_INPUTS

Batch = dict[str, jax.Array]


class Objective(Protocol):
    """What `step.make_train_step` and `step.make_eval_step` need of an objective."""

    def loss_names(self) -> tuple[str, ...]:
        """The numerators whose ratios are summed into the loss that is minimised."""

    def denominators(self, batch: Batch) -> dict[str, jax.Array]:
        """Per metric, its batch-only denominator."""

    def numerators(self, params: Any, batch: Batch, rng: jax.Array | None,
                   train: bool) -> dict[str, jax.Array]:
        """Per metric, its numerator (the part that depends on the parameters)."""


@dataclasses.dataclass(frozen=True)
class PreTraining:
    """MLM plus, if the model has the pair head, a sentence-pair task: the original BERT
    objective (NSP) or ALBERT's sentence-order prediction (SOP). Both read the pair label
    from `next_sentence_label` (0: B is A's true continuation); only the name of the
    pair metrics, `<pair>_loss` and `<pair>_accuracy`, differs (see heads.OBJECTIVES)."""

    model: nn.Module  # BertForPreTraining
    pair: str | None = "next_sentence"  # None: MLM only

    @property
    def pair_name(self) -> str | None:
        return self.pair if self.model.nsp else None

    def loss_names(self) -> tuple[str, ...]:
        pair = self.pair_name
        return ("masked_lm_loss", f"{pair}_loss") if pair else ("masked_lm_loss",)

    def denominators(self, batch: Batch) -> dict[str, jax.Array]:
        mlm = jnp.sum(batch["masked_lm_weights"].astype(jnp.float32))
        dens = {"masked_lm_loss": mlm, "masked_lm_accuracy": mlm}
        if pair := self.pair_name:
            examples = jnp.sum(_example_weights(batch))
            dens |= {f"{pair}_loss": examples, f"{pair}_accuracy": examples}
        return dens

    def numerators(self, params: Any, batch: Batch, rng: jax.Array | None,
                   train: bool) -> dict[str, jax.Array]:
        out = self.model.apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"],
            batch["token_type_ids"], batch["masked_lm_positions"],
            deterministic=not train, rngs={"dropout": rng} if train else None,
            padded_vocab=True)
        w = batch["masked_lm_weights"].astype(jnp.float32)
        labels = batch["masked_lm_ids"]
        xent = optax.softmax_cross_entropy_with_integer_labels(out.mlm_logits, labels)
        correct = jnp.argmax(out.mlm_logits, -1) == labels
        nums = {"masked_lm_loss": jnp.sum(xent * w),
                "masked_lm_accuracy": jnp.sum(correct * w)}
        if pair := self.pair_name:
            ew = _example_weights(batch)
            pair_labels = batch["next_sentence_label"]
            pair_xent = optax.softmax_cross_entropy_with_integer_labels(out.nsp_logits,
                                                                        pair_labels)
            pair_correct = jnp.argmax(out.nsp_logits, -1) == pair_labels
            nums |= {f"{pair}_loss": jnp.sum(pair_xent * ew),
                     f"{pair}_accuracy": jnp.sum(pair_correct * ew)}
        return nums


@dataclasses.dataclass(frozen=True)
class Classification:
    """Sequence classification (cross-entropy) or, with one label, regression (MSE).

    A batch is padded rows ([B] labels), or packed rows (`packing.Packed.model_inputs()`
    plus labels [B, K] from `Packed.per_slot`): then logits, labels and weights are per
    example slot, and the empty slots weigh 0 (see `_example_weights`)."""

    model: nn.Module  # BertForSequenceClassification

    def loss_names(self) -> tuple[str, ...]:
        return ("loss",)

    @property
    def regression(self) -> bool:
        return self.model.config.num_labels == 1

    def denominators(self, batch: Batch) -> dict[str, jax.Array]:
        n = jnp.sum(_example_weights(batch))
        return {"loss": n} if self.regression else {"loss": n, "accuracy": n}

    def numerators(self, params: Any, batch: Batch, rng: jax.Array | None,
                   train: bool) -> dict[str, jax.Array]:
        logits = self.predict(params, batch, rng, train)
        ew = _example_weights(batch)
        if self.regression:
            err = logits[..., 0] - batch["labels"].astype(jnp.float32)
            return {"loss": jnp.sum(jnp.square(err) * ew)}
        labels = batch["labels"]
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = jnp.argmax(logits, -1) == labels
        return {"loss": jnp.sum(xent * ew), "accuracy": jnp.sum(correct * ew)}

    def predict(self, params: Any, batch: Batch, rng: jax.Array | None = None,
                train: bool = False) -> jax.Array:
        packed = {k: batch[k] for k in PACKED_INPUTS if k in batch}
        return self.model.apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"],
            batch["token_type_ids"], deterministic=not train,
            rngs={"dropout": rng} if train else None, **packed)


def _example_weights(batch: Batch) -> jax.Array:
    """1 for a real example, 0 for a padding row of a ragged last eval batch; packed rows
    ([B, K]) also weigh 0 in an empty slot, and a per-row `example_weight` [B] applies
    to every slot of its row."""
    w = (batch["example_weight"].astype(jnp.float32) if "example_weight" in batch
         else jnp.ones(batch["input_ids"].shape[:1], jnp.float32))
    if "cls_positions" in batch:
        filled = (batch["cls_positions"] >= 0).astype(jnp.float32)
        w = filled * (w[:, None] if w.ndim == 1 else w)
    return w
