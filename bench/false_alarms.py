"""False-alarm and detection rates of `harness.compare.compare_latency` on synthetic nightly series.

Model of one nightly run (seeded): `--samples` latencies drawn lognormal with coefficient of
variation CV (within-run noise: 2%, 5%, 10%), all multiplied by one lognormal run offset with
CV `--run-cv` (night-to-night drift: thermal state, governor, background load). Each trial draws
`--history` accepted runs (their medians are the history; the last one's samples are the baseline)
and one candidate run, either identical in distribution (A/A: any REGRESSION is a false alarm) or
slower by a planted step (3%, 5%, 10%: a REGRESSION is a detection).

Thresholds are the defaults of harness.thresholds, except cv_max, which is raised to 1.5 x CV where
the default would flag ordinary samples of that noise level as UNSTABLE (as a per-device override
would). The table gives every verdict's share so nothing is hidden in "other".

Targets: false-alarm rate < 1% at every noise level; detection >= 95% for 10% steps.
A second table sweeps the sample size for the cases that miss the detection target.

Drift and A/B scenarios (`--scenarios`, the last table; `harness.abtest`): per noise CV and step,
false alarms (A/A) or detection, and the mean samples spent per side, of
  nightly          the nightly design above, with `--drift` night-to-night CV (2%) and 20 samples;
  A/B fixed        baseline and candidate interleaved in one session (ABBA blocks of 5), one look at
                   20 samples per side;
  A/B adaptive     the same, looking again after every 20 more samples per side while INCONCLUSIVE,
                   up to 100 (alpha spent over the looks; harness.abtest.SequentialPlan defaults).
A session shares the night's offset between both sides (drawn with `--drift`, so it cancels by
design, not by assumption), and adds what a session really has: a linear trend across the session
(slope with CV `--trend-cv`, e.g. a phone warming up) and an offset per block (`--block-cv`: each job
launch lands a little differently). Target: A/A < 1% and 10% steps >= 95% at 2%, 5% and 10% CV with
2% drift, mean samples at 10% CV <= 60 per side (3 x 20).

Usage: python bench/false_alarms.py [--trials 1000] [--samples 20] [--seed 0] [--run-cv 0.01] [--drift 0.02]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.abtest import A, ABSession, SequentialPlan  # noqa: E402
from harness.compare import (  # noqa: E402
    IMPROVEMENT,
    INCONCLUSIVE,
    NO_CHANGE,
    REGRESSION,
    UNSTABLE,
    compare_latency,
)
from harness.thresholds import DEFAULT_CV_MAX, Thresholds  # noqa: E402

NOISE_CVS = (0.02, 0.05, 0.10)
STEPS = (0.03, 0.05, 0.10)
BASE_LATENCY_MS = 100.0
ORDER = (REGRESSION, IMPROVEMENT, NO_CHANGE, INCONCLUSIVE, UNSTABLE)


def _sigma(cv: float) -> float:
    """Log-space sigma of a lognormal with coefficient of variation cv."""
    return math.sqrt(math.log1p(cv * cv))


def _runs(rng: np.random.Generator, n_runs: int, n_samples: int, cv: float, run_cv: float, factor: float) -> np.ndarray:
    """n_runs x n_samples latencies (ms): within-run lognormal noise times a per-run lognormal offset."""
    within = rng.lognormal(0.0, _sigma(cv), size=(n_runs, n_samples))
    offset = rng.lognormal(0.0, _sigma(run_cv), size=(n_runs, 1)) if run_cv > 0 else 1.0
    return BASE_LATENCY_MS * factor * within * offset


def thresholds_for(cv: float, n_history: int) -> Thresholds:
    th = Thresholds()
    return replace(th, cv_max=max(DEFAULT_CV_MAX, 1.5 * cv), history_k=max(th.history_k, n_history))


def simulate(
    cv: float, step: float, trials: int, n_samples: int, n_history: int, run_cv: float, seed: int
) -> Counter:
    rng = np.random.default_rng(seed)
    th = thresholds_for(cv, n_history)
    counts: Counter = Counter()
    for t in range(trials):
        history_runs = _runs(rng, n_history, n_samples, cv, run_cv, 1.0)
        candidate = _runs(rng, 1, n_samples, cv, run_cv, 1.0 + step)[0]
        history_medians = np.median(history_runs, axis=1)
        v = compare_latency(history_runs[-1], candidate, history_medians, th, seed=seed + t)
        counts[v.verdict] += 1
    return counts


def simulate_ab(cv: float, step: float, trials: int, plan: SequentialPlan, drift: float, trend_cv: float,
                block_cv: float, seed: int, adaptive: bool = True) -> tuple[Counter, float]:
    """Same-session A/B sessions: (verdict counts, mean samples per side). See the module docstring."""
    rng = np.random.default_rng(seed)
    th = thresholds_for(cv, 1)
    if not adaptive:
        plan = replace(plan, max_samples=plan.first_look)
    n_blocks_max = 2 * plan.max_samples // plan.block
    counts: Counter = Counter()
    spent = 0
    for _ in range(trials):
        night = rng.lognormal(0.0, _sigma(drift)) if drift > 0 else 1.0
        slope = rng.normal(0.0, trend_cv)
        s = ABSession(plan=plan, thresholds=th)
        i = 0
        while not s.done:
            side = s.next_side()
            level = night * (1.0 + slope * (i / n_blocks_max - 0.5))
            if block_cv > 0:
                level *= rng.lognormal(0.0, _sigma(block_cv))
            factor = 1.0 if side == A else 1.0 + step
            x = BASE_LATENCY_MS * factor * level * rng.lognormal(0.0, _sigma(cv), size=plan.block)
            s.add(side, x, seconds=float(x.sum()) / 1000.0)
            i += 1
        counts[s.verdict.verdict if s.verdict else INCONCLUSIVE] += 1
        spent += len(s.samples_a)
    return counts, spent / trials


def scenarios(args) -> None:
    """The drift and A/B table (see the module docstring)."""
    plan = SequentialPlan(seed=args.seed)
    print()
    print(f"drift and A/B scenarios: night-to-night drift {args.drift:.0%}, session trend CV {args.trend_cv:.1%}, "
          f"block offset CV {args.block_cv:.1%}, {args.trials} trials per cell")
    print(f"A/B plan: blocks of {plan.block}, ABBA, looks at {plan.looks} samples per side, "
          f"alpha per look {', '.join(f'{a:.2g}' for a in plan.look_alphas(Thresholds().alpha))}")
    widths = [13, 8, 5, 11, 13, 28]
    print(_row(["scenario", "noise CV", "step", "REGRESSION", "mean samples", "target"], widths))
    print(_row(["-" * w for w in widths], widths))
    t0 = time.perf_counter()
    for i, cv in enumerate(NOISE_CVS):
        for j, step in enumerate((0.0, *STEPS)):
            seed = args.seed + 70_000 + 1000 * (4 * i + j)
            rows = []
            night = simulate(cv, step, args.trials, args.samples, args.history, args.drift, seed)
            rows.append(("nightly", night, float(args.samples)))
            for name, adaptive in (("A/B fixed", False), ("A/B adaptive", True)):
                counts, mean_n = simulate_ab(cv, step, args.trials, plan, args.drift, args.trend_cv, args.block_cv,
                                             seed + (2 if adaptive else 1), adaptive)
                rows.append((name, counts, mean_n))
            for name, counts, mean_n in rows:
                rate = counts[REGRESSION] / args.trials
                if step == 0.0:
                    target = f"< 1%: {'ok' if rate < 0.01 else 'MISSED'} (CI up to {_upper95(counts[REGRESSION], args.trials):.1%})"
                elif step >= 0.10:
                    target = f">= 95%: {'ok' if rate >= 0.95 else 'MISSED'}"
                else:
                    target = ""
                print(_row([name, f"{cv:.0%}", "A/A" if step == 0 else f"+{step:.0%}", f"{rate:.1%}",
                            f"{mean_n:.1f}", target], widths))
    print(f"elapsed {time.perf_counter() - t0:.0f} s")


def _upper95(k: int, n: int) -> float:
    """Upper end of the exact (Clopper-Pearson) 95% interval of a rate k/n."""
    return float(binomtest(k, n).proportion_ci(confidence_level=0.95).high)


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=1000, help="comparisons per (noise, step) cell")
    ap.add_argument("--samples", type=int, default=20, help="latency samples per nightly run")
    ap.add_argument("--history", type=int, default=10, help="accepted nightly medians in the history")
    ap.add_argument("--run-cv", type=float, default=0.01, help="night-to-night CV of the whole run (0 = none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-sweep", action="store_true", help="skip the sample-size sweep")
    ap.add_argument("--no-sensitivity", action="store_true", help="skip the run-to-run drift sensitivity table")
    ap.add_argument("--drift", type=float, default=0.02, help="night-to-night CV of the drift and A/B scenarios")
    ap.add_argument("--trend-cv", type=float, default=0.02, help="CV of the linear trend across an A/B session")
    ap.add_argument("--block-cv", type=float, default=0.005, help="CV of the offset of each block (job launch)")
    ap.add_argument("--only-scenarios", action="store_true", help="print only the drift and A/B table")
    args = ap.parse_args(argv)
    if args.only_scenarios:
        scenarios(args)
        return 0

    t0 = time.perf_counter()
    d = Thresholds()
    print(
        f"compare_latency on synthetic nightly runs: {args.samples} samples/run, history of {args.history} "
        f"medians, run-to-run CV {args.run_cv:.1%}, {args.trials} trials per row, seed {args.seed}"
    )
    print(
        f"thresholds: alpha={d.alpha:g} min_effect={d.min_effect:.0%} noise_k={d.noise_k:g} "
        f"history_k={d.history_k} ci_level={d.ci_level:.0%} n_resamples={d.n_resamples} "
        f"cv_max=max({DEFAULT_CV_MAX:.0%}, 1.5 x CV)"
    )
    print()
    header = ["noise CV", "step", "REGRESSION", "IMPROVEMENT", "NO CHANGE", "INCONCLUSIVE", "UNSTABLE", "target"]
    widths = [8, 5, 10, 11, 9, 12, 8, 42]
    print(_row(header, widths))
    print(_row(["-" * w for w in widths], widths))
    misses: list[tuple[float, float]] = []
    for i, cv in enumerate(NOISE_CVS):
        for j, step in enumerate((0.0, *STEPS)):
            seed = args.seed + 1000 * (4 * i + j)
            counts = simulate(cv, step, args.trials, args.samples, args.history, args.run_cv, seed)
            rates = {k: counts[k] / args.trials for k in ORDER}
            if step == 0.0:
                ok = rates[REGRESSION] < 0.01
                upper = _upper95(counts[REGRESSION], args.trials)
                target = f"false alarms < 1%: {'ok' if ok else 'MISSED'} (95% CI up to {upper:.1%})"
            elif step >= 0.10:
                ok = rates[REGRESSION] >= 0.95
                target = f"detect >= 95%: {'ok' if ok else 'MISSED'}"
                if not ok:
                    misses.append((cv, step))
            else:
                target = "(no target)"
            cells = [f"{cv:.0%}", "A/A" if step == 0 else f"+{step:.0%}"] + [f"{rates[k]:.1%}" for k in ORDER] + [target]
            print(_row(cells, widths))
    print()
    print(f"elapsed {time.perf_counter() - t0:.0f} s")

    if not args.no_sensitivity:
        print()
        print("sensitivity to night-to-night drift (REGRESSION rate; A/A = false alarms, +10% = detection):")
        sens_trials = max(200, args.trials // 2)
        widths3 = [10, 7, 8, 7, 7]
        print(_row(["run-to-run", "history", "noise CV", "A/A", "+10%"], widths3))
        for run_cv, n_hist in ((0.0, args.history), (0.02, args.history), (0.02, 2 * args.history)):
            for i, cv in enumerate(NOISE_CVS):
                seed = args.seed + 50_000 + 100 * i + int(run_cv * 1000) + n_hist
                aa = simulate(cv, 0.0, sens_trials, args.samples, n_hist, run_cv, seed)
                det = simulate(cv, 0.10, sens_trials, args.samples, n_hist, run_cv, seed + 1)
                print(
                    _row(
                        [f"{run_cv:.0%}", str(n_hist), f"{cv:.0%}", f"{aa[REGRESSION] / sens_trials:.1%}",
                         f"{det[REGRESSION] / sens_trials:.1%}"],
                        widths3,
                    )
                )
        print(f"({sens_trials} trials per row; history_k is set to the history length)")
        print(f"elapsed {time.perf_counter() - t0:.0f} s")

    if misses and not args.no_sweep:
        print()
        print("sample-size sweep for the missed detection targets (REGRESSION rate of the step; A/A false alarms):")
        sweep_trials = max(200, args.trials // 4)
        widths2 = [8, 5, 7, 10, 12]
        print(_row(["noise CV", "step", "samples", "detected", "false alarms"], widths2))
        for cv, step in misses:
            for n in (20, 30, 40, 50, 60, 80, 100, 120):
                det = simulate(cv, step, sweep_trials, n, args.history, args.run_cv, args.seed + 77 + n)
                aa = simulate(cv, 0.0, sweep_trials, n, args.history, args.run_cv, args.seed + 99 + n)
                rate = det[REGRESSION] / sweep_trials
                aa_rate = aa[REGRESSION] / sweep_trials
                print(_row([f"{cv:.0%}", f"+{step:.0%}", str(n), f"{rate:.1%}", f"{aa_rate:.1%}"], widths2))
                if rate >= 0.95:
                    break
        print(f"({sweep_trials} trials per row)")
        print(f"elapsed {time.perf_counter() - t0:.0f} s")
    scenarios(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
