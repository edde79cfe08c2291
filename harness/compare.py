"""Verdicts: is a candidate run slower, faster, or the same as its baseline? Pure functions, no I/O.

A verdict is data (`Verdict`): the call, the ratio of medians with its bootstrap CI, the one-sided
Mann-Whitney p-value, the sample counts, a human reason and the thresholds used. Rendering reads
these fields and never recomputes statistics.

Latency design (`compare_latency`). Nightly phone timings have two kinds of noise: the spread of
samples within one run (CV of 2-10%), and a shift of the whole run from night to night (thermal
state, DVFS governor, background load) that no within-run test can see: two runs of the same build
differ "significantly" by Mann-Whitney whenever the run-to-run shift exceeds the within-run standard
error. A verdict therefore has to pass three gates, checked in this order:

1. Data quality.
   INCONCLUSIVE when either side has fewer than `min_samples` samples, or when the exact one-sided
   Mann-Whitney test cannot reach `alpha` at these sizes (p_min = 1/C(n1+n2, n1); see
   `harness.stats.mwu_min_achievable_p`): no amount of effect could be shown.
   UNSTABLE when the device reported throttling, or either side's CV (std/mean) exceeds `cv_max`:
   the run is too noisy to judge, fix the device or raise cv_max for it with an override --
   unless the change is beyond doubt: the bootstrap CI of r lies wholly beyond the min-effect
   boundary (ci_low > 1 + min_effect and p_slower < alpha; mirror: ci_high < 1 - min_effect and
   p_faster < alpha). Such a cell is a REGRESSION (IMPROVEMENT) whatever its CV and even under
   throttling, and its reason says that the run was noisy or throttled; the history gate (3.) still
   applies and can hold it at INCONCLUSIVE. Noise widens the CI and weakens the rank test, so a CI
   that clears the boundary in spite of it is evidence; what the CV gate protects against is a
   borderline call on a noisy run. The condition is stricter than the ordinary path (CI above 1 and
   r >= 1 + min_effect), so it adds no A/A false alarm the ordinary path would not allow. A
   candidate starved of CPU that runs 100x slower is a REGRESSION, not "UNSTABLE, OK"; everything
   else that is noisy stays UNSTABLE (and `RegressionReport` says such cells were not judged).
2. Within-run evidence (this run against the baseline run):
   r = median(candidate) / median(baseline), CI = percentile bootstrap CI of r at `ci_level`,
   p_slower / p_faster = one-sided Mann-Whitney U p-values.
   "Significantly slower" means p_slower < alpha AND the CI lies above 1 (the rank test and the
   bootstrap interval agree); "significantly faster" is the mirror image.
3. Size and history:
   the point estimate must matter, r >= 1 + min_effect (r <= 1 - min_effect for an improvement),
   and the candidate must stand out from the night-to-night noise (the history gate):
       (median(candidate) - median(H)) / median(baseline) > noise_k * robust_sigma(H) / median(baseline)
   (the mirror image for an improvement), where H is the last `history_k` accepted nightly medians
   of this cell and robust_sigma is 1.4826 * MAD. Both sides are expressed relative to the baseline
   median and stored as `history_shift` and `noise_gate`. The candidate is measured against the
   centre of H rather than against the one baseline run: the median of 10 runs carries about a
   sixth (pi/2 / 10) of the run-to-run variance of a single run, so the gate is harder to pass by
   chance, and it does not punish a real step for a baseline run that happened to be slow. Simulated
   (20 samples/run, 10 history medians, 1% run-to-run CV, noise_k = 3, 20k draws; MWU and
   min_effect conditions included): A/A regressions at 2% / 5% / 10% within-run CV are
   0.63% / 0.61% / 0.27% with the centre of H, against 1.93% / 1.70% / 0.78% when the change
   r - 1 is gated instead; a 10% step at 5% CV is detected 97.4% against 95.2%.
   The gate is skipped (and the reason says so) with fewer than `min_history` medians, e.g. for a
   one-off `harness compare A B`.
   Drift-aware history (`history_gate`). The centre and sigma above assume a stationary history. A
   step in it (a deliberate change nobody re-baselined, a new OS build on the phone) does two harms:
   with the window half before and half after the step, MAD is about half the step, so sigma is
   inflated (a 10% step gives a gate of about 3 x 7% = 22%) and real regressions hide; and with the
   step a few nights back, the centre stays at the stale level, so a candidate at the new, accepted
   level is "beyond the gate". Given the change points of the history (`history_change_points`:
   E-divisive means, `harness.changepoint`, run by the caller on the history medians only, never on
   the candidate), the window is cut into segments; the centre is the median of the segment after
   the last change point and sigma is the robust sigma of the residuals of every median from its own
   segment's median, pooled over the segments. The reason names the step ("centre after the step at
   run X") and the verdict stores `history_centre`, `history_step`, `history_n_after`. A last
   segment of fewer than 2 medians cannot place a centre: that change point is ignored (the newest
   level, seen once, still counts as a change). Without change points the gate is exactly the
   stationary one.

Outcomes:
  REGRESSION    significantly slower, r >= 1 + min_effect, beyond the history gate (on a noisy or
                throttled run: the whole CI above 1 + min_effect, p_slower < alpha, beyond the gate).
  IMPROVEMENT   significantly faster, r <= 1 - min_effect, beyond the history gate (mirror image).
  INCONCLUSIVE  (besides the data-quality cases) the change is significant and >= min_effect but
                within the nightly noise (history gate fails); or |r - 1| >= min_effect while the two
                tests disagree or neither rejects (the CI straddles the min-effect boundary: the data
                can neither show the change nor rule it out; more samples would decide).
  UNSTABLE      throttled or CV > cv_max, and the change is not beyond doubt (see 1.).
  NO CHANGE     |r - 1| < min_effect: either no significant change, or a significant one that is
                smaller than what matters. The reason says whether the CI lies within
                +/- min_effect (equivalence shown) or only that no change was detected.

Why this meets the false-alarm target: under an A/A comparison a REGRESSION needs p_slower < alpha
(at most 1% from within-run noise alone) AND r >= 1 + min_effect AND a shift beyond noise_k robust
sigmas of the history, which is the gate that bounds alarms caused by run-to-run shifts. With only
10 history medians the MAD is itself noisy, so the gate alone lets about 2.6% of normal nights
through at noise_k = 3 (a heavy-tailed ratio: simulated, 400k draws); the conjunction with the
other two conditions is what brings the rate under 1%. `bench/false_alarms.py` measures the rates
on synthetic nightly series; its output is the evidence for the defaults. Where night-to-night
drift is large (run-to-run CV >= 2%), keep more history (history_k = 20) or raise noise_k.

Measured with these defaults (`python bench/false_alarms.py`: 20 samples/run, 10 history medians,
1% run-to-run CV, 1000 trials per row, cv_max raised to 15% for the 10% CV level):
  false alarms (A/A REGRESSION)    0.7% / 0.6% / 0.4% at 2% / 5% / 10% within-run CV
  10% step detected (REGRESSION)   99.9% / 97.9% / 47.6%
At 10% CV, 20 samples cannot resolve a 10% step against alpha = 0.01 (about half the runs end
INCONCLUSIVE: "looks slower but not shown"); about 80 samples per run reach 95% (96% in the
bench's sweep).

Memory design (`compare_memory`): peak memory is close to deterministic, so no test: REGRESSION when
the median peak rises by at least max(memory_rel * baseline median, memory_abs_bytes), IMPROVEMENT
when it falls by at least that much, NO CHANGE otherwise.

Thresholds, their defaults and the per-cell overrides live in `harness.thresholds`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from harness import stats
# DEFAULT_CV_MAX: harness.report.render reads it from here
from harness.thresholds import DEFAULT_CV_MAX, DEFAULT_HISTORY_K, DEFAULT_SEED, Thresholds  # noqa: F401

# The verdicts.
REGRESSION = "REGRESSION"
IMPROVEMENT = "IMPROVEMENT"
NO_CHANGE = "NO CHANGE"
INCONCLUSIVE = "INCONCLUSIVE"
UNSTABLE = "UNSTABLE"
VERDICTS: tuple[str, ...] = (REGRESSION, IMPROVEMENT, NO_CHANGE, INCONCLUSIVE, UNSTABLE)


@dataclass(frozen=True)
class Verdict:
    """One comparison's outcome, as stored and rendered. Optional numbers are None when not computed."""

    metric: str  # "latency_ms" or "peak_memory_bytes"
    verdict: str  # one of VERDICTS
    ratio: float | None  # median(candidate) / median(baseline)
    ci_low: float | None  # bootstrap CI of ratio at thresholds.ci_level
    ci_high: float | None
    p_value: float | None  # one-sided MWU p-value in the direction of the observed change
    n_baseline: int
    n_candidate: int
    reason: str
    thresholds: Thresholds = field(default_factory=Thresholds)
    baseline_median: float | None = None
    candidate_median: float | None = None
    # History gate as a relative change (noise_k * robust sigma of history / baseline median); None if skipped.
    noise_gate: float | None = None
    # (median(candidate) - median(history)) / median(baseline); None when the gate is skipped.
    history_shift: float | None = None
    n_history: int = 0
    # The history gate's centre (ms): the median of the history, or of its segment after the last
    # change point (drift-aware gate); None when the gate is skipped.
    history_centre: float | None = None
    # The change point the centre follows (a run id, or "#index"); None for a stationary history.
    history_step: str | None = None
    # Medians after that change point (the centre's segment); 0 when history_step is None.
    history_n_after: int = 0

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; known verdicts: {', '.join(VERDICTS)}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None  # JSON has no NaN/inf
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Verdict":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown verdict field(s) {unknown}; known fields: {', '.join(sorted(known))}")
        values = dict(data)
        values["thresholds"] = Thresholds.from_dict(values.get("thresholds") or {})
        return cls(**values)


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


