"""The prefetcher: same batches in the same order, a loader state that is that of the
batches consumed (not of those read ahead), errors raised in the loop, a clean stop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bert_jax.data.prefetch import Prefetcher


class CountingLoader:
    """Batch i is {"x": [i, i]}; the state is the number of batches read."""

    def __init__(self, n: int | None = None, fail_at: int | None = None,
                 delay: float = 0.0) -> None:
        self.read, self.n, self.fail_at, self.delay = 0, n, fail_at, delay

    def __iter__(self):
        return self

    def __next__(self):
        if self.read == self.n:
            raise StopIteration
        if self.read == self.fail_at:
            raise ValueError(f"corrupt batch {self.read}")
        time.sleep(self.delay)
        self.read += 1
        return {"x": np.full(2, self.read - 1)}

    def get_state(self):
        return {"read": self.read}


def wait_until(condition, timeout=5.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline
        time.sleep(0.01)


def test_same_batches_and_the_state_of_those_consumed():
    loader = CountingLoader()
    with Prefetcher(loader, put=lambda b: {"x": b["x"] * 10}, depth=2) as batches:
        assert batches.state == {"read": 0}
        for i in range(5):
            assert next(batches)["x"].tolist() == [10 * i, 10 * i]
            # The thread reads ahead (depth 2 queued + 1 in hand) ...
            wait_until(lambda i=i: loader.read == i + 1 + 3)
            # ... but the state to checkpoint is the one right after batch i.
            assert batches.state == {"read": i + 1}


def test_end_errors_and_wait_time():
    with Prefetcher(CountingLoader(n=2)) as batches:
        assert [int(b["x"][0]) for b in batches] == [0, 1]
        with pytest.raises(StopIteration):
            next(batches)
    with Prefetcher(CountingLoader(fail_at=1)) as batches:
        next(batches)
        with pytest.raises(ValueError, match="corrupt batch 1"):  # in the consumer
            next(batches)
    with Prefetcher(CountingLoader(delay=0.05), depth=1) as batches:
        for _ in range(4):
            next(batches)
        assert batches.wait_s > 0.1  # a slow loader shows as data wait


def test_close_stops_a_thread_blocked_on_a_full_queue():
    batches = Prefetcher(CountingLoader(), depth=1)
    wait_until(lambda: batches._queue.full())
    batches.close()
    assert not any(t.name == "bert-jax-prefetch" and t.is_alive()
                   for t in threading.enumerate())
