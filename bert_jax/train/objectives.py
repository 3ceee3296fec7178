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
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class PreTraining:
    """MLM (+ NSP unless the model has no NSP head): the original BERT objective."""

    model: nn.Module  # BertForPreTraining
    losses: tuple[str, ...] = ("masked_lm_loss", "next_sentence_loss")

    @property
    def nsp(self) -> bool:
        return self.model.nsp

    def loss_names(self) -> tuple[str, ...]:
        return self.losses if self.nsp else ("masked_lm_loss",)

    def denominators(self, batch: Batch) -> dict[str, jax.Array]:
        mlm = jnp.sum(batch["masked_lm_weights"].astype(jnp.float32))
        dens = {"masked_lm_loss": mlm, "masked_lm_accuracy": mlm}
        if self.nsp:
            examples = jnp.sum(_example_weights(batch))
            dens |= {"next_sentence_loss": examples, "next_sentence_accuracy": examples}
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
        if self.nsp:
            ew = _example_weights(batch)
            nsp_labels = batch["next_sentence_label"]
            nsp_xent = optax.softmax_cross_entropy_with_integer_labels(out.nsp_logits, nsp_labels)
            nsp_correct = jnp.argmax(out.nsp_logits, -1) == nsp_labels
            nums |= {"next_sentence_loss": jnp.sum(nsp_xent * ew),
                     "next_sentence_accuracy": jnp.sum(nsp_correct * ew)}
        return nums


@dataclasses.dataclass(frozen=True)
class Classification:
    """Sequence classification (cross-entropy) or, with one label, regression (MSE)."""

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
            err = logits[:, 0] - batch["labels"].astype(jnp.float32)
            return {"loss": jnp.sum(jnp.square(err) * ew)}
        labels = batch["labels"]
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = jnp.argmax(logits, -1) == labels
        return {"loss": jnp.sum(xent * ew), "accuracy": jnp.sum(correct * ew)}

    def predict(self, params: Any, batch: Batch, rng: jax.Array | None = None,
                train: bool = False) -> jax.Array:
        return self.model.apply(
            {"params": params}, batch["input_ids"], batch["attention_mask"],
            batch["token_type_ids"], deterministic=not train,
            rngs={"dropout": rng} if train else None)


def _example_weights(batch: Batch) -> jax.Array:
    """1 for a real example, 0 for a padding row of a ragged last eval batch."""
    if "example_weight" in batch:
        return batch["example_weight"].astype(jnp.float32)
    return jnp.ones(batch["input_ids"].shape[:1], jnp.float32)
