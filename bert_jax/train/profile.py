"""A profiler window: `--config.train.profile=START,STEPS` traces steps START+1 .. START+STEPS.

The trace (jax.profiler: host and device activity, the XLA ops of every step) is written
under `<workdir>/tensorboard/plugins/profile/<time>/<host>.xplane.pb`, beside the run's
scalars, the layout TensorBoard's profile plugin reads: `pip install
tensorboard-plugin-profile`, then `xprof --logdir <workdir>/tensorboard --port 6006` (or
`tensorboard --logdir <workdir>/tensorboard`, Profile tab) and open localhost:6006: trace
viewer, op profile, overview, memory. Only process 0 traces.
"""

from __future__ import annotations

import logging
from typing import Any

import jax

from bert_jax.errors import UserError

log = logging.getLogger(__name__)


def parse_window(text: str) -> tuple[int, int] | None:
    """"START,STEPS" -> (start, steps); "" -> None."""
    text = str(text).strip()
    if not text:
        return None
    try:
        start, steps = (int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--config.train.profile={text!r}: write START,STEPS (e.g. 10,5: "
                        "trace the 5 steps after step 10)") from None
    if start < 0 or steps < 1:
        raise UserError(f"--config.train.profile={text!r}: START must be >= 0 and STEPS >= 1")
    return start, steps


class ProfileWindow:
    """Call `at(step, state)` before each step (with the steps completed so far)."""

    def __init__(self, window: tuple[int, int] | None, log_dir: str) -> None:
        self.window = window if jax.process_index() == 0 else None
        self.log_dir = log_dir
        self.active = False

    def at(self, step: int, state: Any) -> None:
        if self.window is None:
            return
        start, steps = self.window
        if step == start and not self.active:
            jax.block_until_ready(state)  # the window holds only its own steps
            jax.profiler.start_trace(self.log_dir)
            self.active = True
        elif step == start + steps and self.active:
            self.stop(state)

    def stop(self, state: Any = None) -> None:
        if self.active:
            if state is not None:
                jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
            log.info("profile of steps %d-%d written to %s", self.window[0] + 1,
                     sum(self.window), self.log_dir)
