"""Test-server files: per-task prediction TSVs as gluebenchmark.com takes them, and their zip.

    tests = tasks.read_split("RTE", data_dir, "test")
    submission.write_predictions("RTE", [e.guid for e in tests], preds, "submission")
    submission.write_zip("submission", "submission.zip")
    submission.write_submission(summary, "runs/glue")  # a sweep's best runs, every task

Each file has the header `index<TAB>prediction`, one row per test example. Labels are spelt
as the server reads them: text for MNLI, AX, QNLI and RTE (`entailment`, ...), 0/1 for CoLA,
SST-2, MRPC, QQP and WNLI, and a score clipped to [0, 5] for STS-B. MNLI writes MNLI-m.tsv
and MNLI-mm.tsv (one call per test split); AX.tsv holds the MNLI model's predictions.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bert_jax import files
from bert_jax.errors import UserError
from bert_jax.glue.tasks import TASKS, TaskSpec, get_task
from bert_jax.runs import RunDir

log = logging.getLogger(__name__)

# Every file a complete submission holds, in the leaderboard's order.
SUBMISSION_FILES: tuple[str, ...] = tuple(
    name for task in TASKS.values() for name in task.submission.values())


def submission_name(task: str | TaskSpec, split: str | None = None) -> str:
    """The server's file name for a task's test split (`split` needed only for MNLI)."""
    task = get_task(task)
    if split is None:
        if len(task.submission) != 1:
            raise ValueError(f"{task.name} has several test splits; pass split= one of "
                             f"{', '.join(task.submission)}")
        split = next(iter(task.submission))
    if split not in task.submission:
        raise ValueError(f"{task.name} has no test split {split!r}: "
                         f"{', '.join(task.submission)}")
    return task.submission[split]


def format_predictions(task: str | TaskSpec, predictions) -> list[str]:
    """Predictions (label indices, or scores for STS-B) as the server spells them."""
    task = get_task(task)
    preds = np.asarray(predictions)
    if preds.ndim != 1:
        raise ValueError(f"predictions must be 1-D, got shape {preds.shape}")
    if task.labels is None:
        if not np.all(np.isfinite(preds)):
            raise ValueError(f"{task.name} predictions contain NaN or inf")
        return [f"{v:.6g}" for v in np.clip(preds.astype(np.float64), 0.0, 5.0)]
    if len(preds) and not np.issubdtype(preds.dtype, np.integer):
        raise ValueError(f"{task.name} predictions must be label indices (integers), "
                         f"got dtype {preds.dtype}")
    bad = preds[(preds < 0) | (preds >= len(task.labels))]
    if len(bad):
        raise ValueError(f"{task.name} prediction {int(bad[0])} is not a label index "
                         f"in [0, {len(task.labels)})")
    return [task.labels[int(p)] for p in preds]


def write_predictions(task: str | TaskSpec, indices: Sequence[int | str], predictions,
                      out_dir: str | Path, *, split: str | None = None) -> Path:
    """Writes `<out_dir>/<Name>.tsv` (e.g. RTE.tsv, MNLI-mm.tsv) and returns its path.

    `indices` are the test file's own ids (`Example.guid` of a test split).
    """
    task = get_task(task)
    name = submission_name(task, split)
    rows = format_predictions(task, predictions)
    indices = [str(i).strip() for i in indices]
    if len(indices) != len(rows):
        raise ValueError(f"{len(indices)} indices but {len(rows)} predictions for {name}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"{name}: duplicate indices; pass each test example once")
    path = Path(out_dir) / name
    # Atomic: a half-written file never carries the final name.
    files.write_text_atomic(path, "index\tprediction\n" + "".join(
        f"{i}\t{p}\n" for i, p in zip(indices, rows)))
    return path


def write_zip(out_dir: str | Path, zip_path: str | Path | None = None) -> Path:
    """Zips the submission TSVs present in `out_dir` (flat, as the server wants).

    `zip_path` defaults to `<out_dir>/submission.zip`. Missing files are logged: the server
    rejects an incomplete submission.
    """
    out_dir = Path(out_dir)
    zip_path = Path(zip_path) if zip_path is not None else out_dir / "submission.zip"
    present = [n for n in SUBMISSION_FILES if (out_dir / n).is_file()]
    if not present:
        raise UserError(f"no GLUE prediction files in {out_dir} to zip; expected some of "
                        f"{', '.join(SUBMISSION_FILES)} (run with --predict-test)")
    missing = [n for n in SUBMISSION_FILES if n not in present]
    if missing:
        log.warning("the submission lacks %s; the GLUE server needs all %d files",
                    ", ".join(missing), len(SUBMISSION_FILES))
    with (files.atomic_path(zip_path) as tmp,
          zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf):
        for name in present:
            zf.write(out_dir / name, arcname=name)
    return zip_path


def write_submission(summary: dict[str, Any], workdir: str | Path) -> Path:
    """The best run's test predictions of every task -> `<workdir>/submission/*.tsv` and
    `<workdir>/submission.zip`."""
    workdir = Path(workdir)
    out = workdir / "submission"
    for s in summary["tasks"].values():
        entries = json.loads(RunDir(workdir / s["best_run"]).test_predictions.read_text())
        for e in entries:
            spec = get_task(e["task"])
            preds = np.asarray(e["prediction"], np.float64 if spec.is_regression else np.int64)
            write_predictions(spec, e["index"], preds, out, split=e["split"])
    return write_zip(out, workdir / "submission.zip")
