"""Random numbers for the data pipeline, reproducible from integers alone.

Two kinds, both seeded only by tuples of integers (never by a running global state), so
that a result depends on *what* is computed, not on which process computes it or when:

* `Uniforms`: a buffered stream of U[0, 1) floats from a numpy PCG64 generator, for the
  sequential decisions of instance creation (a few draws per instance; drawing them in
  blocks makes each draw a list lookup instead of a numpy call).
* `hash_uniform`: counter-based randoms, `f(key, counter)` with the splitmix64 mixer,
  vectorised over whole batches. Masking uses it: the masks of an example depend only
  on its key (e.g. (seed, epoch, example index)), so a resumed loader redraws the
  same masks without replaying any generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_STREAM = np.uint64(0xD1B54A32D192ED03)  # odd: counters map to distinct offsets
_TO_UNIT = 2.0 ** -53


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-mixing uint64 -> uint64 hash."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        z = np.asarray(x, np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def derive_key(*parts: int | np.ndarray) -> np.ndarray:
    """A uint64 key (or array of keys) from integers, e.g. (seed, epoch, example index).

    Array parts broadcast, so `derive_key(seed, epoch, indices)` gives one key per index.
    """
    key = np.zeros((), np.uint64)
    for part in parts:
        key = splitmix64(key ^ splitmix64(np.asarray(part).astype(np.uint64)))
    return key


def hash_bits(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """64 random bits for each (key, counter) pair (arrays broadcast)."""
    with np.errstate(over="ignore"):
        mixed = np.asarray(keys, np.uint64) + np.asarray(counters, np.uint64) * _STREAM
    return splitmix64(mixed)


def hash_uniform(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """U[0, 1) float64 for each (key, counter) pair (arrays broadcast)."""
    return (hash_bits(keys, counters) >> np.uint64(11)).astype(np.float64) * _TO_UNIT


class Uniforms:
    """A stream of U[0, 1) floats seeded by integers; `u()` draws one, `randint(lo, hi)`
    one integer in [lo, hi] inclusive (as Python's `random.randint`).

    `u` is the `__next__` of an iterator over pre-drawn blocks, a C-level call: the
    instance planner draws a few per instance and this keeps them cheap.
    """

    _BLOCK = 8192

    def __init__(self, *seed: int) -> None:
        self._gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(seed))))
        self.u = chain.from_iterable(self._blocks()).__next__

    def _blocks(self) -> Iterator[list[float]]:
        while True:
            yield self._gen.random(self._BLOCK).tolist()

    def randint(self, lo: int, hi: int) -> int:
        return lo + int(self.u() * (hi - lo + 1))

    def permutation(self, n: int) -> np.ndarray:
        """A random permutation of range(n) (use a stream for this or for `u`, not both)."""
        return self._gen.permutation(n)
