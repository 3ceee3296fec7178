"""The official GLUE metrics (scikit-learn / scipy) and the GLUE score.

    m = metrics.compute("MRPC", predictions, labels)   # {"f1": 88.9, "accuracy": 84.1}
    metrics.main_metric("MRPC", m)                      # 86.5, used to choose the lr
    metrics.glue_score({"CoLA": {...}, "SST-2": {...}, ...})

Every metric is a percentage (0-100), as the leaderboard and the BERT paper print them.
Predictions are label indices (`TaskSpec.labels`) or, for STS-B, scores (clip them to [0, 5]
before: this module scores what it is given). MNLI's two dev sets give `matched_accuracy` and
`mismatched_accuracy`, so the metrics of one run fit in one dict.

The GLUE score is the leaderboard's: the unweighted mean of the nine tasks' scores, where a
task with two metrics (MRPC, STS-B, QQP, and MNLI matched/mismatched) scores their mean. AX
is not averaged. (BERT-large's leaderboard row gives 80.5 this way; counting MNLI-m and
MNLI-mm as two tasks would give 81.1.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from bert_jax.errors import UserError
from bert_jax.glue.tasks import GLUE_TASKS, TaskSpec, get_task

log = logging.getLogger(__name__)

_MNLI_SPLITS = {"dev_matched": "matched_", "test_matched": "matched_",
                "dev_mismatched": "mismatched_", "test_mismatched": "mismatched_"}


def compute(task: str | TaskSpec, predictions, labels, *,
            split: str | None = None) -> dict[str, float]:
    """The official metrics of `task` for one evaluation set, as percentages.

    MNLI needs `split` ("dev_matched" or "dev_mismatched") to name its accuracy.
    """
    task = get_task(task)
    preds, golds = np.asarray(predictions), np.asarray(labels)
    if preds.shape != golds.shape or preds.ndim != 1:
        raise UserError(f"{task.name}: predictions {preds.shape} and labels {golds.shape} "
                        "must be 1-D and of the same length")
    if len(preds) == 0:
        raise UserError(f"{task.name}: no predictions to score (empty evaluation set)")
    if not np.all(np.isfinite(preds.astype(np.float64))):
        raise UserError(f"{task.name}: predictions contain NaN or inf; the run diverged "
                        "(try a lower learning rate)")
    if task.is_regression:
        return {"pearson": 100.0 * _correlation("pearson", preds, golds, task.name),
                "spearman": 100.0 * _correlation("spearman", preds, golds, task.name)}
    preds, golds = preds.astype(np.int64), golds.astype(np.int64)
    accuracy = 100.0 * float(skm.accuracy_score(golds, preds))
    if task.name == "MNLI":
        if split not in _MNLI_SPLITS:
            raise ValueError(f"MNLI metrics need split= one of {sorted(_MNLI_SPLITS)}")
        return {_MNLI_SPLITS[split] + "accuracy": accuracy}
    if task.metrics == ("mcc",):  # CoLA, and AX over its three classes
        return {"mcc": 100.0 * _mcc(preds, golds, task.name)}
    if task.metrics == ("f1", "accuracy"):  # MRPC, QQP: F1 of the positive class "1"
        f1 = skm.f1_score(golds, preds, pos_label=1, average="binary", zero_division=0.0)
        return {"f1": 100.0 * float(f1), "accuracy": accuracy}
    return {"accuracy": accuracy}


def _mcc(preds: np.ndarray, golds: np.ndarray, name: str) -> float:
    # With one predicted (or gold) class the correlation is 0/0; MCC defines it as 0.
    if len(np.unique(preds)) < 2 or len(np.unique(golds)) < 2:
        log.warning("%s: constant predictions or labels; Matthews correlation set to 0", name)
        return 0.0
    return float(skm.matthews_corrcoef(golds, preds))


def _correlation(kind: str, preds: np.ndarray, golds: np.ndarray, name: str) -> float:
    # scipy returns NaN (with a warning) for a constant input; a collapsed regressor
    # scores 0 here, so averages and lr selection stay well defined.
    if np.ptp(preds) == 0 or np.ptp(golds) == 0 or len(preds) < 2:
        log.warning("%s: constant predictions or labels; %s correlation set to 0", name, kind)
        return 0.0
    fn = stats.pearsonr if kind == "pearson" else stats.spearmanr
    return float(fn(preds.astype(np.float64), golds.astype(np.float64))[0])


def main_metric(task: str | TaskSpec, metrics: Mapping[str, float]) -> float:
    """The task's score: the mean of its official metrics (MNLI: of matched and mismatched).

    It is what the GLUE score averages, so choosing the learning rate by it maximises it.
    """
    task = get_task(task)
    missing = [m for m in task.metrics if m not in metrics]
    if missing:
        raise ValueError(f"{task.name} metrics lack {missing}; got {sorted(metrics)}")
    return float(np.mean([metrics[m] for m in task.metrics]))


def glue_score(per_task_metrics: Mapping[str, Mapping[str, float]], *,
               allow_partial: bool = False) -> float:
    """The GLUE benchmark score from {task: metrics}; AX and unknown-to-GLUE keys ignored.

    All nine tasks are needed unless `allow_partial`, which averages those present (then it
    is not comparable with leaderboard scores).
    """
    scores = {}
    for name, metrics in per_task_metrics.items():
        task = get_task(name)
        if task.in_glue_score:
            scores[task.name] = main_metric(task, metrics)
    missing = [t for t in GLUE_TASKS if t not in scores]
    if missing and not (allow_partial and scores):
        raise UserError(f"the GLUE score needs all nine tasks; missing {', '.join(missing)}")
    return float(np.mean(list(scores.values())))
