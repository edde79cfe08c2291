"""harness.changepoint: E-divisive change points on synthetic nightly series with fixed seeds."""
from __future__ import annotations

import numpy as np
import pytest

from harness.changepoint import ChangePoint, detect_change_points


def nightly(n: int, seed: int, cv: float = 0.02) -> np.ndarray:
    """n nightly medians around 100 ms with lognormal noise of about cv."""
    return 100.0 * np.random.default_rng(seed).lognormal(0.0, cv, n)


def test_flat_series_has_no_change_points() -> None:
    series = [nightly(60, seed) for seed in range(30)]
    # At sig_level 0.01 about 1 flat series in 100 shows a (tiny) change; allow one in 30.
    with_change = [s for s, x in enumerate(series) if detect_change_points(x, seed=s)]
    assert len(with_change) <= 1, with_change
    # With the smallest change that matters to a nightly report, none at all.
    assert all(detect_change_points(x, seed=s, min_rel_change=0.03) == [] for s, x in enumerate(series))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_step_found_near_its_index(seed: int) -> None:
    x = nightly(60, seed)
    x[30:] *= 1.10
    cps = detect_change_points(x, seed=seed)
    assert len(cps) == 1
    cp = cps[0]
    assert abs(cp.index - 30) <= 2
    assert cp.rel_change == pytest.approx(0.10, abs=0.03)
    assert cp.after_median > cp.before_median
    assert cp.p_value <= 0.01 and cp.score > 0


@pytest.mark.parametrize("seed", [3, 4])
def test_two_steps_both_found(seed: int) -> None:
    x = nightly(60, seed)
    x[20:] *= 1.10
    x[40:] *= 0.92
    cps = detect_change_points(x, seed=seed)
    assert len(cps) == 2
    assert abs(cps[0].index - 20) <= 2 and abs(cps[1].index - 40) <= 2
    assert cps[0].rel_change > 0.05 and cps[1].rel_change < -0.04


def test_deterministic_given_seed() -> None:
    x = nightly(60, 5)
    x[25:] *= 1.06
    assert detect_change_points(x, seed=11) == detect_change_points(x, seed=11)
    assert isinstance(detect_change_points(x, seed=11)[0], ChangePoint)


def test_min_rel_change_drops_small_steps() -> None:
    x = nightly(60, 6, cv=0.005)
    x[30:] *= 1.02  # a clear but small 2% step
    assert [cp.index for cp in detect_change_points(x, seed=0)] == [30]
    assert detect_change_points(x, seed=0, min_rel_change=0.03) == []


def test_short_series_and_bad_input() -> None:
    assert detect_change_points([100.0] * 9) == []  # shorter than two segments of min_size 5
    with pytest.raises(ValueError, match="NaN"):
        detect_change_points([1.0, float("nan")] * 10)
    with pytest.raises(ValueError, match="permutations"):
        detect_change_points(nightly(30, 0), permutations=50)
    with pytest.raises(ValueError, match="min_size"):
        detect_change_points(nightly(30, 0), min_size=1)
