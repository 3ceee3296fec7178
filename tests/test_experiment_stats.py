"""The ablation study's statistics (experiments/stats.py, baseline.py, report.seed_band)
against values computed by hand (closed forms noted beside each)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments import baseline, report, stats

T_975_DF2 = 4.302653  # Student t, 97.5% quantile, 2 degrees of freedom (tables)
T_975_DF1 = 12.706205


def test_t_interval_of_three_values():
    # mean 2, s 1, half-width t(2) * 1 / sqrt(3) = 2.484138
    mean, lo, hi = stats.interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert lo == pytest.approx(2 - T_975_DF2 / math.sqrt(3), abs=1e-5)
    assert hi == pytest.approx(4.484138, abs=1e-5)


def test_t_interval_edge_cases():
    assert stats.interval([0.25, 0.26]) == pytest.approx(
        (0.255, 0.255 - T_975_DF1 * 0.005, 0.255 + T_975_DF1 * 0.005), abs=1e-6)
    mean, lo, hi = stats.interval([7.0])
    assert mean == 7.0 and math.isnan(lo) and math.isnan(hi)
    assert stats.interval([3.0, 3.0, 3.0]) == (3.0, 3.0, 3.0)


def test_welch_equal_variances_has_the_closed_form_p():
    # diff -3, se^2 = 1/3 + 1/3, t = -3 / sqrt(2/3) = -3.674235, df = 4; for 4 df
    # P(|T| < t) = sin(a) (1 + cos(a)^2 / 2) with a = atan(t / 2): p = 0.021312
    test = stats.welch([1, 2, 3], [4, 5, 6])
    assert test.diff == -3.0
    assert test.t == pytest.approx(-3.674235, abs=1e-6)
    assert test.df == pytest.approx(4.0)
    a = math.atan(3.674235 / 2)
    assert test.p == pytest.approx(1 - math.sin(a) * (1 + math.cos(a) ** 2 / 2), abs=1e-6)
    assert test.p == pytest.approx(0.021312, abs=1e-6)


def test_welch_unequal_variances_uses_welch_satterthwaite_df():
    # vx = (5/3)/4, vy = 100/3; t = -17.5 / sqrt(33.75); df = 33.75^2 /
    # (vx^2 / 3 + vy^2 / 2) = 1139.0625 / 555.6134 = 2.050099
    test = stats.welch([1, 2, 3, 4], [10, 20, 30])
    assert test.t == pytest.approx(-17.5 / math.sqrt(33.75))
    assert test.df == pytest.approx(33.75**2 / ((5 / 12) ** 2 / 3 + (100 / 3) ** 2 / 2))
    assert test.df == pytest.approx(2.050099, abs=1e-6)
    assert 0.05 < test.p < 0.1  # between the df=2 (0.0948) and df=3 (0.057) values


def test_welch_degenerate_inputs():
    assert math.isnan(stats.welch([1.0], [2.0, 3.0]).p)
    assert stats.welch([1.0, 1.0], [1.0, 1.0]).p == 1.0
    assert stats.welch([2.0, 2.0], [1.0, 1.0]).p == 0.0


def test_sign_flip_exact_p_values():
    # all 3 differences positive: only the all-plus and all-minus assignments reach
    # |mean| 2: 2 of 8
    assert stats.sign_flip([1, 2, 3]) == 0.25
    # |1 + 1 + 2 + 3| = 7; flipping a subset of sum s gives |7 - 2s| >= 5 for
    # s in {0, 1, 1, 6, 6, 7}: 6 of the 16 assignments
    assert stats.sign_flip([1, -1, 2, 3]) == pytest.approx(6 / 16)
    assert stats.sign_flip([0.5] * 6) == pytest.approx(2 / 64)
    assert math.isnan(stats.sign_flip([]))


def test_verdicts():
    assert stats.verdict([4, 5, 6], [1, 2, 3], higher_is_better=True) == "better"
    assert stats.verdict([4, 5, 6], [1, 2, 3], higher_is_better=False) == "worse"
    assert stats.verdict([1, 2, 3], [1.5, 2.5, 3.5], higher_is_better=True) == "not separable"
    assert stats.verdict([1], [1, 2], higher_is_better=True) == "–"


def test_frequent_token_baseline_scores():
    # train counts [0, 5, 3, 2]: the commonest is id 1; add-one probabilities
    # [1, 6, 4, 3] / 14. Held-out labels: 2 x id 1, 6 x id 2, 2 x id 3.
    out = baseline.scores(np.array([0, 5, 3, 2]), np.array([0, 2, 6, 2]))
    assert out["token_id"] == 1 and out["accuracy"] == 0.2
    expected = -(2 * math.log(6 / 14) + 6 * math.log(4 / 14) + 2 * math.log(3 / 14)) / 10
    assert out["loss"] == pytest.approx(expected) == pytest.approx(1.2292064, abs=1e-6)
    assert (out["train_positions"], out["eval_positions"]) == (10, 10)


def test_trailing_mean_averages_the_last_window_of_steps():
    curve = [{"step": 25, "loss": 8.0}, {"step": 50, "loss": 6.0, "lr": 1.0},
             {"step": 75}, {"step": 100, "loss": 4.0}, {"step": 125, "loss": 1.0}]
    # window 50 steps: (s - 50, s]; the record without a loss is skipped
    assert report.trailing_mean(curve, "loss", 50) == [
        {"step": 25, "loss": 8.0}, {"step": 50, "loss": 7.0},
        {"step": 100, "loss": 4.0}, {"step": 125, "loss": 2.5}]


def test_seed_band_uses_the_steps_every_seed_has():
    curves = [[{"step": 10, "loss": 3.0}, {"step": 20, "loss": 2.0}, {"step": 30, "loss": 1.0}],
              [{"step": 10, "loss": 5.0}, {"step": 20, "loss": 2.0}]]
    steps, mean, lo, hi = report.seed_band(curves, "loss")
    assert steps == [10, 20] and mean == [4.0, 2.0]
    assert lo[0] == pytest.approx(4 - T_975_DF1) and hi[0] == pytest.approx(4 + T_975_DF1)
    assert lo[1] == hi[1] == 2.0  # no spread
    one = report.seed_band(curves[:1], "loss")
    assert one[1] == one[2] == one[3] == [3.0, 2.0, 1.0]  # one seed: no band


def test_p_values_print_as_a_bound_below_a_thousandth():
    # 0.000 would read as "impossible"; a Welch p is never exactly 0 with spread
    assert report._p_text(0.0004) == "p < 0.001"
    assert report._p_text(0.011) == "p 0.011"
    assert report._p_text(0.001) == "p 0.001"


def test_holm_adjusts_step_down_in_input_order():
    # m = 4 tested (nan is not a test): sorted 0.01 x 4 = 0.04, 0.02 x 3 = 0.06,
    # 0.04 x 2 = 0.08, 0.5 x 1 = 0.5
    out = stats.holm([0.04, 0.5, math.nan, 0.01, 0.02])
    assert out[:2] == pytest.approx([0.08, 0.5]) and math.isnan(out[2])
    assert out[3:] == pytest.approx([0.04, 0.06])
    # monotone: 0.01 x 3 = 0.03, then 0.012 x 2 = 0.024 is raised to the 0.03 before it
    assert stats.holm([0.012, 0.01, 0.9]) == pytest.approx([0.03, 0.03, 0.9])
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]  # capped
    assert stats.holm([]) == []


def _row(variant, losses, accuracies):
    runs = {seed: {"eval_mlm_loss": loss, "eval_mlm_accuracy": acc, "steps": 10,
                   "pair_accuracy": None, "glue": {}, "pretrain_minutes": 1.0,
                   "glue_minutes": 0.0}
            for seed, (loss, acc) in enumerate(zip(losses, accuracies))}
    return {"variant": variant, "overrides": "x", "runs": runs}


def test_report_prints_holm_beside_each_verdict(tmp_path):
    # loss: Welch p 0.021312 (the closed form above); accuracy: the same differences x 0.01
    # give the same t, so p 0.021312 too; Holm over the row's 2 tests: 0.043 for both
    base = _row("mlm_nsp", [4, 5, 6], [0.04, 0.05, 0.06])
    row = _row("mlm_only", [1, 2, 3], [0.01, 0.02, 0.03])
    path = tmp_path / "ablation.md"
    hours = {"pretrain": 2.25, "glue": 0.5, "vocab": 0.03, "eval": 0.02}
    report.write_markdown([base, row], [], None, path, hours)
    md = path.read_text()
    assert ("| mlm_only | **better** (Δ -3.000, p 0.021, Holm 0.043, p_flip 0.25) "
            "| **worse** (Δ -3.0, p 0.021, Holm 0.043, p_flip 0.25) |") in md
    assert ("Study time: 2.8 hours of wall clock, summed over every attempt of every stage "
            "in the records: pre-training 2.2 h, GLUE 0.5 h, the rest (eval, vocab) 0.1 h.") in md


def test_mlm_by_piece_counts():
    from experiments import mlm_by_piece

    continuation = np.array([False, False, True, True])  # ids 2, 3 are ## pieces
    labels = np.array([[1, 2, 3], [0, 2, 0]])
    predictions = np.array([[1, 2, 0], [1, 2, 0]])
    weights = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the last slot is padding
    # starts: (0,0) right, (1,0) wrong; ## pieces: (0,1) right, (0,2) wrong, (1,1) right
    assert mlm_by_piece.by_piece(predictions, labels, weights, continuation) == {
        "start": [1, 2], "continuation": [2, 3]}
