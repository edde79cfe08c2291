"""harness.compare: latency and memory verdicts; harness.thresholds: thresholds and their overrides."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from harness import compare as cmp
from harness import thresholds as thr
from harness.compare import (
    IMPROVEMENT,
    INCONCLUSIVE,
    NO_CHANGE,
    REGRESSION,
    UNSTABLE,
    Verdict,
    compare_latency,
    compare_memory,
)
from harness.thresholds import Thresholds, parse_threshold_overrides, resolve_thresholds

MIB = 1024 * 1024


def run(median_ms: float, sigma: float, n: int, seed: int) -> np.ndarray:
    """n lognormal latency samples with the given true median and log-space sigma."""
    return np.random.default_rng(seed).lognormal(math.log(median_ms), sigma, n)


# Ten accepted nightly medians scattered by about +/-0.4% around 100 ms.
QUIET_HISTORY = [100.0 * f for f in (1.0, 1.004, 0.997, 1.002, 0.999, 1.006, 0.995, 1.001, 1.003, 0.998)]
BASELINE = run(100.0, 0.02, 20, seed=1)


def test_regression() -> None:
    v = compare_latency(BASELINE, run(110.0, 0.02, 20, seed=2), QUIET_HISTORY)
    assert v.verdict == REGRESSION
    assert v.ratio == pytest.approx(np.median(run(110.0, 0.02, 20, seed=2)) / np.median(BASELINE))
    assert 1.0 + thr.DEFAULT_MIN_EFFECT < v.ci_low < v.ratio < v.ci_high
    assert v.p_value < thr.DEFAULT_ALPHA
    assert (v.n_baseline, v.n_candidate, v.n_history) == (20, 20, 10)
    assert v.noise_gate is not None and v.history_shift > v.noise_gate
    assert "beyond min_effect" in v.reason


def test_improvement() -> None:
    v = compare_latency(BASELINE, run(90.0, 0.02, 20, seed=3), QUIET_HISTORY)
    assert v.verdict == IMPROVEMENT
    assert v.ci_high < 1.0 - thr.DEFAULT_MIN_EFFECT
    assert v.p_value < thr.DEFAULT_ALPHA


def test_no_change_with_equivalence() -> None:
    v = compare_latency(BASELINE, run(100.0, 0.02, 20, seed=4), QUIET_HISTORY)
    assert v.verdict == NO_CHANGE
    assert 1.0 - thr.DEFAULT_MIN_EFFECT <= v.ci_low <= v.ci_high <= 1.0 + thr.DEFAULT_MIN_EFFECT
    assert "CI within" in v.reason


def test_significant_but_small_change_is_no_change() -> None:
    b = run(100.0, 0.005, 200, seed=6)
    v = compare_latency(b, run(101.0, 0.005, 200, seed=5), QUIET_HISTORY)
    assert v.p_value < 1e-6 and v.ci_low > 1.0
    assert v.verdict == NO_CHANGE
    assert "smaller than min_effect" in v.reason


def test_change_within_nightly_noise_is_inconclusive() -> None:
    wide_history = [100.0 * f for f in (1.0, 1.05, 0.95, 1.03, 0.97, 1.06, 0.94, 1.02, 0.98, 1.0)]
    candidate = run(106.0, 0.02, 20, seed=7)
    v = compare_latency(BASELINE, candidate, wide_history)
    assert v.verdict == INCONCLUSIVE
    assert v.p_value < thr.DEFAULT_ALPHA and v.ratio > 1.0 + thr.DEFAULT_MIN_EFFECT
    assert v.history_shift < v.noise_gate
    assert "nightly noise" in v.reason
    # The same data without history (a one-off comparison) is a regression, and says the gate was skipped.
    alone = compare_latency(BASELINE, candidate, [])
    assert alone.verdict == REGRESSION and "skipped" in alone.reason and alone.noise_gate is None


def test_ci_straddling_min_effect_is_inconclusive() -> None:
    v = compare_latency(run(100.0, 0.08, 8, seed=9), run(106.0, 0.08, 8, seed=8), QUIET_HISTORY)
    assert v.verdict == INCONCLUSIVE
    assert abs(v.ratio - 1.0) >= thr.DEFAULT_MIN_EFFECT
    assert v.ci_low < 1.0 < v.ci_high and v.p_value >= thr.DEFAULT_ALPHA
    assert "more samples" in v.reason


def test_too_few_samples_is_inconclusive() -> None:
    v = compare_latency(run(100.0, 0.02, 3, 1), run(110.0, 0.02, 3, 2), QUIET_HISTORY)
    assert v.verdict == INCONCLUSIVE and "too few samples" in v.reason
    assert v.ci_low is None and v.p_value is None and v.ratio > 1.0


def test_mwu_gate_blocks_tests_that_cannot_reach_alpha() -> None:
    th = Thresholds(min_samples=2)
    # Complete separation with 4 + 4 samples: the best p is 1/70 > 0.01, so no verdict.
    v = compare_latency([100.0, 100.5, 101.0, 101.5], [120.0, 120.5, 121.0, 121.5], QUIET_HISTORY, th)
    assert v.verdict == INCONCLUSIVE and "cannot reach" in v.reason and "take >= 5" in v.reason
    # With 5 + 5 the same separation is reachable (1/252 < 0.01) and is a regression.
    v5 = compare_latency(
        [100.0, 100.5, 101.0, 101.5, 100.2], [120.0, 120.5, 121.0, 121.5, 120.2], QUIET_HISTORY, th
    )
    assert v5.verdict == REGRESSION
    assert v5.p_value == pytest.approx(1 / 252)


def test_unstable_on_throttling_or_high_cv() -> None:
    # A throttled run whose CI does not lie wholly beyond min_effect is not judged.
    v = compare_latency(BASELINE, run(103.0, 0.02, 20, seed=2), QUIET_HISTORY, throttled=True)
    assert v.verdict == UNSTABLE and "throttling" in v.reason
    assert v.ci_low < 1.0 + thr.DEFAULT_MIN_EFFECT
    assert v.ci_low is not None  # the numbers are still recorded for the report
    noisy = compare_latency(BASELINE, run(100.0, 0.25, 20, seed=10), QUIET_HISTORY)
    assert noisy.verdict == UNSTABLE and "candidate CV" in noisy.reason
    # The same noisy run is judged when the cell's cv_max is raised.
    relaxed = compare_latency(BASELINE, run(100.0, 0.25, 20, seed=10), QUIET_HISTORY, Thresholds(cv_max=0.5))
    assert relaxed.verdict != UNSTABLE


def test_noisy_run_far_beyond_the_threshold_is_a_regression() -> None:
    # A CPU-starved candidate: 100x slower and very noisy (CV far over cv_max), as seen by a user:
    # baseline 39.8 ms, candidate ~4,115 ms. The whole CI lies beyond 1 + min_effect: REGRESSION.
    base = run(39.8, 0.03, 20, seed=21)
    starved = run(4115.0, 0.35, 20, seed=22)
    history = [0.398 * h for h in QUIET_HISTORY]
    v = compare_latency(base, starved, history)
    assert v.verdict == REGRESSION, v.reason
    assert "candidate CV" in v.reason and "beyond doubt" in v.reason
    assert v.ci_low > 1.0 + thr.DEFAULT_MIN_EFFECT and v.p_value < thr.DEFAULT_ALPHA
    # Without the exception the same cell was UNSTABLE: the CV really is over cv_max.
    assert float(np.std(starved) / np.mean(starved)) > thr.DEFAULT_CV_MAX
    # Throttled as well: still a REGRESSION, and the reason says the device throttled.
    hot = compare_latency(base, starved, history, throttled=True)
    assert hot.verdict == REGRESSION and "throttling" in hot.reason and "beyond doubt" in hot.reason
    # The mirror image: a noisy run far faster is an IMPROVEMENT.
    fast = compare_latency(run(100.0, 0.3, 20, seed=23), run(20.0, 0.3, 20, seed=24), QUIET_HISTORY)
    assert fast.verdict == IMPROVEMENT and fast.ci_high < 1.0 - thr.DEFAULT_MIN_EFFECT


def test_noisy_run_keeps_the_history_gate() -> None:
    # Beyond doubt within the run, but the nightly history swings by +/-40%: held at INCONCLUSIVE.
    wild = [100.0 * f for f in (1.0, 1.4, 0.6, 1.3, 0.7, 1.35, 0.65, 1.2, 0.8, 1.0)]
    v = compare_latency(BASELINE, run(160.0, 0.3, 20, seed=25), wild)
    assert v.verdict == INCONCLUSIVE and "nightly noise" in v.reason and "CV" in v.reason
    assert v.ci_low > 1.0 + thr.DEFAULT_MIN_EFFECT


def test_noisy_run_with_ci_straddling_the_threshold_stays_unstable() -> None:
    v = compare_latency(BASELINE, run(106.0, 0.25, 20, seed=26), QUIET_HISTORY)
    assert v.verdict == UNSTABLE and "candidate CV" in v.reason
    assert v.ci_low < 1.0 + thr.DEFAULT_MIN_EFFECT < v.ci_high  # the CI straddles the boundary
    # The same change measured quietly would be judged (not UNSTABLE).
    assert compare_latency(BASELINE, run(106.0, 0.02, 20, seed=26), QUIET_HISTORY).verdict == REGRESSION


def test_empty_samples_raise() -> None:
    with pytest.raises(ValueError, match="both sides"):
        compare_latency([], [1.0, 2.0])


def test_history_uses_last_k() -> None:
    # An old regime far away, then ten quiet nights: only the last history_k count.
    history = [200.0] * 30 + QUIET_HISTORY
    v = compare_latency(BASELINE, run(110.0, 0.02, 20, seed=2), history)
    assert v.n_history == thr.DEFAULT_HISTORY_K and v.verdict == REGRESSION


def test_verdict_round_trips_through_json() -> None:
    v = compare_latency(BASELINE, run(110.0, 0.02, 20, seed=2), QUIET_HISTORY, Thresholds(cv_max=0.2))
    data = json.loads(json.dumps(v.to_dict()))
    assert data["thresholds"]["cv_max"] == 0.2
    back = Verdict.from_dict(data)
    assert back == v
    with pytest.raises(ValueError, match="unknown verdict field"):
        Verdict.from_dict({**data, "colour": "red"})
    with pytest.raises(ValueError, match="unknown verdict"):
        Verdict.from_dict({**data, "verdict": "MAYBE"})


def test_thresholds_validate() -> None:
    with pytest.raises(ValueError, match="alpha"):
        Thresholds(alpha=0.0)
    with pytest.raises(ValueError, match="min_samples"):
        Thresholds(min_samples=1)
    assert Thresholds().memory_abs_bytes == 10 * MIB


# --- memory -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("baseline_bytes", "delta_bytes", "expected"),
    [
        # 100 MiB: 2% is 2 MiB, so the 10 MiB floor applies.
        (100 * MIB, 10 * MIB - 1, NO_CHANGE),
        (100 * MIB, 10 * MIB, REGRESSION),
        (100 * MIB, -(10 * MIB - 1), NO_CHANGE),
        (100 * MIB, -10 * MIB, IMPROVEMENT),
        # 1000 MiB: 2% is 20 MiB, larger than 10 MiB, so 20 MiB applies.
        (1000 * MIB, 20 * MIB - 1, NO_CHANGE),
        (1000 * MIB, 15 * MIB, NO_CHANGE),
        (1000 * MIB, 20 * MIB, REGRESSION),
        (1000 * MIB, -20 * MIB, IMPROVEMENT),
    ],
)
def test_memory_thresholds_at_the_edges(baseline_bytes: int, delta_bytes: int, expected: str) -> None:
    v = compare_memory([baseline_bytes] * 3, [baseline_bytes + delta_bytes] * 3)
    assert v.verdict == expected, v.reason
    assert v.metric == "peak_memory_bytes" and v.p_value is None


def test_memory_uses_medians() -> None:
    # One outlier peak does not move the median.
    v = compare_memory([500 * MIB] * 3, [500 * MIB, 500 * MIB, 900 * MIB])
    assert v.verdict == NO_CHANGE and v.candidate_median == 500 * MIB
    with pytest.raises(ValueError, match="both sides"):
        compare_memory([], [1])


# --- overrides --------------------------------------------------------------------------------

RAW_OVERRIDES = [
    {"match": {"device": "android:.*"}, "set": {"cv_max": 0.15}},
    {"match": {"device": "android:.*", "variant": r"\+winograd"}, "set": {"cv_max": 0.2, "min_effect": 0.05}},
    {"match": {"workload": "e2e"}, "set": {"min_samples": 8}},
]


def test_override_resolution_later_wins() -> None:
    overrides = parse_threshold_overrides(RAW_OVERRIDES)
    host = resolve_thresholds({"device": "host", "workload": "unet_iteration", "variant": "+winograd"}, overrides)
    assert host == Thresholds()
    phone = resolve_thresholds({"device": "android:R58M", "workload": "unet_iteration", "variant": "baseline"}, overrides)
    assert phone.cv_max == 0.15 and phone.min_effect == thr.DEFAULT_MIN_EFFECT
    wino = resolve_thresholds({"device": "android:R58M", "workload": "e2e", "variant": "+winograd"}, overrides)
    assert (wino.cv_max, wino.min_effect, wino.min_samples) == (0.2, 0.05, 8)
    assert isinstance(wino.min_samples, int)


def test_override_regex_must_match_the_whole_value() -> None:
    overrides = parse_threshold_overrides([{"match": {"device": "android"}, "set": {"cv_max": 0.3}}])
    assert resolve_thresholds({"device": "android:R58M"}, overrides).cv_max == thr.DEFAULT_CV_MAX
    assert resolve_thresholds({"device": "android"}, overrides).cv_max == 0.3
    base = replace(Thresholds(), alpha=0.05)
    assert resolve_thresholds({"device": "ios:1"}, overrides, base=base).alpha == 0.05


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"match": {}, "set": {}}, "must be a list"),
        ([{"match": {"device": ".*"}, "set": {"cv_maks": 0.2}}], r"unknown threshold field.*cv_max"),
        ([{"match": {"phone": ".*"}, "set": {"cv_max": 0.2}}], r"unknown cell field.*device"),
        ([{"match": {"device": "(unclosed"}, "set": {"cv_max": 0.2}}], "not a valid regex"),
        ([{"match": {"device": ".*"}, "set": {"cv_max": "high"}}], "must be a number"),
        ([{"match": {"device": ".*"}, "set": {"min_samples": 7.5}}], "whole number"),
        ([{"match": {"device": ".*"}, "set": {"alpha": 2.0}}], "alpha must be"),
        ([{"match": {"device": ".*"}}], "missing 'set'"),
        ([{"match": {"device": ".*"}, "set": {"cv_max": 0.2}, "when": "night"}], "unknown key"),
    ],
)
def test_override_parse_errors(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_threshold_overrides(raw)


def test_override_on_field_missing_from_cell_key() -> None:
    overrides = parse_threshold_overrides([{"match": {"options_hash": "ab.*"}, "set": {"cv_max": 0.2}}])
    with pytest.raises(ValueError, match="options_hash"):
        resolve_thresholds({"device": "host"}, overrides)


# --- drift-aware history gate -----------------------------------------------------------------

# Five nights at 100 ms, then a 10% step: five nights at 110 ms (the same +/-0.4% scatter).
STEP_FACTORS = (1.0, 1.004, 0.997, 1.002, 0.999)
STEPPED_HISTORY = [100.0 * f for f in STEP_FACTORS] + [110.0 * f for f in STEP_FACTORS[::-1]]


def test_history_gate_centres_after_the_step_and_pools_sigma() -> None:
    flat = cmp.history_gate(STEPPED_HISTORY)  # the stationary gate: no change points given
    assert flat.step is None and flat.centre == pytest.approx(105.0, abs=0.5)
    assert flat.sigma > 5.0  # MAD is about half the step: sigma inflated to ~7 ms
    gate = cmp.history_gate(STEPPED_HISTORY, [5], labels=[f"n{i:02d}" for i in range(10)])
    assert gate.step == "run n05" and gate.n_after == 5 and gate.n == 10 and gate.n_sigma == 10
    assert gate.centre == pytest.approx(110.0 * 1.0, abs=0.2)
    assert gate.sigma < 0.5  # the scatter within the segments only (~0.3 ms), not the step
    assert "centre after the step at run n05" in gate.note
    # Without a step the two gates agree.
    assert cmp.history_gate(QUIET_HISTORY) == cmp.history_gate(QUIET_HISTORY, [])


def test_history_gate_windows_and_falls_back_on_a_short_last_segment() -> None:
    # The change point lies before the window (history_k = 5): the window is one segment, stationary.
    assert cmp.history_gate(STEPPED_HISTORY, [5], history_k=5).step is None
    assert cmp.history_gate(STEPPED_HISTORY, [5], history_k=5).centre == pytest.approx(110.0, abs=0.2)
    # A step with one median after it cannot place a centre: ignored, and the note says so.
    one_after = STEPPED_HISTORY[:9] + [125.0]
    g = cmp.history_gate(one_after, [5, 9])
    assert g.step == "#5" and g.n_after == 5 and "#9 has 1 nightly median after it" in g.note
    only = cmp.history_gate(one_after[5:], [4])
    assert only.step is None and only.centre == pytest.approx(np.median(one_after[5:]))
    with pytest.raises(ValueError, match="outside the series"):
        cmp.history_gate(STEPPED_HISTORY, [10])


def test_candidate_at_the_new_level_is_not_a_regression() -> None:
    # Fifteen nights at 100 ms, then a 10% step five nights ago; the candidate sits at the new level and
    # is compared with a single run from the old level (history_k = 20 holds both levels).
    history = [100.0 * f for f in STEP_FACTORS * 3] + [110.0 * f for f in STEP_FACTORS]
    th = Thresholds(history_k=20)
    candidate = run(110.0, 0.02, 20, seed=31)
    stationary = compare_latency(BASELINE, candidate, history, th)
    assert stationary.verdict == REGRESSION  # the stale centre (100 ms) flags the accepted new level
    aware = compare_latency(BASELINE, candidate, history, th, history_change_points=[15],
                            history_labels=[f"n{i:02d}" for i in range(20)])
    assert aware.verdict == INCONCLUSIVE and "nightly noise" in aware.reason
    assert "after the step at run n15" in aware.reason
    assert abs(aware.history_shift) < 0.01 < stationary.history_shift - 0.05
    assert aware.history_step == "run n15" and aware.history_n_after == 5
    assert aware.history_centre == pytest.approx(110.0, abs=0.2)
    assert stationary.history_step is None and stationary.history_centre == pytest.approx(100.0, abs=0.3)


def test_real_step_on_top_of_an_old_step_is_detected() -> None:
    # The pooled baseline sits at the new level (110 ms); the candidate is 12% slower still.
    base = run(110.0, 0.02, 140, seed=32)
    candidate = run(110.0 * 1.12, 0.02, 20, seed=33)
    stationary = compare_latency(base, candidate, STEPPED_HISTORY)
    assert stationary.verdict == INCONCLUSIVE and stationary.noise_gate > 0.15  # hidden by the inflated gate
    aware = compare_latency(base, candidate, STEPPED_HISTORY, history_change_points=[5])
    assert aware.verdict == REGRESSION, aware.reason
    assert aware.noise_gate < 0.02 and aware.history_shift > 0.1
    assert "centre after the step at #5" in aware.reason


def test_old_stored_verdicts_without_gate_fields_still_read() -> None:
    v = compare_latency(BASELINE, run(110.0, 0.02, 20, seed=2), STEPPED_HISTORY, history_change_points=[5])
    data = json.loads(json.dumps(v.to_dict()))
    assert Verdict.from_dict(data) == v
    old = {k: val for k, val in data.items() if k not in ("history_centre", "history_step", "history_n_after")}
    back = Verdict.from_dict(old)
    assert back.history_centre is None and back.history_step is None and back.history_n_after == 0
