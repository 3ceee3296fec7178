"""bert_jax.packing: every example exactly once and intact, no row over its length, the
slot map round trip, first-fit-decreasing against a plain reference, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from bert_jax.errors import UserError
from bert_jax.packing import pack


def random_examples(n: int, seed: int, longest: int = 20):
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, 1000, rng.integers(1, longest + 1)).tolist() for _ in range(n)]
    types = [rng.integers(0, 2, len(x)).tolist() for x in ids]
    return ids, types


def reference_ffd(lengths: list[int], capacity: int, max_items: int | None) -> list[list[int]]:
    """First-fit-decreasing written the obvious way: the examples of each row, in order."""
    rows: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # sorted() is stable
        for row in rows:
            if (sum(lengths[j] for j in row) + lengths[i] <= capacity
                    and (max_items is None or len(row) < max_items)):
                row.append(i)
                break
        else:
            rows.append([i])
    return rows


@pytest.mark.parametrize("seed,length,max_examples", [(0, 32, None), (1, 24, 3), (2, 20, 1)])
def test_every_example_once_intact_and_no_row_over_length(seed, length, max_examples):
    ids, types = random_examples(60, seed)
    p = pack(ids, types, length, max_examples=max_examples)
    n_rows, k = p.example_index.shape
    assert p.input_ids.shape == (n_rows, length)
    filled = p.example_index[p.example_index >= 0]
    assert sorted(filled.tolist()) == list(range(60))  # each example exactly once
    if max_examples is not None:
        assert k == max_examples
    # Per row, the examples' tokens fit and do not overlap; the rest is padding.
    assert (np.bincount(p.row, weights=p.length, minlength=n_rows) <= length).all()
    assert ((p.segment_ids > 0).sum(1) == np.bincount(p.row, weights=p.length)).all()
    for i, (x, t) in enumerate(zip(ids, types)):
        r, s, n = p.row[i], p.start[i], len(x)
        assert p.length[i] == n and s + n <= length
        slot = np.flatnonzero(p.example_index[r] == i)
        assert slot.size == 1 and p.cls_positions[r, slot[0]] == s
        np.testing.assert_array_equal(p.input_ids[r, s:s + n], x)
        np.testing.assert_array_equal(p.token_type_ids[r, s:s + n], t)
        np.testing.assert_array_equal(p.position_ids[r, s:s + n], np.arange(n))
        np.testing.assert_array_equal(p.segment_ids[r, s:s + n], slot[0] + 1)
    pad = p.segment_ids == 0
    assert (p.input_ids[pad] == 0).all() and (p.position_ids[pad] == 0).all()
    assert (p.attention_mask == ~pad).all()
    empty = p.example_index < 0
    assert (p.cls_positions[empty] == -1).all()


@pytest.mark.parametrize("seed,length,max_examples", [(3, 32, None), (4, 24, 2), (5, 64, 5)])
def test_rows_are_first_fit_decreasing(seed, length, max_examples):
    ids, types = random_examples(80, seed)
    p = pack(ids, types, length, max_examples=max_examples)
    expected = reference_ffd([len(x) for x in ids], length, max_examples)
    got = [[i for i in row if i >= 0] for row in p.example_index.tolist()]
    assert got == expected


def test_slot_map_round_trip():
    ids, types = random_examples(37, 6)
    p = pack(ids, types, 40, max_examples=4)
    values = np.random.default_rng(0).standard_normal((37, 3)).astype(np.float32)
    slots = p.per_slot(values, fill=np.nan)
    assert slots.shape == (*p.example_index.shape, 3)
    assert np.isnan(slots[p.example_index < 0]).all()
    np.testing.assert_array_equal(p.unpack(slots), values)
    # unpack puts slot outputs back in input order: the example index itself.
    np.testing.assert_array_equal(p.unpack(p.example_index), np.arange(37))
    with pytest.raises(ValueError, match="per slot"):
        p.unpack(values)


def test_deterministic_and_denser_than_one_per_row():
    ids, types = random_examples(200, 7, longest=25)
    a, b = pack(ids, types, 128), pack(ids, types, 128)
    for field in ("input_ids", "token_type_ids", "position_ids", "segment_ids",
                  "cls_positions", "example_index"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    # A row is opened only for an example no earlier row has room for, so every row
    # but the last has less free space than the longest example.
    fill = (a.segment_ids > 0).sum(1)
    longest = max(len(x) for x in ids)
    assert len(fill) < 200 / 2 and (fill[:-1] > 128 - longest).all()


def test_too_long_or_empty_examples_are_errors():
    with pytest.raises(UserError, match="example 1 has 9 tokens, more than the packed row's 8"):
        pack([[1, 2], list(range(9))], [[0, 0], [0] * 9], 8)
    with pytest.raises(UserError, match="example 0 has no tokens"):
        pack([[]], [[]], 8)
    with pytest.raises(UserError, match="max_examples"):
        pack([[1]], [[0]], 8, max_examples=0)


def test_pad_id_and_no_examples():
    p = pack([[5, 6, 7]], [[0, 0, 0]], 6, pad_id=9)
    np.testing.assert_array_equal(p.input_ids, [[5, 6, 7, 9, 9, 9]])
    empty = pack([], [], 8)
    assert empty.input_ids.shape == (0, 8) and empty.unpack(np.zeros((0, 1, 2))).shape == (0, 2)
