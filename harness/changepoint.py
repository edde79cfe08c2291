"""Change-point detection over a series of nightly medians: E-divisive with means (energy statistic).

Method: Matteson, D. S. and James, N. A. (2014), "A Nonparametric Approach for Multiple Change Point
Analysis of Multivariate Data", Journal of the American Statistical Association 109(505), 334-345
(arXiv:1306.4933); the R package `ecp` (`e.divisive`) is the authors' implementation, and the same
method drives MongoDB's `signal-processing-algorithms` and Apache Otava (formerly Datastax Hunter)
for CI performance series (Daly et al., "The Use of Change Point Detection to Identify Software
Performance Regressions in a Continuous Integration System", ICPE 2020).

For a segment Z and a split of it into A = Z[0:tau] and B = Z[tau:kappa], the scaled energy
statistic is

    q(A, B) = m n / (m + n) * ( 2/(m n) sum_{a, b} |a - b|^alpha
                                - 1/C(m, 2) sum_{a < a'} |a - a'|^alpha
                                - 1/C(n, 2) sum_{b < b'} |b - b'|^alpha ),   0 < alpha < 2,

which is large when A and B come from different distributions (for alpha < 2 it characterises
equality of distributions, not only of means). Bisection: in every current segment find the
(tau, kappa) maximising q; the best over all segments is the candidate change point. Its
significance is a permutation test: permute the observations within each current segment, redo
the search, and count how often the permuted maximum reaches the observed one;
p = (count + 1) / (R + 1). Accept and repeat while p <= sig_level.

Why not a package: `ruptures` (PELT/binary segmentation; numpy + scipy, compiled) returns
breakpoints for a penalty that must be tuned per noise level and gives no significance; Apache
Otava 0.8 (`apache-otava` on PyPI) brings a CLI with BigQuery, Postgres and Slack clients and pins
numpy; `signal-processing-algorithms` (MongoDB) pulls its own stack for the same ~100 lines. The
algorithm is short, deterministic given the seed, and testable here; cost is O(R * k * T^2) for
T points and k change points (T = 60, R = 199: tens of milliseconds).

Differences from `ecp::e.divisive`: the permutation p-value uses a fixed R (no Gandy sequential
stopping), and an optional `min_rel_change` drops change points whose medians differ by less than
a relative amount that matters (the weakest is dropped first, then the medians are recomputed).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

# Defaults: minimum points on each side of a change, significance of the permutation test,
# permutations per test, and the distance exponent of the energy statistic (1 = ecp's default).
DEFAULT_MIN_SIZE = 5
DEFAULT_SIG_LEVEL = 0.01
DEFAULT_PERMUTATIONS = 199
DEFAULT_ALPHA = 1.0


@dataclass(frozen=True)
class ChangePoint:
    """A change in the series at `index`: values[index] is the first value of the new regime."""

    index: int
    before_median: float  # median of the segment ending just before index
    after_median: float  # median of the segment starting at index
    rel_change: float  # after_median / before_median - 1
    score: float  # energy statistic q of the split when it was found
    p_value: float  # permutation p-value when it was found

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _best_split(x: np.ndarray, min_size: int, alpha: float) -> tuple[int, float]:
    """(tau, q) maximising the energy statistic over tau and kappa within x; (-1, -inf) if x is too short."""
    n_total = x.size
    if n_total < 2 * min_size:
        return -1, -np.inf
    d = np.abs(x[:, None] - x[None, :]) ** alpha
    s = np.zeros((n_total + 1, n_total + 1))
    s[1:, 1:] = d.cumsum(axis=0).cumsum(axis=1)

    def block(r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
        return s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0]

    taus = np.arange(min_size, n_total - min_size + 1)
    kappas = np.arange(2 * min_size, n_total + 1)
    tau, kappa = np.meshgrid(taus, kappas, indexing="ij")
    valid = kappa - tau >= min_size
    tau, kappa = tau[valid], kappa[valid]
    zero = np.zeros_like(tau)
    m = tau.astype(float)
    n = (kappa - tau).astype(float)
    between = block(zero, tau, tau, kappa)
    within_a = block(zero, tau, zero, tau) / 2.0
    within_b = block(tau, kappa, tau, kappa) / 2.0
    energy = 2.0 * between / (m * n) - within_a / (m * (m - 1) / 2.0) - within_b / (n * (n - 1) / 2.0)
    q = m * n / (m + n) * energy
    best = int(np.argmax(q))
    return int(tau[best]), float(q[best])


def _best_over_segments(x: np.ndarray, bounds: list[int], min_size: int, alpha: float) -> tuple[int, float]:
    best_index, best_q = -1, -np.inf
    for start, end in zip(bounds[:-1], bounds[1:]):
        tau, q = _best_split(x[start:end], min_size, alpha)
        if tau >= 0 and q > best_q:
            best_index, best_q = start + tau, q
    return best_index, best_q


def _segment_medians(x: np.ndarray, indices: list[int]) -> list[tuple[float, float]]:
    bounds = [0, *indices, x.size]
    medians = [float(np.median(x[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
    return [(medians[i], medians[i + 1]) for i in range(len(indices))]


def detect_change_points(
    values: Sequence[float],
    min_size: int = DEFAULT_MIN_SIZE,
    sig_level: float = DEFAULT_SIG_LEVEL,
    permutations: int = DEFAULT_PERMUTATIONS,
    alpha: float = DEFAULT_ALPHA,
    min_rel_change: float = 0.0,
    seed: int = 0,
) -> list[ChangePoint]:
    """Change points of a series (e.g. nightly median latencies), sorted by index.

    min_size: fewest points in a segment on either side of a change (>= 2).
    sig_level: a change is accepted while its permutation p-value is <= sig_level; with R
      permutations the smallest p is 1/(R+1), so R must be >= 1/sig_level.
    min_rel_change: drop changes whose segment medians differ by less than this (0.03 = 3%).
    Deterministic for a given seed.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values must be a flat series, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values contain NaN or infinite entries; drop failed nights before detecting changes")
    if min_size < 2:
        raise ValueError(f"min_size must be >= 2 (within-segment distances need two points), got {min_size}")
    if not 0.0 < sig_level < 1.0:
        raise ValueError(f"sig_level must be in (0, 1), got {sig_level}")
    if not 0.0 < alpha < 2.0:
        raise ValueError(f"alpha must be in (0, 2) for the energy statistic to be a metric, got {alpha}")
    if 1.0 / (permutations + 1) > sig_level:
        raise ValueError(
            f"{permutations} permutations cannot give p <= {sig_level}; use >= {int(np.ceil(1 / sig_level))}"
        )
    rng = np.random.default_rng(seed)
    found: list[tuple[int, float, float]] = []  # (index, score, p)
    while True:
        bounds = [0, *sorted(i for i, _, _ in found), x.size]
        index, q_obs = _best_over_segments(x, bounds, min_size, alpha)
        if index < 0:
            break
        exceed = 0
        permuted = x.copy()
        for _ in range(permutations):
            for start, end in zip(bounds[:-1], bounds[1:]):
                permuted[start:end] = rng.permutation(x[start:end])
            _, q_perm = _best_over_segments(permuted, bounds, min_size, alpha)
            if q_perm >= q_obs:
                exceed += 1
        p_value = (exceed + 1) / (permutations + 1)
        if p_value > sig_level:
            break
        found.append((index, q_obs, p_value))

    found.sort()
    while found and min_rel_change > 0.0:
        pairs = _segment_medians(x, [i for i, _, _ in found])
        changes = [abs(after / before - 1.0) if before != 0 else np.inf for before, after in pairs]
        weakest = int(np.argmin(changes))
        if changes[weakest] >= min_rel_change:
            break
        del found[weakest]

    pairs = _segment_medians(x, [i for i, _, _ in found])
    return [
        ChangePoint(
            index=i,
            before_median=before,
            after_median=after,
            rel_change=(after / before - 1.0) if before != 0 else float("inf"),
            score=q,
            p_value=p,
        )
        for (i, q, p), (before, after) in zip(found, pairs)
    ]
