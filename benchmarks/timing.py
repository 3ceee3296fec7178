"""Interleaved timing for the side-by-side benchmarks (bert-jax vs PyTorch).

Timing the sides one after the other on a shared or drifting machine measures the machine
as much as the code; alternating them call by call makes a slow spell hit both alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def time_interleaved(calls: dict[str, Callable[[], None]], min_iters: int, min_time: float,
                     warmup: int) -> dict[str, list[float]]:
    """Per-call seconds of each side, the sides alternating call by call, until every side
    has `min_iters` calls and `min_time` seconds; `warmup` untimed calls each first."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    while min(len(t) for t in times.values()) < min_iters or min(sum(t) for t in
                                                                 times.values()) < min_time:
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times