# Fewest medians after a change point for the gate to centre on that segment (see `history_gate`).
MIN_SEGMENT_FOR_CENTRE = 2


@dataclass(frozen=True)
class HistoryGate:
    """Centre and spread of the nightly history for the history gate (`history_gate`)."""

    centre: float  # median of the window, or of its segment after the last usable change point
    sigma: float  # robust sigma of the window, or of the residuals from each median's segment median
    n: int  # medians in the window (the last history_k)
    n_sigma: int  # residuals pooled into sigma (a one-median segment adds none)
    n_after: int  # medians the centre is the median of (n when no change point is used)
    step: str | None  # the change point the centre follows (its label, or "#index"), None when stationary
    note: str  # how the gate was formed, for the verdict's reason ("" when stationary)


def history_gate(
    medians: Sequence[float],
    change_points: Sequence[int] = (),
    history_k: int = DEFAULT_HISTORY_K,
    labels: Sequence[str] = (),
) -> HistoryGate:
    """The history gate's centre and robust sigma from nightly medians (oldest first) and change points.

    change_points are indices into `medians` where a new level starts (`ChangePoint.index` of
    `harness.changepoint.detect_change_points` run on these medians); labels (e.g. run ids, one per
    median) name them in the note. Only the last `history_k` medians (the window) are used. Without a
    change point inside the window: centre = median, sigma = robust_sigma of the window (the
    stationary gate). With change points: the window is cut into segments; centre = median of the
    last segment; sigma = robust_sigma of the residuals of every median from its own segment's median,
    pooled over the segments (a one-median segment has no residual and adds none), so a step neither
    inflates sigma nor leaves the centre at a stale level. A last segment shorter than
    MIN_SEGMENT_FOR_CENTRE (2) medians cannot place a centre: that change point is ignored (its
    segment joins the one before) and the note says so; then the newest step still looks like a
    change, which is right for a level seen on one night only.
    """
    x = np.asarray(medians, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"history_gate needs a non-empty series of medians, got shape {x.shape}")
    if labels and len(labels) != x.size:
        raise ValueError(f"history_gate: {len(labels)} labels for {x.size} medians")
    bad = [i for i in change_points if not 0 < int(i) < x.size]
    if bad:
        raise ValueError(f"history_gate: change points {bad} outside the series (1..{x.size - 1})")
    offset = max(0, x.size - history_k)
    window = x[offset:]

    def name(i: int) -> str:
        return f"run {labels[i]}" if labels else f"#{i}"

    cuts = sorted({int(i) - offset for i in change_points if int(i) > offset})
    notes = []
    while cuts and window.size - cuts[-1] < MIN_SEGMENT_FOR_CENTRE:
        dropped = cuts.pop()
        notes.append(f"the step at {name(dropped + offset)} has {window.size - dropped} nightly median after it, "
                     f"too few to centre on: ignored")
    if not cuts:
        return HistoryGate(centre=float(np.median(window)), sigma=stats.robust_sigma(window), n=int(window.size),
                           n_sigma=int(window.size), n_after=int(window.size), step=None, note="; ".join(notes))
    bounds = [0, *cuts, window.size]
    residuals = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a >= 2:
            residuals.extend(window[a:b] - np.median(window[a:b]))
    last = window[cuts[-1]:]
    step = name(cuts[-1] + offset)
    notes.insert(0, f"centre after the step at {step} ({last.size} medians; sigma about {len(bounds) - 1} "
                    f"segment medians)")
    return HistoryGate(centre=float(np.median(last)), sigma=stats.robust_sigma(residuals), n=int(window.size),
                       n_sigma=len(residuals), n_after=int(last.size), step=step, note="; ".join(notes))


