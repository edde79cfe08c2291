"""Same-session A/B verdicts with adaptive sampling. Pure functions and a small state machine, no I/O.

Why. A nightly verdict compares tonight's run with last night's: a device that drifts from night to
night (thermal state, OS updates, another phone of the same model) shifts the whole run, and no
within-run test can tell that shift from a change of the code. Chromium's Pinpoint answers it by
running A and B interleaved on the same device in one session, so that whatever drifts moves both
sides alike. This module is that design, plus sampling until the answer is clear:

Design (`ABSession`). The baseline (A) and the candidate (B) run in blocks of `block` timed samples
(one job of one side), in ABBA order (A B B A, A B B A, ...: a linear drift within the session
cancels within each quartet) or in randomized pairs (AB or BA, seeded). The first look comes after
`first_look` samples per side, each further look after `batch` more, up to `max_samples` per side
or `max_seconds` of session time, whichever comes first (time is checked at each look: the next
batch is started only when its estimated time still fits).

Verdict at a look (`compare_ab`), on the pooled samples of each side:
  shift       Hodges-Lehmann estimate of the log-latency shift, the median of all n_a x n_b pairwise
              differences log b_j - log a_i; ratio = exp(shift) (Hollander, Wolfe & Chicken,
              "Nonparametric Statistical Methods", 3rd ed., sections 4.2-4.3);
  CI          the distribution-free interval that inverts the Mann-Whitney test (Moses): order
              statistics k and n_a n_b - k + 1 of those differences, k from the normal approximation
              of U at the look's one-sided alpha, so the interval and the rank test always agree;
  p           one-sided Mann-Whitney U p-value in the direction of the shift (harness.stats).
  REGRESSION   p_slower < alpha_k, CI above 1 and ratio >= 1 + min_effect (IMPROVEMENT: the mirror);
  NO CHANGE    |ratio - 1| < min_effect;
  INCONCLUSIVE otherwise (the shift looks at least min_effect but is not shown): sample more;
  UNSTABLE     throttling was seen or a side's CV exceeds cv_max, unless the CI already lies wholly
               beyond min_effect (a change beyond doubt is a verdict whatever the noise).
There is no history gate: night-to-night drift moves both sides of one session alike, which is what
the paired design is for.

Repeated looks (`SequentialPlan.look_alphas`). Looking after every batch and stopping at the first
significant result inflates the false-alarm rate if each look used the full alpha. The plan spends
alpha over the planned looks with the linear spending function alpha(t) = alpha * t of Lan & DeMets
("Discrete sequential boundaries for clinical trials", Biometrika 70(3), 1983), t the fraction of the
sample budget seen, and each look tests at its increment alpha_k = alpha(t_k) - alpha(t_{k-1}). By
the union (Bonferroni) bound the probability of a false REGRESSION over all looks is at most
sum alpha_k = alpha, whatever the correlation of the looks: conservative, and valid for any stopping
of the session before the last look (a session cut short by its time budget only spends less).

`bench/false_alarms.py` measures false alarms, detection and the mean samples spent of this design
against the nightly one under night-to-night drift.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from harness import stats
from harness.compare import IMPROVEMENT, INCONCLUSIVE, NO_CHANGE, REGRESSION, UNSTABLE, Verdict
from harness.thresholds import Thresholds

A, B = "A", "B"
DESIGNS = ("abba", "random")

# Defaults of a session: every default lives here.
DEFAULT_BLOCK = 5  # timed samples per block (one job of one side)
DEFAULT_FIRST_LOOK = 20  # samples per side before the first verdict
DEFAULT_BATCH = 20  # samples per side added before each further look
DEFAULT_MAX_SAMPLES = 100  # budget per side
DEFAULT_MAX_SECONDS = 1800.0  # budget of session time per cell (block wall time, warm-up and cooldown included)


class PlanError(ValueError):
    """A sampling plan that cannot work (names the field and the fix)."""


@dataclass(frozen=True)
class SequentialPlan:
    """How a same-session A/B comparison samples: blocks, looks and budgets."""

    block: int = DEFAULT_BLOCK
    first_look: int = DEFAULT_FIRST_LOOK
    batch: int = DEFAULT_BATCH
    max_samples: int = DEFAULT_MAX_SAMPLES
    max_seconds: float = DEFAULT_MAX_SECONDS
    design: str = "abba"
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.block >= 1, f"block must be >= 1 sample, got {self.block}"),
            (self.first_look >= 2 * self.block and self.first_look % (2 * self.block) == 0,
             f"first_look ({self.first_look}) must be a multiple of 2 x block ({2 * self.block}): "
             "ABBA quartets fill whole looks"),
            (self.batch >= 2 * self.block and self.batch % (2 * self.block) == 0,
             f"batch ({self.batch}) must be a multiple of 2 x block ({2 * self.block})"),
            (self.max_samples >= self.first_look,
             f"max_samples ({self.max_samples}) must be >= first_look ({self.first_look})"),
            (self.max_seconds > 0, f"max_seconds must be > 0, got {self.max_seconds}"),
            (self.design in DESIGNS, f"design must be one of {', '.join(DESIGNS)}, got {self.design!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise PlanError(f"invalid A/B sampling plan: {message}")

    @property
    def looks(self) -> list[int]:
        """Samples per side at each planned look."""
        out = [self.first_look]
        while out[-1] + self.batch <= self.max_samples:
            out.append(out[-1] + self.batch)
        return out

    def look_alphas(self, alpha: float) -> list[float]:
        """Per-look significance levels: increments of the linear spending function alpha * t (sum = alpha)."""
        looks = self.looks
        total = looks[-1]
        return [alpha * (n - prev) / total for n, prev in zip(looks, [0, *looks[:-1]])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SequentialPlan":
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"unknown A/B plan field(s) {unknown}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            want = str if name == "design" else float if name == "max_seconds" else int
            ok = (isinstance(value, str) if want is str else
                  isinstance(value, (int, float)) and not isinstance(value, bool) and
                  (want is float or float(value) == int(value)))
            if not ok:
                kind = {str: "a string", float: "a number", int: "a whole number"}[want]
                raise PlanError(f"A/B plan field {name!r} must be {kind}, got {value!r}")
            values[name] = want(value)
        return cls(**values)


def block_order(n_pairs: int, design: str = "abba", seed: int = 0, start: int = 0) -> list[str]:
    """Sides of 2 x n_pairs blocks: ABBA quartets (odd pair counts end with AB), or randomized pairs.

    `start` is the index of the first pair, so the order continues across looks (ABBA ABBA ..., the
    same random stream for the same seed)."""
    if design not in DESIGNS:
        raise PlanError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    out: list[str] = []
    for i in range(start, start + n_pairs):
        if design == "abba":
            out += [A, B] if i % 2 == 0 else [B, A]
        else:
            out += [A, B] if random.Random(seed * 1_000_003 + i).random() < 0.5 else [B, A]
    return out


@dataclass(frozen=True)
class ShiftEstimate:
    ratio: float  # exp(Hodges-Lehmann shift of log latency)
    ci_low: float
    ci_high: float
    p_slower: float
    p_faster: float


def hodges_lehmann(a: Sequence[float], b: Sequence[float], alpha_one_sided: float) -> ShiftEstimate:
    """Ratio B/A as exp(HL shift of the logs), its Moses CI (each side at alpha_one_sided), MWU p-values."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size == 0 or xb.size == 0 or not all(np.all(np.isfinite(x) & (x > 0)) for x in (xa, xb)):
        raise ValueError("hodges_lehmann needs positive, finite samples on both sides")
    la, lb = np.log(xa), np.log(xb)
    d = np.sort((lb[None, :] - la[:, None]).ravel())
    m = d.size
    n1, n2 = la.size, lb.size
    z = float(norm.ppf(1.0 - alpha_one_sided))
    k = int(math.floor(n1 * n2 / 2.0 - z * math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0)))
    k = min(max(k, 0), (m - 1) // 2)
    shift = float(np.median(d))
    return ShiftEstimate(
        ratio=math.exp(shift), ci_low=math.exp(float(d[k])), ci_high=math.exp(float(d[m - 1 - k])),
        p_slower=stats.mann_whitney_greater(a, b), p_faster=stats.mann_whitney_less(a, b),
    )


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def compare_ab(a: Sequence[float], b: Sequence[float], thresholds: Thresholds | None = None,
               look_alpha: float | None = None, look: int = 1, n_looks: int = 1,
               throttled: bool = False) -> Verdict:
    """Verdict of one look at a same-session A/B comparison (A = baseline, B = candidate); see the module doc."""
    th = thresholds or Thresholds()
    alpha_k = th.alpha if look_alpha is None else look_alpha
    sa, sb = stats.summarize(a), stats.summarize(b)
    if min(sa.n, sb.n) < th.min_samples:
        return Verdict(metric="latency_ms", verdict=INCONCLUSIVE, ratio=None, ci_low=None, ci_high=None,
                       p_value=None, n_baseline=sa.n, n_candidate=sb.n, thresholds=th,
                       baseline_median=sa.median, candidate_median=sb.median,
                       reason=f"too few samples (A {sa.n}, B {sb.n}; need >= {th.min_samples} per side)")
    est = hodges_lehmann(a, b, alpha_k)
    ratio, change = est.ratio, est.ratio - 1.0
    p_dir = est.p_slower if change >= 0 else est.p_faster
    level = 1.0 - 2.0 * alpha_k
    where = f"A/B same session, look {look} of {n_looks} at alpha {alpha_k:.2g}"
    desc = (f"shift {_pct(change)} (Hodges-Lehmann ratio {ratio:.3f}, {level:.1%} CI "
            f"[{est.ci_low:.3f}, {est.ci_high:.3f}], {sa.n} + {sb.n} samples)")

    def verdict(kind: str, reason: str) -> Verdict:
        return Verdict(metric="latency_ms", verdict=kind, ratio=ratio, ci_low=est.ci_low, ci_high=est.ci_high,
                       p_value=p_dir, n_baseline=sa.n, n_candidate=sb.n, reason=f"{where}: {reason}",
                       thresholds=th, baseline_median=sa.median, candidate_median=sb.median)

    slower = est.p_slower < alpha_k and est.ci_low > 1.0 and change >= th.min_effect
    faster = est.p_faster < alpha_k and est.ci_high < 1.0 and change <= -th.min_effect
    beyond_doubt = (slower and est.ci_low > 1.0 + th.min_effect) or (faster and est.ci_high < 1.0 - th.min_effect)
    noisy = [f"{name} CV {s.cv:.1%}" for name, s in (("A", sa), ("B", sb)) if s.cv > th.cv_max]
    if (throttled or noisy) and not beyond_doubt:
        why = "thermal throttling was seen" if throttled else f"{', '.join(noisy)} exceeds cv_max {th.cv_max:.1%}"
        return verdict(UNSTABLE, f"{why}; {desc}")
    caveat = ""
    if throttled or noisy:
        caveat = (" (" + ("throttled" if throttled else ", ".join(noisy)) +
                  f", but the CI lies wholly beyond min_effect {th.min_effect:.0%})")
    if slower or faster:
        p = est.p_slower if slower else est.p_faster
        return verdict(REGRESSION if slower else IMPROVEMENT,
                       f"{desc}, p={p:.2g} < {alpha_k:.2g}, beyond min_effect {th.min_effect:.0%}{caveat}")
    if abs(change) < th.min_effect:
        return verdict(NO_CHANGE, f"{desc}: smaller than min_effect {th.min_effect:.0%} (p={p_dir:.2g})")
    direction = "slower" if change > 0 else "faster"
    return verdict(INCONCLUSIVE, f"{desc} looks {direction} by more than min_effect {th.min_effect:.0%} "
                                 f"but is not shown (p={p_dir:.2g}, alpha at this look {alpha_k:.2g})")


@dataclass
class Look:
    """One look of a session: what it saw and decided."""

    n_a: int
    n_b: int
    alpha: float
    verdict: str
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    seconds: float


@dataclass
class Block:
    side: str
    n: int
    seconds: float
    started_at: float | None = None


@dataclass
class ABSession:
    """The state of one cell's same-session A/B comparison: which block comes next, when to look, when to stop.

    Drive it: `while not s.done: side = s.next_side(); samples, secs = run(side, s.plan.block);
    s.add(side, samples, secs)`. Looks happen inside `add` once a batch is complete; `verdict` is the
    last look's, `stop_reason` says why sampling stopped."""

    plan: SequentialPlan = field(default_factory=SequentialPlan)
    thresholds: Thresholds = field(default_factory=Thresholds)
    samples_a: list[float] = field(default_factory=list)
    samples_b: list[float] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    looks: list[Look] = field(default_factory=list)
    verdict: Verdict | None = None
    stop_reason: str = ""
    throttled: bool = False
    # What one sample is: "run" (a timed iteration), or "launch" (one value per block: the block's median or
    # mean, where the device reports only a summary per launch, as benchmark_model does)
    sample_unit: str = "run"
    _queue: list[str] = field(default_factory=list)
    _pairs: int = 0

    @property
    def done(self) -> bool:
        return bool(self.stop_reason)

    @property
    def seconds(self) -> float:
        return sum(b.seconds for b in self.blocks)

    def _target(self) -> int:
        """Samples per side at the next look."""
        return self.plan.looks[len(self.looks)]

    def next_side(self) -> str:
        if self.done:
            raise RuntimeError("the A/B session has stopped: " + self.stop_reason)
        if not self._queue:
            have = min(len(self.samples_a), len(self.samples_b))
            pairs = max(1, math.ceil((self._target() - have) / self.plan.block))
            self._queue = block_order(pairs, self.plan.design, self.plan.seed, start=self._pairs)
            self._pairs += pairs
        return self._queue[0]

    def add(self, side: str, samples: Sequence[float], seconds: float, started_at: float | None = None,
            throttled: bool = False) -> Verdict | None:
        """Record a block; returns the look's verdict when this block completed a look, else None."""
        if side not in (A, B):
            raise ValueError(f"side must be 'A' or 'B', got {side!r}")
        if self._queue and self._queue[0] == side:
            self._queue.pop(0)
        (self.samples_a if side == A else self.samples_b).extend(float(x) for x in samples)
        self.blocks.append(Block(side=side, n=len(samples), seconds=float(seconds), started_at=started_at))
        self.throttled = self.throttled or throttled
        if self._queue or min(len(self.samples_a), len(self.samples_b)) < self._target():
            return None
        return self._look()

    def _look(self) -> Verdict:
        k = len(self.looks)
        alphas = self.plan.look_alphas(self.thresholds.alpha)
        v = compare_ab(self.samples_a, self.samples_b, self.thresholds, alphas[k], k + 1, len(alphas),
                       throttled=self.throttled)
        self.verdict = v
        self.looks.append(Look(n_a=v.n_baseline, n_b=v.n_candidate, alpha=alphas[k], verdict=v.verdict,
                               ratio=v.ratio, ci_low=v.ci_low, ci_high=v.ci_high, p_value=v.p_value,
                               seconds=self.seconds))
        n = min(len(self.samples_a), len(self.samples_b))
        if v.verdict != INCONCLUSIVE:
            self.stop_reason = f"{v.verdict} at look {k + 1} of {len(alphas)} ({n} samples per side)"
        elif k + 1 >= len(alphas):
            self.stop_reason = f"sample budget spent: {n} samples per side (max_samples {self.plan.max_samples})"
        else:
            per_sample = self.seconds / max(1, len(self.samples_a) + len(self.samples_b))
            need = 2 * self.plan.batch * per_sample
            if self.seconds + need > self.plan.max_seconds:
                self.stop_reason = (f"time budget spent: {self.seconds:.0f} s used, the next look needs about "
                                    f"{need:.0f} s more (max_seconds {self.plan.max_seconds:g})")
        return v

    def stop(self, reason: str) -> None:
        """End the session early (a failed block, Ctrl-C): the last look's verdict stands, or none."""
        if not self.stop_reason:
            self.stop_reason = reason

    def to_dict(self) -> dict[str, Any]:
        """What a report shows: the design, the samples spent, each look and why sampling stopped."""
        return {
            "design": self.plan.design, "plan": self.plan.to_dict(), "looks": [asdict(x) for x in self.looks],
            "blocks": [asdict(b) for b in self.blocks], "samples_a": len(self.samples_a),
            "samples_b": len(self.samples_b), "seconds": self.seconds, "stop_reason": self.stop_reason,
            "order": "".join(b.side for b in self.blocks), "sample_unit": self.sample_unit,
        }


def describe(plan: SequentialPlan) -> str:
    """One line for reports: the design and the budget."""
    order = "ABBA quartets" if plan.design == "abba" else "randomized AB/BA pairs"
    looks = plan.looks
    return (f"A/B in one session: blocks of {plan.block} samples in {order}; looks at "
            f"{', '.join(map(str, looks))} samples per side (alpha spent linearly over the looks, "
            f"Lan-DeMets with a Bonferroni bound); at most {plan.max_samples} samples per side or "
            f"{plan.max_seconds:g} s per cell")
