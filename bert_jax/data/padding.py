"""The one padding of a ragged batch: a last batch smaller than the batch size.

Shapes are static under jit, so a short batch is filled up to the batch size with
copies of one of its real rows (real data: no all-padding row reaches the model) that
carry `example_weight` 0, which every loss and metric multiplies by. The pre-training
loader (held-out evaluation, `bert-jax evaluate`) and GLUE's batches (fine-tuning,
prediction) pad this way; `inference.Predictor` plans its own bucketed shapes.
"""

from __future__ import annotations

import numpy as np


def pad_rows(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch's row indices filled up to `size`, and its `example_weight`.

    `rows` are indices of the real rows, where -1 marks a padding slot; the slots past
    its end and the -1 slots take the first real row (row 0 when there is none). The
    weight is 1.0 for a real row and 0.0 for a padding row.
    """
    rows = np.asarray(rows)
    if len(rows) > size:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {size}")
    padded = np.full(size, -1, np.int64)
    padded[:len(rows)] = rows
    real = padded >= 0
    fill = padded[real][0] if real.any() else 0
    return np.where(real, padded, fill), real.astype(np.float32)