def compare_latency(
    baseline_samples: Sequence[float],
    candidate_samples: Sequence[float],
    history_medians: Sequence[float] = (),
    thresholds: Thresholds | None = None,
    throttled: bool = False,
    seed: int = DEFAULT_SEED,
    history_change_points: Sequence[int] = (),
    history_labels: Sequence[str] = (),
) -> Verdict:
    """Latency verdict for a candidate run against a baseline run; see the module docstring.

    history_change_points: indices into history_medians where a new level starts (change points found
    on the history, not on the candidate); the history gate then centres on the newest segment
    (`history_gate`). history_labels: names of the history medians (run ids) for the reason.
    """
    th = thresholds or Thresholds()
    b = np.asarray(baseline_samples, dtype=float)
    c = np.asarray(candidate_samples, dtype=float)
    if b.size == 0 or c.size == 0:
        raise ValueError(
            f"compare_latency needs samples on both sides (baseline has {b.size}, candidate has {c.size})"
        )
    sb, sc = stats.summarize(b), stats.summarize(c)
    if sb.median <= 0:
        raise ValueError(f"baseline median latency is {sb.median}; latencies must be positive")
    ratio = sc.median / sb.median
    hist = np.asarray(history_medians, dtype=float)[-th.history_k :] if len(history_medians) else np.array([])
    gate: HistoryGate | None = None
    if hist.size >= th.min_history:
        gate = history_gate(history_medians, history_change_points, th.history_k, history_labels)

    def verdict(kind: str, reason: str, **kw: Any) -> Verdict:
        if gate is not None and gate.step is not None and gate.step not in reason:
            reason += f"; the history has a step at {gate.step} (its gate is centred after it)"
        return Verdict(
            metric="latency_ms",
            verdict=kind,
            ratio=ratio,
            n_baseline=sb.n,
            n_candidate=sc.n,
            reason=reason,
            thresholds=th,
            baseline_median=sb.median,
            candidate_median=sc.median,
            n_history=int(hist.size),
            **{"ci_low": None, "ci_high": None, "p_value": None, "noise_gate": None, "history_shift": None, **kw},
        )

    # 1. Data quality.
    if min(sb.n, sc.n) < th.min_samples:
        return verdict(
            INCONCLUSIVE,
            f"too few samples (baseline {sb.n}, candidate {sc.n}; need >= {th.min_samples} per side)",
        )
    p_min = stats.mwu_min_achievable_p(sb.n, sc.n)
    if p_min >= th.alpha:
        need = stats.min_samples_for_alpha(th.alpha)
        return verdict(
            INCONCLUSIVE,
            f"with {sb.n} and {sc.n} samples the Mann-Whitney test cannot reach p < {th.alpha:g} "
            f"(smallest possible p = {p_min:.3g}); take >= {need} samples per side",
        )

    ci = stats.bootstrap_ratio_ci(b, c, confidence=th.ci_level, n_resamples=th.n_resamples, seed=seed)
    p_slower = stats.mann_whitney_greater(b, c)
    p_faster = stats.mann_whitney_less(b, c)
    p_dir = p_slower if ratio >= 1.0 else p_faster
    noise_gate: float | None = None
    history_shift: float | None = None
    if gate is not None:
        noise_gate = th.noise_k * gate.sigma / sb.median
        history_shift = (sc.median - gate.centre) / sb.median
    numbers = dict(
        ci_low=ci.ci_low, ci_high=ci.ci_high, p_value=p_dir, noise_gate=noise_gate, history_shift=history_shift,
        history_centre=gate.centre if gate else None, history_step=gate.step if gate else None,
        history_n_after=gate.n_after if gate and gate.step else 0,
    )
    change = ratio - 1.0
    desc = f"median {_pct(change)} (ratio {ratio:.3f}, {th.ci_level:.0%} CI [{ci.ci_low:.3f}, {ci.ci_high:.3f}])"

    # 2. Within-run evidence (also what decides a noisy run, just below).
    slower_sig = p_slower < th.alpha and ci.ci_low > 1.0
    faster_sig = p_faster < th.alpha and ci.ci_high < 1.0
    matters = abs(change) >= th.min_effect
    gate_txt = (
        f"history gate {noise_gate:.1%} ({th.noise_k:g} x robust sigma of {hist.size} nightly medians"
        + (f", {gate.note}" if gate.note else "") + ")"
        if noise_gate is not None and gate is not None
        else f"history gate skipped ({hist.size} history medians < {th.min_history})"
    )
    centre_txt = f"the history centre (after the step at {gate.step})" if gate and gate.step else "the history median"

    def beyond_history(p: float, why: str) -> Verdict | None:
        """INCONCLUSIVE when the history gate exists and the candidate is within it; None when it passes."""
        if noise_gate is None or history_shift is None:
            return None
        if history_shift * math.copysign(1.0, change) > noise_gate:
            return None
        return verdict(
            INCONCLUSIVE,
            f"{why}{desc} is significant within the run (p={p:.2g}) but within nightly noise: "
            f"the candidate median is {_pct(history_shift)} from {centre_txt}, "
            f"not beyond the {gate_txt}",
            **numbers,
        )

    # 1. (continued) Data quality: a noisy or throttled run is UNSTABLE unless the change is beyond doubt, i.e.
    # the whole CI lies beyond min_effect and the rank test agrees (the history gate still applies).
    noisy = [(name, s.cv) for name, s in (("baseline", sb), ("candidate", sc)) if s.cv > th.cv_max]
    if throttled or noisy:
        if throttled:
            noise_why = "thermal throttling was seen during the run"
        else:
            noise_why = ", ".join(f"{name} CV {cv:.1%}" for name, cv in noisy) + f" exceeds cv_max {th.cv_max:.1%}"
        beyond_slower = p_slower < th.alpha and ci.ci_low > 1.0 + th.min_effect
        beyond_faster = p_faster < th.alpha and ci.ci_high < 1.0 - th.min_effect
        if not (beyond_slower or beyond_faster):
            return verdict(UNSTABLE, f"{noise_why}; {desc}", **numbers)
        kind, p = (REGRESSION, p_slower) if beyond_slower else (IMPROVEMENT, p_faster)
        held = beyond_history(p, f"{noise_why}; ")
        if held is not None:
            return held
        side = f"above {1.0 + th.min_effect:.2f}" if beyond_slower else f"below {1.0 - th.min_effect:.2f}"
        return verdict(
            kind,
            f"{noise_why}, but the change is beyond doubt: {desc}, the CI lies wholly {side} "
            f"(min_effect {th.min_effect:.0%}), p={p:.2g} < {th.alpha:g}; {gate_txt}",
            **numbers,
        )

    # 3. Size and history.
    if (slower_sig and change >= th.min_effect) or (faster_sig and change <= -th.min_effect):
        kind, p = (REGRESSION, p_slower) if change > 0 else (IMPROVEMENT, p_faster)
        held = beyond_history(p, "")
        if held is not None:
            return held
        return verdict(
            kind,
            f"{desc}, p={p:.2g} < {th.alpha:g}, beyond min_effect {th.min_effect:.0%}; {gate_txt}",
            **numbers,
        )
    if matters:
        direction = "slower" if change > 0 else "faster"
        includes_one = "includes" if ci.ci_low <= 1.0 <= ci.ci_high else "excludes"
        return verdict(
            INCONCLUSIVE,
            f"{desc} looks {direction} by more than min_effect {th.min_effect:.0%} but is not shown "
            f"(p={p_dir:.2g}, alpha {th.alpha:g}; CI {includes_one} 1); "
            f"more samples would decide",
            **numbers,
        )
    if slower_sig or faster_sig:
        return verdict(
            NO_CHANGE,
            f"{desc}: significant (p={p_dir:.2g}) but smaller than min_effect {th.min_effect:.0%}",
            **numbers,
        )
    lo_band, hi_band = 1.0 - th.min_effect, 1.0 + th.min_effect
    if lo_band <= ci.ci_low and ci.ci_high <= hi_band:
        why = f"CI within +/-{th.min_effect:.0%}"
    else:
        reach = max(ci.ci_high - 1.0, 1.0 - ci.ci_low)
        why = f"no significant change (p={p_dir:.2g}), though the CI allows changes up to {reach:.1%}"
    return verdict(NO_CHANGE, f"{desc}: {why}", **numbers)


