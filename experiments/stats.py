"""Statistics over pre-training seeds: t intervals, a test against the baseline, verdicts.

The study's unit of replication is the pre-training seed: one number per seed (held-out
MLM loss, a task's dev score averaged over its fine-tuning seeds). With so few seeds
(3 by default) the tests are chosen to be able to reject at all:

  interval(xs)          mean and two-sided 95% Student-t interval, `mean ± t(n-1) s/√n`
  welch(xs, ys)         Welch's t-test (unequal variances, Welch–Satterthwaite df),
                        two-sided; the verdict's test
  sign_flip(diffs)      exact paired sign-flip (permutation) test of paired differences;
                        reported beside Welch, not used for the verdict: with n pairs its
                        smallest p-value is 2/2^n (0.25 for 3 seeds), so it cannot reject
                        at 0.05 below 6 seeds
  verdict(xs, ys, ...)  "better", "worse" or "not separable" at level `alpha`
  holm(ps)              Holm–Bonferroni adjusted p-values of one family of tests: the
                        report shows them beside each variant's verdicts (the family: that
                        variant's metrics), so a rejection that one of several looks would
                        make by chance can be told apart

    interval([1.0, 2.0, 3.0])        # (2.0, -0.484, 4.484)
    welch([1, 2, 3], [4, 5, 6]).p    # 0.0213
    holm([0.01, 0.04, 0.03])         # [0.03, 0.06, 0.06]
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sp

ALPHA = 0.05  # two-sided, per comparison; holm() gives the family-wise view beside it


def interval(xs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the two-sided Student-t interval of the mean; one value gives
    (x, nan, nan)."""
    x = np.asarray(xs, float)
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(sp.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


@dataclasses.dataclass(frozen=True)
class Test:
    diff: float  # mean(xs) - mean(ys)
    t: float
    df: float
    p: float


def welch(xs: Sequence[float], ys: Sequence[float]) -> Test:
    """Welch's two-sided t-test of mean(xs) == mean(ys); p is nan below 2 values a side,
    and 0 or 1 when both sides have no spread (equal means: 1)."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Test(diff, math.nan, math.nan, math.nan)
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se2 = vx + vy
    if se2 == 0:
        return Test(diff, math.copysign(math.inf, diff) if diff else 0.0, math.nan,
                    0.0 if diff else 1.0)
    t = diff / math.sqrt(se2)
    df = se2**2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    return Test(diff, float(t), float(df), float(2 * sp.t.sf(abs(t), df)))


def sign_flip(diffs: Sequence[float]) -> float:
    """Exact two-sided p-value of the paired sign-flip test: the share of the 2^n sign
    assignments whose |mean| is at least the observed |mean|."""
    d = np.asarray(diffs, float)
    if d.size == 0:
        return math.nan
    observed = abs(d.mean())
    flips = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    means = np.abs(flips @ d) / d.size
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def verdict(xs: Sequence[float], ys: Sequence[float], *, higher_is_better: bool,
            alpha: float = ALPHA) -> str:
    """xs (a variant) against ys (the baseline): "better" / "worse" when Welch's test
    rejects equal means at `alpha`, else "not separable"; "–" without enough seeds."""
    test = welch(xs, ys)
    if math.isnan(test.p):
        return "–"
    if test.p >= alpha:
        return "not separable"
    return "better" if (test.diff > 0) == higher_is_better else "worse"


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: the k-th smallest of m
    is multiplied by m - k + 1, then made non-decreasing and capped at 1. Rejecting where
    the adjusted p < alpha keeps the family-wise error rate at alpha. nan (an untested
    comparison) stays nan and does not count in m."""
    out = [math.nan] * len(ps)
    tested = sorted((p, i) for i, p in enumerate(ps) if not math.isnan(p))
    running = 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - k) * p))
        out[i] = running
    return out
