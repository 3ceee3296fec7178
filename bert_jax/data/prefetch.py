"""`Prefetcher`: the next batches read, masked and put on the devices by a background thread.

    batches = Prefetcher(loader, put=lambda b: sharding.global_batch(b, mesh), depth=2)
    for step in ...:
        state, metrics = train_step(state, next(batches))
        save(state, loader_state=batches.state)   # the state after the batches consumed

The thread runs `depth` batches ahead of the training loop (plus the one it is making), so
the loader's numpy work and the host-to-device copies overlap the device's step. Each
batch travels with the loader state right after it was read: `state` is that of the last
batch handed out, not of what the thread has read ahead, so a checkpoint resumes exactly
at the next batch the step would have consumed. numpy releases the GIL in its array
loops, so the thread mostly runs beside the loop rather than taking turns with it.

With `workers=N` the batches are made by N worker processes (one core each) instead of
the thread, for when masking needs more than a core (whole-word dynamic masking at 512
tokens for 8 accelerators): a loader batch is a pure function of (epoch, position), so the
workers make `loader.batch(e, p)` for the positions of `loader.plan()`, at most 2N ahead,
and the thread puts them on the devices in order. Workers are spawned, not forked (a fork of
a process running JAX's threads is unsafe); each maps the shards itself.

`wait_s` adds up the seconds `next` waited for a batch: the loop's data wait.
"""

from __future__ import annotations

import collections
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

_END = object()

# In a worker process: the loader it makes batches with (set once, by the pool's initializer).
_worker_loader: Any = None


def _init_worker(loader: Any) -> None:
    global _worker_loader
    _worker_loader = loader


def _worker_batch(epoch: int, position: int) -> dict:
    return _worker_loader.batch(epoch, position)


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Iterates `put(batch)` for the loader's batches, `depth` of them made ahead."""

    def __init__(self, loader: Iterator[dict], put: Callable[[dict], Any] = lambda b: b,
                 depth: int = 2, get_state: Callable[[], Any] | None = None,
                 workers: int = 0) -> None:
        if depth < 1 or workers < 0:
            raise ValueError(f"prefetch depth {depth} must be >= 1 and workers {workers} >= 0")
        self._loader, self._put, self._workers = loader, put, workers
        self._get_state = get_state or getattr(loader, "get_state", lambda: None)
        self.state = self._get_state()
        self.wait_s = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, name="bert-jax-prefetch",
                                        daemon=True)
        self._thread.start()

    def _offer(self, item: Any) -> bool:
        """Puts `item` on the queue unless closed first; False once closed."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _source(self) -> Iterator[tuple[dict, Any]]:
        """(batch, loader state after it): read here, or made by the worker processes."""
        if not self._workers:
            for batch in self._loader:
                yield batch, self._get_state()
            return
        context = multiprocessing.get_context("spawn")
        with context.Pool(self._workers, initializer=_init_worker,
                          initargs=(self._loader,)) as pool:
            plan = iter(self._loader.plan())
            pending: collections.deque = collections.deque()
            while True:
                while len(pending) < 2 * self._workers:
                    item = next(plan, None)
                    if item is None:
                        break
                    epoch, position, state = item
                    pending.append((pool.apply_async(_worker_batch, (epoch, position)), state))
                if not pending:
                    return
                result, state = pending.popleft()
                yield result.get(), state

    def _work(self) -> None:
        source = self._source()
        try:
            for batch, state in source:
                if not self._offer((self._put(batch), state)):
                    return
            self._offer(_END)
        except BaseException as e:  # handed to the consumer, raised there
            self._offer(_Failure(e))
        finally:
            source.close()  # stops the workers

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        item = self._queue.get()
        self.wait_s += time.perf_counter() - start
        if item is _END:
            self._queue.put(_END)  # stays exhausted
            raise StopIteration
        if isinstance(item, _Failure):
            self._queue.put(item)
            raise item.error
        batch, self.state = item
        return batch

    def close(self) -> None:
        """Stops the thread (it may be blocked on a full queue: drain it)."""
        self._closed.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