def compare_memory(
    baseline_bytes: Sequence[int],
    candidate_bytes: Sequence[int],
    thresholds: Thresholds | None = None,
) -> Verdict:
    """Memory verdict: the median peak must move by at least max(memory_rel * baseline, memory_abs_bytes)."""
    th = thresholds or Thresholds()
    if len(baseline_bytes) == 0 or len(candidate_bytes) == 0:
        raise ValueError(
            f"compare_memory needs peaks on both sides (baseline has {len(baseline_bytes)}, "
            f"candidate has {len(candidate_bytes)})"
        )
    mb = float(np.median(np.asarray(baseline_bytes, dtype=float)))
    mc = float(np.median(np.asarray(candidate_bytes, dtype=float)))
    if mb < 0 or mc < 0:
        raise ValueError(f"peak memory cannot be negative (baseline median {mb}, candidate median {mc})")
    limit = max(th.memory_rel * mb, float(th.memory_abs_bytes))
    delta = mc - mb
    ratio = mc / mb if mb > 0 else None
    mib = 1024.0 * 1024.0
    desc = (
        f"median peak {mb / mib:.1f} MiB -> {mc / mib:.1f} MiB ({delta / mib:+.1f} MiB); "
        f"threshold max({th.memory_rel:.0%}, {th.memory_abs_bytes / mib:.1f} MiB) = {limit / mib:.1f} MiB"
    )
    if delta >= limit:
        kind = REGRESSION
    elif -delta >= limit:
        kind = IMPROVEMENT
    else:
        kind = NO_CHANGE
    return Verdict(
        metric="peak_memory_bytes",
        verdict=kind,
        ratio=ratio,
        ci_low=None,
        ci_high=None,
        p_value=None,
        n_baseline=len(baseline_bytes),
        n_candidate=len(candidate_bytes),
        reason=desc,
        thresholds=th,
        baseline_median=mb,
        candidate_median=mc,
    )
