"""Packed GLUE batches: several examples in one row for fine-tuning, evaluation and prediction.

GLUE rows padded to 128 tokens are mostly padding (SST-2 and CoLA sentences are ~10-25
tokens), so `--config.packing=True` puts several examples in each row instead
(`bert_jax/packing.py`; the model keeps them apart with segment ids, per-example
positions and one pooled [CLS] per example), and the classifier returns logits per
example slot.

    for batch in packed.train_batches(train, 32, slots=16, seed=1, multiple=4): ...
    p = packed.pack_features(dev, slots=16)
    for batch in packed.row_batches(p, 64, multiple=8): ...   # then p.unpack(logits)

Training keeps the recipe: a step takes the same `batch_size` examples, in the same
seeded order, as the padded path (`features.batch_rows`), so the step count, warmup,
schedule and the loss (a mean over the batch's examples) are unchanged; only how the
examples are laid out differs. A step's rows are `max_seq_length` long with `slots`
example slots each (K, fixed per run), and its row count is padded up to a multiple of
`row_multiple(batch_size)` (about batch_size / 8), so a run compiles a handful of
shapes. Evaluation packs a whole split at once (denser: first-fit-decreasing over all
of it) and runs its rows in batches of the eval batch size, the last one padded the
same way. Padding rows are `data.padding.pad_rows`'s (copies of a real row with
`example_weight` 0): they weigh nothing in the loss and their logits are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from bert_jax.data.padding import pad_rows
from bert_jax.glue.features import batch_rows
from bert_jax.packing import Packed, pack

# Example slots per packed row (configs/glue.py's `packing_slots`, `classifier.classify`'s
# default): a row of 128 holds up to ~30 of SST-2's shortest sentences, but capped at 16
# the first-fit rows come out nearly as few (3.98 against 3.80 rows a step on SST-2's
# first 8,000 examples), and the model computes its last layer and classifier at fewer
# empty slots.
DEFAULT_SLOTS = 16


def row_multiple(batch_size: int, data_parallel: int = 1) -> int:
    """Packed batches of `batch_size` examples (or rows) have a multiple of this many
    rows: batch_size / 8 rounded up, and a multiple of the data-parallel size (the rows
    split evenly over the devices)."""
    return _round_up(_round_up(batch_size, 8) // 8, data_parallel)


def pack_features(features: dict[str, np.ndarray], slots: int,
                  length: int | None = None) -> Packed:
    """Featurized examples (`features.featurize`: padded rows, `attention_mask` marking
    their tokens) packed into rows of `length` tokens (default: the rows' own width) with
    at most `slots` examples each."""
    lengths = features["attention_mask"].sum(axis=1)
    ids, types = ([row[:n] for row, n in zip(features[k], lengths)]
                  for k in ("input_ids", "token_type_ids"))
    return pack(ids, types, length or features["input_ids"].shape[1], max_examples=slots)


def train_batches(features: dict[str, np.ndarray], batch_size: int, *, slots: int,
                  seed: int, multiple: int) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of packed training batches: each holds the `batch_size` examples that
    `features.batches(..., seed=seed, drop_remainder=True)` would, packed into rows of
    the features' width, with `labels` per slot [R, K] and `example_weight` per row; R is
    padded up to a multiple of `multiple` (at most `batch_size`)."""
    for rows in batch_rows(len(features["input_ids"]), batch_size, seed=seed,
                           drop_remainder=True):
        packed = pack_features({k: v[rows] for k, v in features.items()}, slots)
        labels = packed.per_slot(features["labels"][rows])
        size = min(batch_size, _round_up(len(packed.input_ids), multiple))
        index, weight = pad_rows(np.arange(len(packed.input_ids)), size)
        batch = {k: v[index] for k, v in packed.model_inputs().items()}
        yield {**batch, "labels": labels[index], "example_weight": weight}


def row_batches(packed: Packed, size: int, *, multiple: int
                ) -> Iterator[dict[str, np.ndarray]]:
    """`packed`'s rows in order, `size` at a time, the last batch padded up to a
    multiple of `multiple` rows; `example_weight` is 0 on the padding rows, whose
    outputs the caller drops before `packed.unpack`."""
    inputs = packed.model_inputs()
    n = len(packed.input_ids)
    for start in range(0, n, size):
        rows = np.arange(start, min(n, start + size))
        index, weight = pad_rows(rows, min(size, _round_up(len(rows), multiple)))
        yield {**{k: v[index] for k, v in inputs.items()}, "example_weight": weight}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
