"""harness.stats: summaries, robust sigma, bootstrap CI of the median ratio, Mann-Whitney U."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness import stats


def test_summarize_known_values() -> None:
    s = stats.summarize([2, 4, 4, 4, 5, 5, 7, 9])
    assert s.n == 8
    assert s.median == 4.5
    assert s.mean == 5.0
    assert s.std == pytest.approx(math.sqrt(32 / 7))  # sample std, ddof=1
    assert (s.min, s.max) == (2.0, 9.0)
    assert s.q1 == 4.0 and s.q3 == 5.5 and s.iqr == 1.5  # linear interpolation
    assert s.cv == pytest.approx(math.sqrt(32 / 7) / 5.0)
    assert s.mad == 0.5
    assert s.robust_sigma == pytest.approx(1.4826 * 0.5)
    assert s.to_dict()["median"] == 4.5


def test_summarize_single_sample_has_zero_spread() -> None:
    s = stats.summarize([12.5])
    assert (s.n, s.median, s.std, s.cv, s.iqr, s.mad) == (1, 12.5, 0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, float("inf")]])
def test_summarize_rejects_empty_and_non_finite(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="empty|NaN"):
        stats.summarize(bad)


def test_robust_sigma_ignores_an_outlier_and_matches_normal_sigma() -> None:
    assert stats.robust_sigma([1, 2, 3, 4, 1000]) == stats.robust_sigma([1, 2, 3, 4, 5])
    x = np.random.default_rng(3).normal(50.0, 2.0, 20_000)
    assert stats.robust_sigma(x) == pytest.approx(2.0, rel=0.03)


def test_bootstrap_ci_contains_true_ratio_and_is_deterministic() -> None:
    rng = np.random.default_rng(42)
    baseline = rng.lognormal(math.log(100.0), 0.05, 30)  # true median 100
    candidate = rng.lognormal(math.log(110.0), 0.05, 30)  # true median 110
    ci = stats.bootstrap_ratio_ci(baseline, candidate, seed=7)
    assert ci.ci_low < 1.10 < ci.ci_high
    assert ci.ci_low > 1.0  # the 10% change is resolved
    assert ci.ratio == pytest.approx(np.median(candidate) / np.median(baseline))
    assert ci.method == "percentile" and ci.n_resamples == stats.DEFAULT_N_RESAMPLES
    again = stats.bootstrap_ratio_ci(baseline, candidate, seed=7)
    assert (again.ci_low, again.ci_high) == (ci.ci_low, ci.ci_high)
    other = stats.bootstrap_ratio_ci(baseline, candidate, seed=8)
    assert (other.ci_low, other.ci_high) != (ci.ci_low, ci.ci_high)


def test_bootstrap_ci_coverage_near_nominal() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    trials = 150
    for i in range(trials):
        b = rng.lognormal(math.log(100.0), 0.05, 20)
        c = rng.lognormal(math.log(105.0), 0.05, 20)
        ci = stats.bootstrap_ratio_ci(b, c, n_resamples=1000, seed=i)
        covered += ci.ci_low <= 1.05 <= ci.ci_high
    assert 0.88 <= covered / trials <= 0.995


def test_bootstrap_ci_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="positive"):
        stats.bootstrap_ratio_ci([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="confidence"):
        stats.bootstrap_ratio_ci([1.0, 2.0], [1.0, 2.0], confidence=1.5)
    with pytest.raises(ValueError, match="empty"):
        stats.bootstrap_ratio_ci([], [1.0])


def test_mwu_min_achievable_p_is_one_over_binomial() -> None:
    assert stats.mwu_min_achievable_p(4, 4) == pytest.approx(1 / 70)
    assert stats.mwu_min_achievable_p(5, 5) == pytest.approx(1 / 252)
    assert stats.mwu_min_achievable_p(3, 7) == stats.mwu_min_achievable_p(7, 3)
    assert stats.min_samples_for_alpha(0.01) == 5  # 1/70 > 0.01 > 1/252
    assert stats.min_samples_for_alpha(0.05) == 4  # 1/20 = 0.05 is not < 0.05; 1/70 is
    with pytest.raises(ValueError):
        stats.mwu_min_achievable_p(0, 5)


def test_mann_whitney_reaches_exactly_the_minimum_p_on_complete_separation() -> None:
    baseline = [10.0, 10.1, 10.2, 10.3, 10.4]
    candidate = [11.0, 11.1, 11.2, 11.3, 11.4]
    p_min = stats.mwu_min_achievable_p(5, 5)
    assert stats.mann_whitney_greater(baseline, candidate) == pytest.approx(p_min)
    assert stats.mann_whitney_less(candidate, baseline) == pytest.approx(p_min)
    assert stats.mann_whitney_less(baseline, candidate) == pytest.approx(1.0)


def test_mann_whitney_direction_on_seeded_data() -> None:
    rng = np.random.default_rng(1)
    b = rng.lognormal(math.log(100.0), 0.03, 20)
    c = rng.lognormal(math.log(106.0), 0.03, 20)
    assert stats.mann_whitney_greater(b, c) < 0.001
    assert stats.mann_whitney_less(b, c) > 0.99
