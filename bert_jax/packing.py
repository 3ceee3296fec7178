"""Sequence packing: several short examples in one row, and their outputs back in order.

GLUE sentences are ~10-25 tokens, so a row of 128 holds mostly padding; packed, one
row holds several examples and the model sees no padding it does not need. The model
keeps them apart (`model.BertModel`): `segment_ids` restrict attention to a token's
own example, `position_ids` restart at 0 per example, token types stay per example,
and `cls_positions` pool one [CLS] per example.

    packed = pack(ids, type_ids, length=128, max_examples=16)
    logits = module.apply({"params": p}, **packed.model_inputs())  # [R, K, C]
    per_example = packed.unpack(logits)                             # [N, C], input order

Rows are filled first-fit-decreasing: examples sorted by length (longest first, ties
in input order), each put into the first row with room (and a free slot). It is the
densest of the simple packers (without a slot limit, at most 11/9 of the optimal row
count plus one); greedy in-order filling instead leaves a row's tail empty whenever
the next example does not fit. The order it scrambles costs nothing: `unpack`
restores it. It is deterministic: the same examples give the same rows. To vary rows
between epochs, shuffle the examples before packing (ties break in input order) and
the rows after.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from bert_jax.errors import UserError

# The model's keyword inputs for packed rows (every head takes them): the padded rows'
# three, and what packing adds.
PACKED_INPUTS = ("position_ids", "segment_ids", "cls_positions")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", *PACKED_INPUTS)


@dataclasses.dataclass(frozen=True)
class Packed:
    """R rows of `length` tokens holding N examples, at most K per row.

    Per row: `input_ids`, `token_type_ids`, `position_ids` (0.. per example, 0 in
    padding), `segment_ids` (k + 1 for the row's slot k, 0 in padding), all [R, length]
    int32; `cls_positions` [R, K]: where slot k's example starts (its [CLS]), -1 for an
    empty slot; `example_index` [R, K]: which input example fills slot k, -1 if none.
    Per example: `row`, `start` and `length` [N]: where its tokens lie.
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    position_ids: np.ndarray
    segment_ids: np.ndarray
    cls_positions: np.ndarray
    example_index: np.ndarray
    row: np.ndarray
    start: np.ndarray
    length: np.ndarray

    @property
    def attention_mask(self) -> np.ndarray:
        """[R, length] 1 for real tokens, 0 for padding."""
        return (self.segment_ids > 0).astype(np.int32)

    def model_inputs(self) -> dict[str, np.ndarray]:
        """The keyword arguments of a model call on the packed rows (every head)."""
        return {k: getattr(self, k) for k in MODEL_INPUTS}

    def unpack(self, values: np.ndarray) -> np.ndarray:
        """Per-slot outputs [R, K, ...] -> per-example outputs [N, ...] in input order."""
        values = np.asarray(values)
        if values.shape[:2] != self.example_index.shape:
            raise ValueError(f"values of shape {values.shape} are not per slot "
                             f"{self.example_index.shape}")
        filled = self.example_index >= 0
        out = np.empty((len(self.row), *values.shape[2:]), values.dtype)
        out[self.example_index[filled]] = values[filled]
        return out

    def per_slot(self, values: np.ndarray, fill: float = 0) -> np.ndarray:
        """Per-example values [N, ...] (labels, weights) -> [R, K, ...], `fill` in empty
        slots: the inverse of `unpack`."""
        values = np.asarray(values)
        out = np.full((*self.example_index.shape, *values.shape[1:]), fill, values.dtype)
        filled = self.example_index >= 0
        out[filled] = values[self.example_index[filled]]
        return out


def pack(input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]],
         length: int, *, max_examples: int | None = None, pad_id: int = 0) -> Packed:
    """Packs tokenised examples (each with its [CLS] and [SEP]s, already truncated) into
    rows of `length` tokens, at most `max_examples` per row (K; None: no limit, K is the
    most any row got). Rows are filled first-fit-decreasing (see the module docstring).
    An example longer than `length` is an error: truncate when tokenising."""
    lengths = np.fromiter((len(x) for x in input_ids), np.int64, len(input_ids))
    if len(token_type_ids) != len(lengths) or any(
            len(t) != n for t, n in zip(token_type_ids, lengths)):
        raise ValueError("input_ids and token_type_ids differ in shape")
    if max_examples is not None and max_examples < 1:
        raise UserError(f"max_examples must be at least 1, got {max_examples}")
    too_long = np.flatnonzero(lengths > length)
    if too_long.size:
        i = int(too_long[0])
        raise UserError(f"example {i} has {lengths[i]} tokens, more than the packed row's "
                        f"{length}: truncate the examples to at most {length} tokens")
    if lengths.size and lengths.min() < 1:
        raise UserError(f"example {int(np.argmin(lengths))} has no tokens")

    row, slot, start = _first_fit_decreasing(lengths, length, max_examples)
    n_rows = int(row.max()) + 1 if row.size else 0
    k = max_examples or (int(slot.max()) + 1 if slot.size else 1)

    # Every token at once: its row, its column, its position within its example.
    token_row = np.repeat(row, lengths)
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    within = np.arange(int(lengths.sum())) - offsets
    column = np.repeat(start, lengths) + within

    def scatter(values: np.ndarray, fill: int) -> np.ndarray:
        out = np.full((n_rows, length), fill, np.int32)
        out[token_row, column] = values
        return out

    def flat(xs: Sequence[Sequence[int]]) -> np.ndarray:
        return np.fromiter(itertools.chain.from_iterable(xs), np.int32, len(within))

    cls_positions = np.full((n_rows, k), -1, np.int32)
    cls_positions[row, slot] = start
    example_index = np.full((n_rows, k), -1, np.int32)
    example_index[row, slot] = np.arange(len(lengths))
    return Packed(
        input_ids=scatter(flat(input_ids), pad_id),
        token_type_ids=scatter(flat(token_type_ids), 0),
        position_ids=scatter(within, 0),
        segment_ids=scatter(np.repeat(slot + 1, lengths), 0),
        cls_positions=cls_positions, example_index=example_index,
        row=row.astype(np.int32), start=start.astype(np.int32),
        length=lengths.astype(np.int32))


def _first_fit_decreasing(lengths: np.ndarray, capacity: int, max_items: int | None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, slot, start) of each item: first-fit over items sorted longest first.

    A max-tree over the rows' free space finds the first row with room in O(log N): a
    leaf per possible row (N items never need more than N rows), each inner node the
    largest free space below it; a row holding `max_items` items is closed (free -1)."""
    n = len(lengths)
    size = 1 << max(0, (n - 1).bit_length())
    free = [capacity] * (2 * size)  # Python lists: scalar access is ~10x numpy's
    count = [0] * size
    row, slot, start = (np.zeros(n, np.int64) for _ in range(3))
    for i in np.argsort(-lengths, kind="stable").tolist():
        need = int(lengths[i])
        node = 1
        while node < size:  # leftmost leaf with room: the first row that fits
            node = 2 * node if free[2 * node] >= need else 2 * node + 1
        r = node - size
        row[i], slot[i], start[i] = r, count[r], capacity - free[node]
        count[r] += 1
        free[node] = -1 if count[r] == max_items else free[node] - need
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return row, slot, start
