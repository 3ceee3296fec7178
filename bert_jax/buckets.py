"""The fixed shapes inference pads every batch to, so jit compiles a known, bounded set.

A batch's length is padded to the smallest of `Buckets.lengths` that holds its longest
text, its row count to one of `Buckets.batch_sizes` (longer lists are chunked), and for
fill-mask its [MASK] count to one of `Buckets.masks`. Packed rows (`packing=True`) are
`pack_length` tokens long (longer if a text needs it) and hold at most `pack_slots[-1]`
texts, their slot count padded to one of `pack_slots`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

# On CPU a bert-base forward is ~20% slower per sequence at 32 x 128 tokens than at
# 8 x 128 (XLA's matmuls lose efficiency once activations outgrow the caches), so
# CPU calls are capped at this many padded tokens unless `Buckets.max_tokens` is set.
CPU_MAX_TOKENS = 2048


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The fixed shapes every batch is padded to (values above the model's limit are dropped).

    `lengths` are sequence lengths, `batch_sizes` row counts, `masks` the number of
    [MASK] slots fill-mask projects onto the vocabulary; a batch with more [MASK]s than
    the largest slot count projects every position of its length bucket instead.
    `max_tokens` caps rows x length per call (the smallest batch size always fits).
    Packed rows (`bert_jax/packing.py`) are `pack_length` long (or the length bucket of
    the longest text, if longer) and hold at most `pack_slots[-1]` texts; a batch's slot
    count is padded to one of `pack_slots`.
    """

    lengths: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    masks: tuple[int, ...] = (8,)
    max_tokens: int | None = None
    pack_length: int = 128
    pack_slots: tuple[int, ...] = (8, 32)

    def for_model(self, max_length: int) -> Buckets:
        """The buckets a model with `max_length` positions can use; its limit is one."""
        lengths = sorted({n for n in self.lengths if n < max_length} | {max_length})
        return dataclasses.replace(self, lengths=tuple(lengths))

    @property
    def max_length(self) -> int:
        return self.lengths[-1]

    def length(self, n: int) -> int:
        """The smallest length bucket that holds `n` tokens."""
        return next(b for b in self.lengths if b >= n)

    def pack_row_length(self, longest: int) -> int:
        """The length of packed rows whose longest text has `longest` tokens."""
        return self.length(max(longest, min(self.pack_length, self.max_length)))

    def example_slots(self, n: int) -> int:
        """How many example slots a batch of packed rows with at most `n` texts a row has."""
        return next(k for k in sorted(self.pack_slots) if k >= n)

    def mask_slots(self, n: int, length: int) -> int:
        """How many [MASK] positions a batch with at most `n` of them per text projects."""
        return next((m for m in self.masks if n <= m < length), length)

    def chunks(self, n: int, length: int | None = None) -> Iterator[tuple[int, int]]:
        """Splits `n` rows into (rows, padded rows) pieces with padded rows in batch_sizes
        (those within `max_tokens` at `length`).

        A remainder is padded up to the next batch size when that at most doubles it
        (7 -> 8); otherwise the largest batch size below it is taken (10 -> 8 + 1 + 1),
        so padding never costs more than the rows themselves.
        """
        sizes = sorted(self.batch_sizes)
        if self.max_tokens is not None and length is not None:
            sizes = [s for s in sizes if s * length <= self.max_tokens] or sizes[:1]
        while n > 0:
            up = next((s for s in sizes if s >= n), None)
            if up is not None and up <= 2 * n:
                yield n, up
                return
            down = max(s for s in sizes if s <= n)
            yield down, down
            n -= down

    def max_compilations(self, task: str, packing: bool = False) -> int:
        """An upper bound on the compilations `task` can cause (per distinct static option:
        top_k for fill-mask, layer and pooling for embed), packed or not."""
        per_shape = len(self.lengths) * len(self.batch_sizes)
        if packing:
            per_shape *= len(self.pack_slots)
        if task == "fill_mask":
            return per_shape * (len(self.masks) + 1)
        if task == "attention":
            return len(self.lengths)  # one text at a time
        return per_shape
