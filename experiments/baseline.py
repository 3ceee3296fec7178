"""The frequent-token baseline: what MLM scores without reading the context.

A model that has learnt nothing but token frequencies predicts, at every masked
position, the commonest token (accuracy) with the unigram distribution (loss). Both are
measured here on the held-out masked positions, with the frequencies counted on the
pre-training data's masked positions (the training labels: the tokens a model is asked
for, [CLS]/[SEP]/[PAD] never among them):

    frequent_token_baseline("study/data/train128-...", "study/data/eval128-...")
    # {"accuracy": 0.061, "loss": 6.21, "token_id": 14, "eval_positions": 59231, ...}

`accuracy`: share of held-out masked labels equal to the training data's commonest
label; `loss`: mean cross-entropy (nats) of the add-one-smoothed training unigram on the
held-out labels. A model must beat both before its MLM numbers mean anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bert_jax.data import PretrainingLoader

BATCH = 256


def masked_label_counts(data_dir: str | Path, max_batches: int = 0) -> np.ndarray:
    """Counts of each token id among the masked labels of a static-mask dataset (its
    first `max_batches` batches of 256, in order; 0: all of it)."""
    loader = PretrainingLoader(data_dir, BATCH, shuffle=False, repeat=False,
                               drop_remainder=False)
    counts = np.zeros(int(loader.metadata["vocab_size"]), np.int64)
    n = len(loader) if max_batches <= 0 else min(len(loader), max_batches)
    for i in range(n):
        b = loader.batch(0, i)
        keep = b["masked_lm_weights"] > 0
        counts += np.bincount(b["masked_lm_ids"][keep], minlength=counts.size)
    return counts


def scores(train_counts: np.ndarray, eval_counts: np.ndarray) -> dict[str, Any]:
    """The baseline's accuracy and loss on `eval_counts` given `train_counts`."""
    top = int(np.argmax(train_counts))
    probs = (train_counts + 1.0) / (train_counts.sum() + train_counts.size)
    total = int(eval_counts.sum())
    return {"accuracy": float(eval_counts[top] / total),
            "loss": float(-(eval_counts * np.log(probs)).sum() / total),
            "token_id": top, "train_positions": int(train_counts.sum()),
            "eval_positions": total}


def frequent_token_baseline(train_dir: str | Path, eval_dir: str | Path,
                            eval_batches: int = 0, batch_size: int = 32) -> dict[str, Any]:
    """The baseline on the held-out set as the study scores it: its first
    `eval_batches` batches of `batch_size` (0: all)."""
    max_eval = -(-eval_batches * batch_size // BATCH) if eval_batches else 0
    eval_counts = masked_label_counts(eval_dir, max_eval)
    return scores(masked_label_counts(train_dir), eval_counts)
