"""Checkpoints with orbax: the train state plus the data-loader state, resumable.

A checkpoint at step t holds the whole TrainState (params, optimizer state, step,
dropout key) and a JSON `extra` (the loader's position, the schedule phase, ...), so
a restored run continues with exactly the next batch. Orbax writes each checkpoint to
a temporary directory and renames it when complete: a process killed mid-save leaves
no checkpoint that `latest_step` would pick up. The last `keep` are kept.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from bert_jax.errors import UserError
from bert_jax.paths import as_path

log = logging.getLogger(__name__)


class Checkpointer:
    """Saves and restores (TrainState, extra JSON) under `directory/<step>/`."""

    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True) -> None:
        self.directory = as_path(directory)  # gs://... stays a URL
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, extra: dict[str, Any]) -> None:
        """Starts saving (asynchronously); the next save or `wait` waits for it."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra)), force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """The state at `step` (default: the latest), laid out as `abstract_state` says."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise UserError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
        return restored.state, dict(restored.extra)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(directory: str | Path, step: int | None = None) -> tuple[Any, int]:
    """Only the parameters of a checkpoint, as host numpy arrays (for export/evaluation).

    No model or optimizer needs to be built: orbax restores the saved tree as is.
    """
    directory = as_path(directory)
    if not directory.exists():
        raise UserError(f"checkpoint directory not found: {directory}")
    manager = ocp.CheckpointManager(directory)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise UserError(f"no checkpoint in {directory}")
    path = directory / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    # The saved tree's shapes on this process's first device: a checkpoint written by
    # a multi-host or sharded run restores on one machine (export, evaluation).
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          tree)
    restored = checkpointer.restore(path, target)
    manager.close()
    return jax.device_get(restored["params"]), step
