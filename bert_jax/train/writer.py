"""Where training metrics go: JSON lines, TensorBoard event files, the console.

Each record is `{"step": t, "split": "train"|"eval", ...metrics}`, one line of
`<workdir>/metrics.jsonl` (appended, so a resumed run continues the same file) and
scalars `<split>/<name>` in `<workdir>/tensorboard/`. Only process 0 writes.

The workdir may be a URL (gs://...; see paths.py). Object stores cannot append, so there
the file is written whole at each record (the lines so far are kept in memory; a file of
a few thousand records); a local file is appended to, line-buffered.

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

from bert_jax.paths import is_local
from bert_jax.runs import RunDir

# Wall-clock fields; the step-time split (step_s, data_wait_s, device_s) comes from the
# prefetching loop (pretrain.step_times).
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
        self.path = RunDir(workdir).metrics
        self.tb = None
        self.file = None
        self.lines: list[str] = []  # for a URL: the whole file, rewritten at each record
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if is_local(workdir):
                # line-buffered: a crash loses nothing
                self.file = open(self.path, "a", buffering=1)  # noqa: SIM115
            elif self.path.exists():
                self.lines = self.path.read_text().splitlines(keepends=True)
            if tensorboard:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(str(RunDir(workdir).tensorboard))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        record |= {k: _clean(v) for k, v in sorted(metrics.items())}
        line = json.dumps(record) + "\n"
        if self.file is not None:
            self.file.write(line)
        else:
            self.lines.append(line)
            self.path.write_text("".join(self.lines))
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{split}/{k}", float(v), int(step))

    def close(self) -> None:
        if self.enabled:
            if self.file is not None:
                self.file.close()
            if self.tb is not None:
                self.tb.close()


def read_metrics(workdir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (those of one split if given), in order.

    A resumed run may have logged some steps twice (after its last checkpoint, before a
    kill); the later record of a step wins.
    """
    path = RunDir(workdir).metrics
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
