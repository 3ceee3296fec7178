"""Where training metrics go: JSON lines, TensorBoard event files, the console.

Each record is `{"step": t, "split": "train"|"eval", ...metrics}`, one line of
`<workdir>/metrics.jsonl` (appended, so a resumed run continues the same file) and
scalars `<split>/<name>` in `<workdir>/tensorboard/`. Only process 0 writes.

Every field but the `TIMING_FIELDS` (wall-clock time and throughput) is a function of
the config and the data alone: two runs of the same command write equal records once
those are dropped (`without_timing`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax

# The step-time split (step_s, data_wait_s, device_s) is logged once the prefetching
# loader is in; named here already so that `without_timing` stays right either way.
TIMING_FIELDS = frozenset({"time", "seq_per_s", "tokens_per_s", "mfu", "step_s", "data_wait_s",
                           "device_s"})


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    """A metrics record without the fields that depend on the machine's speed."""
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


def _clean(value: Any) -> Any:
    value = float(value)
    return None if math.isnan(value) else value


class MetricWriter:
    def __init__(self, workdir: str | Path, tensorboard: bool = True) -> None:
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self.tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a", buffering=1)  # line-buffered: a crash loses nothing
            if tensorboard:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        record |= {k: _clean(v) for k, v in sorted(metrics.items())}
        self.file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{split}/{k}", float(v), int(step))

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def read_metrics(workdir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (those of one split if given), in order.

    A resumed run may have logged some steps twice (after its last checkpoint, before a
    kill); the later record of a step wins.
    """
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    by_key: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if split is None or record.get("split") == split:
            by_key[(record["split"], record["step"])] = record
    return sorted(by_key.values(), key=lambda r: (r["step"], r["split"]))
