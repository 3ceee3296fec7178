"""GLUE metrics against hand-checked values, scikit-learn/scipy and published baselines;
the GLUE score against the BERT paper's leaderboard result; edge cases."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from conftest import shared_file
from scipy import stats
from sklearn import metrics as skm

from bert_jax.errors import UserError
from bert_jax.glue import metrics as glue_metrics
from bert_jax.glue import tasks

# 3 true positives, 1 false negative, 1 false positive, 2 true negatives.
LABELS = [1, 1, 1, 1, 0, 0, 0]
PREDS = [1, 1, 1, 0, 1, 0, 0]


def test_hand_checked_binary_metrics():
    cola = glue_metrics.compute("CoLA", PREDS, LABELS)
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (6 - 1) / sqrt(4*4*3*3)
    assert cola == {"mcc": pytest.approx(100 * 5 / 12)}
    mrpc = glue_metrics.compute("MRPC", PREDS, LABELS)
    assert mrpc == {"f1": pytest.approx(75.0), "accuracy": pytest.approx(100 * 5 / 7)}
    assert glue_metrics.compute("sst2", PREDS, LABELS) == {"accuracy": pytest.approx(100 * 5 / 7)}


def test_against_sklearn_on_random_inputs():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    assert glue_metrics.compute("CoLA", preds, labels)["mcc"] == pytest.approx(
        100 * skm.matthews_corrcoef(labels, preds))
    qqp = glue_metrics.compute("QQP", preds, labels)
    assert qqp["f1"] == pytest.approx(100 * skm.f1_score(labels, preds))
    assert qqp["accuracy"] == pytest.approx(100 * skm.accuracy_score(labels, preds))
    for task in ("RTE", "QNLI", "WNLI"):
        assert glue_metrics.compute(task, preds, labels) == {
            "accuracy": pytest.approx(100 * np.mean(preds == labels))}
    # AX: the leaderboard's R3, Matthews correlation over MNLI's three classes.
    labels3, preds3 = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    assert glue_metrics.compute("AX", preds3, labels3)["mcc"] == pytest.approx(
        100 * skm.matthews_corrcoef(labels3, preds3))


def test_correlations():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert glue_metrics.compute("STS-B", x, 6 - x) == {
        "pearson": pytest.approx(-100.0), "spearman": pytest.approx(-100.0)}
    squares = glue_metrics.compute("STS-B", x, x**2)  # monotone but not linear
    assert squares["spearman"] == pytest.approx(100.0)
    assert squares["pearson"] == pytest.approx(100 * np.corrcoef(x, x**2)[0, 1])
    rng = np.random.default_rng(1)
    labels = rng.uniform(0, 5, 200)
    preds = np.clip(labels + rng.normal(0, 1, 200), 0, 5)
    preds[:20] = 5.0  # ties, ranked as scipy ranks them
    got = glue_metrics.compute("stsb", preds, labels)
    assert got["pearson"] == pytest.approx(100 * stats.pearsonr(preds, labels)[0])
    assert got["spearman"] == pytest.approx(100 * stats.spearmanr(preds, labels)[0])


def test_mnli_names_matched_and_mismatched():
    assert glue_metrics.compute("MNLI", [0, 1, 2, 2], [0, 1, 2, 0], split="dev_matched") == {
        "matched_accuracy": 75.0}
    assert glue_metrics.compute("MNLI", [0, 1], [0, 2], split="dev_mismatched") == {
        "mismatched_accuracy": 50.0}
    with pytest.raises(ValueError, match="split"):
        glue_metrics.compute("MNLI", [0], [0])


def test_majority_baselines_on_real_dev_sets():
    """The majority-class baselines published with GLUE: MRPC 81.2 F1 / 68.4 acc, WNLI 56.3."""
    glue_dir = shared_file("glue", "MRPC", "dev.tsv").parent.parent
    mrpc = [e.label for e in tasks.read_split("MRPC", glue_dir, "dev")]
    got = glue_metrics.compute("MRPC", np.ones(len(mrpc), int), mrpc)
    assert round(got["f1"], 1) == 81.2 and round(got["accuracy"], 1) == 68.4
    shared_file("glue", "WNLI", "dev.tsv")
    wnli = [e.label for e in tasks.read_split("WNLI", glue_dir, "dev")]
    assert round(glue_metrics.compute("WNLI", np.zeros(len(wnli), int), wnli)["accuracy"],
                 2) == 56.34


def test_constant_predictions_give_zero_not_nan(caplog):
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")  # no RuntimeWarning / ConstantInputWarning leaks out
        assert glue_metrics.compute("CoLA", [1, 1, 1, 1], [1, 0, 1, 0]) == {"mcc": 0.0}
        assert glue_metrics.compute("STS-B", [2.5, 2.5, 2.5], [1.0, 3.0, 4.5]) == {
            "pearson": 0.0, "spearman": 0.0}
        assert glue_metrics.compute("STS-B", [1.0, 2.0], [3.0, 3.0])["pearson"] == 0.0
        # F1 with no predicted positive is 0 (precision 0/0), not an error.
        assert glue_metrics.compute("MRPC", [0, 0, 0], [1, 0, 1])["f1"] == 0.0
    assert "Matthews correlation set to 0" in caplog.text
    assert "pearson correlation set to 0" in caplog.text


def test_bad_input():
    with pytest.raises(UserError, match="empty"):
        glue_metrics.compute("RTE", [], [])
    with pytest.raises(UserError, match="same length"):
        glue_metrics.compute("RTE", [0, 1], [0])
    with pytest.raises(UserError, match="NaN"):
        glue_metrics.compute("STS-B", [1.0, np.nan], [1.0, 2.0])
    with pytest.raises(UserError, match="unknown GLUE task"):
        glue_metrics.compute("SQuAD", [0], [0])


def test_main_metric_is_the_task_score():
    assert glue_metrics.main_metric("MRPC", {"f1": 90.0, "accuracy": 86.0}) == 88.0
    assert glue_metrics.main_metric("CoLA", {"mcc": 55.0}) == 55.0
    assert glue_metrics.main_metric(
        "MNLI", {"matched_accuracy": 84.0, "mismatched_accuracy": 83.0}) == 83.5
    with pytest.raises(ValueError, match="lack"):
        glue_metrics.main_metric("STS-B", {"pearson": 88.0})


# BERT-large on the GLUE leaderboard (test sets); the BERT paper reports its score as 80.5.
BERT_LARGE = {
    "CoLA": {"mcc": 60.5}, "SST-2": {"accuracy": 94.9},
    "MRPC": {"f1": 89.3, "accuracy": 85.4}, "STS-B": {"pearson": 87.6, "spearman": 86.5},
    "QQP": {"f1": 72.1, "accuracy": 89.3},
    "MNLI": {"matched_accuracy": 86.7, "mismatched_accuracy": 85.9},
    "QNLI": {"accuracy": 92.7}, "RTE": {"accuracy": 70.1}, "WNLI": {"accuracy": 65.1},
    "AX": {"mcc": 39.6},
}


def test_glue_score_reproduces_the_leaderboard():
    assert round(glue_metrics.glue_score(BERT_LARGE), 1) == 80.5
    without_ax = {k: v for k, v in BERT_LARGE.items() if k != "AX"}
    assert glue_metrics.glue_score(without_ax) == glue_metrics.glue_score(BERT_LARGE)


def test_glue_score_needs_every_task():
    partial = {"cola": {"mcc": 50.0}, "mrpc": {"f1": 90.0, "accuracy": 80.0}}
    with pytest.raises(UserError, match="missing SST-2, STS-B, QQP, MNLI, QNLI, RTE, WNLI"):
        glue_metrics.glue_score(partial)
    assert glue_metrics.glue_score(partial, allow_partial=True) == 67.5
    with pytest.raises(UserError):
        glue_metrics.glue_score({}, allow_partial=True)
