"""Stopping on request: Ctrl-C (SIGINT) or SIGTERM (preemption) -> every host saves one step.

    with StopRequest() as stop:
        while ...:
            state = train_step(...)
            step += 1
            if stop.should_stop(step):   # call at every step, on every host
                save(step); raise Stopped(...)

One process: the handlers note the signal; the loop stops after the step in progress.

Several processes (jax.distributed): the hosts must stop at the same step, or those that
stop leave the others waiting in the step's collectives (and a checkpoint is written by
all hosts together). JAX's preemption service agrees on it: its own SIGTERM handler
(installed by `jax.distributed.initialize`) tells the coordination service, which picks
the next step every host can still reach (the largest step any host has reported, plus
one); `multihost_utils.reached_preemption_sync_point(step)` is True at that step on
every host and False at every other. So SIGTERM is left to JAX here, and Ctrl-C is
forwarded to it as a SIGTERM to this process: one path for both signals, whichever
host gets them.

A second Ctrl-C stops at once without saving (KeyboardInterrupt).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax

log = logging.getLogger(__name__)


class StopRequest:
    """Signal handlers for the duration of a `with` block, and the step to stop at."""

    def __init__(self) -> None:
        self.reason: str | None = None  # "SIGINT", "SIGTERM", or the other host's notice
        self._multi = jax.process_count() > 1
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only; nothing to install here
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_signal)
        if not self._multi:
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, save nothing
        self.reason = name
        log.warning("%s: saving after the current step, then stopping (Ctrl-C again stops "
                    "without saving)", name)
        if self._multi:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier

    def should_stop(self, step: int) -> bool:
        """True when the loop is to save `step` (just completed) and stop."""
        if not self._multi:
            return self.reason is not None
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
            self.reason = self.reason or "SIGTERM or Ctrl-C on one of the hosts"
            return True
        return False
