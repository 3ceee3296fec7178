"""Checkpoints with orbax: the train state plus the data-loader state, resumable.

A checkpoint at step t holds the whole TrainState (params, optimizer state, step,
dropout key) and a JSON `extra` (the loader's position, the schedule phase, ...), so
a restored run continues with exactly the next batch. Orbax writes each checkpoint to
a temporary directory and renames it when complete: a process killed mid-save leaves
no checkpoint that `latest_step` would pick up. The last `keep` are kept.

A checkpoint can still be damaged later (a data file truncated or deleted by a full
disk, a bad copy, a cleanup script). Restoring (`Checkpointer.restore`,
`restore_params`) takes the newest checkpoint that restores, and logs one line for each
newer one it skipped and why (the root cause, which orbax buries under its own errors);
a resumed run renames the skipped ones `<step>.damaged` (kept for inspection), since it
saves those steps again.
A checkpoint whose shapes disagree with the model is not damaged: that is the user's
config, and it is one UserError, not a fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from bert_jax.errors import UserError
from bert_jax.files import check_writable_dir
from bert_jax.paths import as_path, is_local

log = logging.getLogger(__name__)

DAMAGED_SUFFIX = ".damaged"  # a checkpoint that did not restore is renamed <step>.damaged


def _unused(path: Path) -> Path:
    n = 1
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}{n}")
    return candidate


def root_cause(error: BaseException) -> str:
    """One line for a failed restore: the innermost cause (e.g. tensorstore's
    `Truncated Zstd-compressed stream` in a named file), not orbax's wrappers."""
    while error.__cause__ is not None or (error.__context__ is not None
                                          and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def verify_readable(item: Path, batch: int = 64) -> None:
    """Reads every stored value of a checkpoint item (an OCDBT database), `batch` at a
    time, waiting for each read to finish; raises the first error.

    Orbax reads all arrays at once on an asyncio loop: on a damaged file the first
    failed read ends the loop while hundreds of others are still in flight, and each
    of those then prints `RuntimeError: Event loop is closed` from tensorstore's
    threads, burying the cause. Reading here first, with no read left pending, turns
    the damage into one exception naming the file; orbax then only sees sound items
    (its metadata read opens every array at once too, so this comes first).
    """
    import tensorstore as ts

    if not (item / "manifest.ocdbt").exists():
        return  # not an OCDBT item: orbax's own errors are direct
    # A local directory, or a URL (gs://...) that tensorstore opens the same way.
    base = str(item) if "://" in str(item) else f"file://{Path(item).absolute()}"
    store = ts.KvStore.open({"driver": "ocdbt", "base": f"{base}/"}).result()
    keys = store.list().result()
    for start in range(0, len(keys), batch):
        reads = [store.read(key) for key in keys[start:start + batch]]
        errors = []
        for read in reads:  # wait for all, so no read outlives this function
            try:
                read.result()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


def _saved_tree(item: Path) -> Any:
    """The saved tree's metadata (shape, dtype per leaf) of a StandardSave item. The
    handler, not StandardCheckpointer: that one looks for a step's metadata file in the
    item directory and warns (via absl) on every call that it does not exist."""
    metadata = ocp.StandardCheckpointHandler().metadata(item)
    return getattr(metadata, "tree", metadata)


def check_params_match(saved_params: Any, params: Any, where: Path) -> None:
    """A UserError naming the first parameter whose saved shape differs from the model's
    (a config that disagrees with the checkpoint: resuming or exporting it is wrong)."""
    saved = {jax.tree_util.keystr(k): tuple(v.shape)
             for k, v in jax.tree_util.tree_leaves_with_path(saved_params)}
    wanted = {jax.tree_util.keystr(k): tuple(v.shape)
              for k, v in jax.tree_util.tree_leaves_with_path(params)}
    for name in sorted(saved.keys() | wanted.keys()):
        if saved.get(name) != wanted.get(name):
            have = saved.get(name, "nothing")
            want = wanted.get(name, "nothing")
            raise UserError(f"checkpoint {where} holds params{name} of shape {have} but the "
                            f"model config has {want}: use the model config the run was "
                            "started with (its config.json), or a new --workdir")


def _restore_newest(directory: Path, steps: list[int], step: int | None,
                    restore: Callable[[int], Any]) -> tuple[Any, int, list[int]]:
    """`restore(s)` for the newest s of `steps` that restores (only `step` if given).
    Returns (what restore returned, s, the newer steps skipped as damaged)."""
    if step is not None and step not in steps:
        have = ", ".join(map(str, steps)) or "none"
        raise UserError(f"no checkpoint at step {step} in {directory} (steps there: {have})")
    if not steps:
        raise UserError(f"no checkpoint in {directory}")
    failures: list[str] = []
    skipped: list[int] = []
    for s in [step] if step is not None else sorted(steps, reverse=True):
        try:
            return restore(s), s, skipped
        except UserError:
            raise
        except Exception as e:  # a damaged checkpoint: say why, try the one before
            reason = root_cause(e)
            if step is not None:
                raise UserError(f"checkpoint {directory / str(s)} does not restore: "
                                f"{reason}") from None
            log.warning("skipping checkpoint %s: it does not restore (%s)",
                        directory / str(s), reason)
            failures.append(f"step {s}: {reason}")
            skipped.append(s)
    raise UserError(f"no checkpoint in {directory} restores ({'; '.join(failures)})")


class Checkpointer:
    """Saves and restores (TrainState, extra JSON) under `directory/<step>/`."""

    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True) -> None:
        self.directory = as_path(directory)  # gs://... stays a URL
        if is_local(directory):
            check_writable_dir(self.directory, "checkpoint directory", create=False)
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
        """The state at `step` (default: the newest that restores), laid out as
        `abstract_state` says."""
        def restore(s: int) -> tuple[Any, dict]:
            path = self.directory / str(s)
            verify_readable(path / "state")
            check_params_match(_saved_tree(path / "state")["params"],
                               abstract_state.params, path)
            restored = self.manager.restore(s, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
            return restored.state, dict(restored.extra)

        restored, _, skipped = _restore_newest(self.directory, self.all_steps(), step, restore)
        if skipped and jax.process_index() == 0:
            # Out of the way: the resumed run saves those steps again.
            for s in skipped:
                aside = _unused(self.directory / f"{s}{DAMAGED_SUFFIX}")
                (self.directory / str(s)).rename(aside)
                log.warning("moved the damaged checkpoint to %s", aside)
        if skipped:
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                multihost_utils.sync_global_devices("damaged checkpoints moved aside")
            self.manager.reload()
        return restored

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(directory: str | Path, step: int | None = None) -> tuple[Any, int]:
    """Only the parameters of a checkpoint, as host numpy arrays (for export/evaluation):
    the newest that restores, or `step`. No model or optimizer needs to be built: orbax
    restores the saved tree as is."""
    directory = as_path(directory)
    if not directory.is_dir():
        raise UserError(f"checkpoint directory not found: {directory}")
    manager = ocp.CheckpointManager(directory)
    try:
        steps = list(manager.all_steps())
    finally:
        manager.close()
    handler = ocp.StandardCheckpointHandler()
    # The saved tree's shapes on this process's first device: a checkpoint written by
    # a multi-host or sharded run restores on one machine (export, evaluation).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def restore(s: int) -> Any:
        item = directory / str(s) / "state"
        verify_readable(item)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              _saved_tree(item))
        restored = handler.restore(item, args=ocp.args.StandardRestore(target))
        return jax.device_get(restored["params"])

    try:
        params, step, _ = _restore_newest(directory, steps, step, restore)
        return params, step
    finally:
        handler.close()
