"""Nightly regression detection: a candidate run against its baseline, cell by cell, with confirmation.

Orchestration only: the statistics are `harness.compare` (verdicts) and `harness.changepoint`
(change points); which samples form a baseline or a history is `harness.baseline`. The outcome is a
`RegressionReport`, plain data (`to_dict`/`from_dict`, the content of regressions.json) that every
renderer (`harness.report.regression_render`) reads without recomputing a statistic.

Per cell (device, workload, variant, options_hash) of the candidate run:
  * latency: `compare.compare_latency(baseline samples, candidate samples, history medians)`, where the
    history is the last K (thresholds.history_k) accepted nightly medians of the cell (the runs of the
    baseline tag, or of --history TAG; none for a single-run baseline: the gate is then skipped),
    and `throttled` is set when the device state of the candidate job or of a baseline job shows
    thermal throttling (`throttling_seen`);
  * drift-aware history (`nightly_history`): change points are searched (E-divisive means,
    `changepoint.detect_change_points`, a change must be at least min_effect) on the cell's nightly
    medians since its last re-baseline, up to TREND_RUNS of them, before the candidate and without it
    (only with >= 2 x changepoint.DEFAULT_MIN_SIZE medians); they go to compare_latency, whose gate
    then centres on the segment after the last step and pools the sigma over the segments
    (`compare.history_gate`);
  * memory: `compare.compare_memory` for each figure of MEMORY_METRICS present on both sides;
  * the cell's verdict: REGRESSION if any metric regressed; otherwise the latency verdict, except that
    a memory IMPROVEMENT turns a latency NO CHANGE into IMPROVEMENT.
Thresholds per cell: the defaults, then the candidate suite's `thresholds:` overrides, then those of
--thresholds FILE (later ones win; `compare.resolve_thresholds`).

Confirmation: a REGRESSION is *confirmed* (and `harness compare` exits 1) when the same metric
regresses
  1. in the previous nightly too: the newest accepted run of the baseline tag before the candidate,
     judged the same way against its own pool and history (tag baselines only), or else
  2. on an automatic rerun of the regressed cells: a callback (the CLI's reruns them through the
     normal run path into a new run) returns the rerun's run id; its jobs are judged against the same
     baseline and history.
An unconfirmed REGRESSION is reported as such and does not fail the build.
The previous nightly is judged with its own drift-aware history: `nightly_history` before it, change
points recomputed there (the same gate as the candidate's, as of that night). A step cannot fall
between the previous nightly and the candidate: change points are searched on the history only, and
need DEFAULT_MIN_SIZE (5) medians on each side, so the previous nightly always lies in the candidate's
last segment. A new level is therefore judged against the old segment for its first nights (nights 1
and 2 of a real step both regress: confirmed), and becomes the centre once it has 5 nights (by then the
pooled baseline has moved to it too); to accept it earlier, record a re-baseline.

Unjudged cells: UNSTABLE and INCONCLUSIVE cells (failed or missing candidate jobs are INCONCLUSIVE)
were not judged, so "no regression" is not shown for them. `RegressionReport.unjudged()` lists them,
every rendered headline names them (never "OK: no regression" while some cell is unjudged), and
`RegressionReport.exit_code(strict=True)` (`harness compare --strict`) returns 3 when some cell is
unjudged and no regression is confirmed. Exit codes: 0 nothing confirmed (and, with --strict, every
cell judged); 1 a confirmed REGRESSION (wins over 3); 2 bad input (the CLI's); 3 --strict and some
cell unjudged.

Trends: each cell's last TREND_RUNS accepted nightly medians plus the candidate's, with change points
found by `changepoint.detect_change_points` (E-divisive; a change must be at least min_effect).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from harness import changepoint, standin
from harness.baseline import (
    TREND_RUNS, BaselineError, BaselineRef, CellBaseline, CellKey, TagHistory, cell_jobs, resolve_baseline,
    resolve_candidate, run_baseline, tag_baseline,
)
from harness.compare import (
    IMPROVEMENT, INCONCLUSIVE, NO_CHANGE, REGRESSION, UNSTABLE, VERDICTS, Verdict, compare_latency, compare_memory,
)
from harness.protocol import json_safe
from harness.store import JobRecord, RunRecord, Store
from harness.thresholds import Override, Thresholds, parse_threshold_overrides, resolve_thresholds
from harness.variants import LADDER_LABELS

SCHEMA_VERSION = 1

# Memory figures of a JobResult compared per cell (bytes), in display order.
MEMORY_METRICS: tuple[str, ...] = ("tensor_bytes_measured", "peak_rss_bytes", "gpu_bytes", "weight_bytes")
MEMORY_LABELS: dict[str, str] = {
    "tensor_bytes_measured": "tensor", "peak_rss_bytes": "peak RSS", "gpu_bytes": "GPU", "weight_bytes": "weights",
}

# Device-state keys that report throttling (booleans), and the thermal-status scales that do.
_THROTTLE_FLAGS = ("throttled", "throttling", "thermal_throttling", "is_throttled", "cpu_throttled", "gpu_throttled")
# Android PowerManager thermal status: 0 none, 1 light (throttling starts), 2 moderate, 3 severe, ...
_ANDROID_THERMAL = ("none", "light", "moderate", "severe", "critical", "emergency", "shutdown")
# iOS ProcessInfo.thermalState: 0 nominal, 1 fair, 2 serious (the system throttles), 3 critical.
_IOS_THERMAL = ("nominal", "fair", "serious", "critical")

# A callback (candidate run id, cells) that reruns those cells of the candidate through the normal run
# path and returns the new run's id.
RerunFn = Callable[[str, list[CellKey]], str]

# Cell verdicts that mean "could not be judged" (with failed or missing candidate jobs, which are INCONCLUSIVE).
UNJUDGED: tuple[str, ...] = (UNSTABLE, INCONCLUSIVE)
# `harness compare` exit codes decided by the report (2, bad input, is the CLI's): a confirmed REGRESSION;
# with --strict, some cell could not be judged and no regression is confirmed.
EXIT_CONFIRMED = 1
EXIT_UNJUDGED = 3

# Verdict marks shared by every renderer.
MARKS: dict[str, str] = {REGRESSION: "▲", IMPROVEMENT: "▼", NO_CHANGE: "=", INCONCLUSIVE: "?", UNSTABLE: "~"}


def throttling_seen(state: Mapping[str, Any]) -> bool:
    """True when a device-state snapshot reports thermal throttling.

    Recognised: boolean keys in _THROTTLE_FLAGS; `thermal_status` (Android: >= 1 / "light" means the
    platform throttles); `thermal_state` (iOS: >= 2 / "serious").
    """
    for key, value in state.items():
        k = str(key).lower()
        if k in _THROTTLE_FLAGS and isinstance(value, (bool, int)) and bool(value):
            return True
        if k == "thermal_status":
            if isinstance(value, str) and value.lower() in _ANDROID_THERMAL[1:]:
                return True
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
                return True
        if k == "thermal_state":
            if isinstance(value, str) and value.lower() in _IOS_THERMAL[2:]:
                return True
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 2:
                return True
    return False


def job_throttled(job: JobRecord) -> bool:
    return throttling_seen(job.result.device_state_before) or throttling_seen(job.result.device_state_after)


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=float)))


def _no_verdict(reason: str, th: Thresholds, base: CellBaseline, job: JobRecord | None) -> Verdict:
    """INCONCLUSIVE latency verdict when no comparison is possible; the medians that exist are kept."""
    b = base.samples_ms
    c = job.result.samples_ms if job is not None and job.status == "ok" else []
    return Verdict(metric="latency_ms", verdict=INCONCLUSIVE, ratio=None, ci_low=None, ci_high=None, p_value=None,
                   n_baseline=len(b), n_candidate=len(c), reason=reason, thresholds=th,
                   baseline_median=_median(b) if b else None, candidate_median=_median(c) if c else None)


@dataclass(frozen=True)
class NightlyHistory:
    """The history gate's input for one cell, as of one night: the medians (oldest first) of the cell's
    accepted nightlies since its last re-baseline (up to TREND_RUNS), their run ids, and the change
    points found on these medians (indices; the gate window is the last history_k of them)."""

    medians: list[float] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    change_points: list[int] = field(default_factory=list)

    def window(self, k: int) -> list[str]:
        """The run ids of the gate window (the last k medians)."""
        return self.run_ids[-k:]


def nightly_history(history: TagHistory | None, key: CellKey, before: float, th: Thresholds) -> NightlyHistory:
    """The cell's nightly medians before `before` and their change points (E-divisive means, a change must
    be at least min_effect; searched only with >= 2 x changepoint.DEFAULT_MIN_SIZE medians)."""
    if history is None:
        return NightlyHistory()
    nights = history.history(key, before=before, k=max(th.history_k, TREND_RUNS))
    medians = [_median(n.job.result.samples_ms) for n in nights]
    found: list[int] = []
    if len(medians) >= 2 * changepoint.DEFAULT_MIN_SIZE:
        found = [cp.index for cp in changepoint.detect_change_points(medians, min_rel_change=th.min_effect)]
    return NightlyHistory(medians=medians, run_ids=[n.run_id for n in nights], change_points=found)


def evaluate_cell(job: JobRecord | None, base: CellBaseline, history: NightlyHistory | Sequence[float],
                  th: Thresholds) -> tuple[Verdict, dict[str, Verdict], bool]:
    """(latency verdict, memory verdicts by metric, throttled) of one job against its cell's baseline.

    history: a NightlyHistory (drift-aware gate), or bare history medians (stationary gate)."""
    if not isinstance(history, NightlyHistory):
        history = NightlyHistory(medians=[float(m) for m in history])
    throttled = bool(job is not None and job_throttled(job)) or any(job_throttled(j) for j in base.jobs)
    if job is None:
        return _no_verdict("the run has no job for this cell", th, base, job), {}, throttled
    if job.status != "ok":
        err = job.result.error
        why = f"{err.kind}: {err.message}" if err else "failed"
        return _no_verdict(f"the candidate job failed ({why})", th, base, job), {}, throttled
    if base.error:
        return _no_verdict(f"no baseline: {base.error}", th, base, job), {}, throttled
    if not job.result.samples_ms:
        return _no_verdict("the candidate job recorded no timed samples", th, base, job), {}, throttled
    latency = compare_latency(base.samples_ms, job.result.samples_ms, history.medians, th, throttled=throttled,
                              history_change_points=history.change_points,
                              history_labels=history.run_ids if len(history.run_ids) == len(history.medians) else ())
    memory: dict[str, Verdict] = {}
    for metric in MEMORY_METRICS:
        cand = getattr(job.result.memory, metric)
        pooled = [v for v in (getattr(b.result.memory, metric) for b in base.jobs) if v is not None]
        if cand is not None and pooled:
            memory[metric] = replace(compare_memory(pooled, [cand], th), metric=metric)
    return latency, memory, throttled


def cell_verdict(latency: Verdict, memory: Mapping[str, Verdict]) -> str:
    """REGRESSION if any metric regressed; else the latency verdict (NO CHANGE + memory IMPROVEMENT: IMPROVEMENT)."""
    if latency.verdict == REGRESSION or any(v.verdict == REGRESSION for v in memory.values()):
        return REGRESSION
    if latency.verdict == NO_CHANGE and any(v.verdict == IMPROVEMENT for v in memory.values()):
        return IMPROVEMENT
    return latency.verdict


def regressed_metrics(latency: Verdict, memory: Mapping[str, Verdict]) -> list[str]:
    return [v.metric for v in (latency, *memory.values()) if v.verdict == REGRESSION]


@dataclass
class RunMeta:
    """What the report says about a run (metadata only)."""

    id: str
    suite_name: str
    status: str
    started_at: float
    ended_at: float | None
    git_commit: str | None
    host: str | None
    run_group: str | None = None
    tags: list[str] = field(default_factory=list)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, run: RunRecord) -> "RunMeta":
        keep = ("kind", "name", "model", "soc", "gpu", "os_version", "ram_bytes", "stand_in")
        return cls(id=run.id, suite_name=run.suite_name, status=run.status, started_at=run.started_at,
                   ended_at=run.ended_at, git_commit=run.git_commit, host=run.host, run_group=run.run_group,
                   tags=sorted(run.tags), devices={d: {k: info.get(k) for k in keep if info.get(k) not in (None, "")}
                                                   for d, info in run.devices.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CellResult:
    """Everything the reports show about one cell; the verdicts are compare.Verdict data."""

    key: CellKey
    label: str
    variant_index: int
    status: str  # the candidate job's status: ok | failed | missing
    verdict: str  # the cell's verdict (cell_verdict)
    latency: Verdict
    memory: dict[str, Verdict] = field(default_factory=dict)
    confirmed: bool = False
    confirmation: str = ""  # how a REGRESSION was (or was not) confirmed
    throttled: bool = False
    error: str | None = None  # the candidate job's error
    baseline_runs: list[str] = field(default_factory=list)
    baseline_note: str = ""
    rebaseline: dict[str, Any] | None = None
    history_runs: list[str] = field(default_factory=list)  # runs whose medians formed the history gate
    trend: list[dict[str, Any]] = field(default_factory=list)  # {run_id, started_at, median_ms, candidate}
    change_points: list[dict[str, Any]] = field(default_factory=list)  # ChangePoint fields + run_id, started_at
    op_deltas: list[dict[str, Any]] = field(default_factory=list)  # {category, baseline_ms, candidate_ms, ratio}
    candidate_memory: dict[str, Any] = field(default_factory=dict)  # the candidate's MemoryFigures
    state_before: dict[str, Any] = field(default_factory=dict)
    state_after: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] | None = None  # the previous nightly's verdicts: {run_id, verdicts, reasons}
    rerun: dict[str, Any] | None = None  # the rerun's verdicts: {run_id, verdicts, reasons}
    sampling: dict[str, Any] | None = None  # same-session A/B: harness.abtest.ABSession.to_dict()
    stand_in: list[str] = field(default_factory=list)  # the candidate's stand-ins (harness.standin); [] real

    @property
    def regressed(self) -> list[str]:
        return regressed_metrics(self.latency, self.memory)

    @property
    def severity(self) -> float:
        """The largest relative rise among the regressed metrics (0 when none regressed)."""
        rises = [(v.ratio or 1.0) - 1.0 for v in (self.latency, *self.memory.values()) if v.verdict == REGRESSION]
        return max(rises, default=0.0)

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["key"] = self.key.as_dict()
        out["latency"] = self.latency.to_dict()
        out["memory"] = {k: v.to_dict() for k, v in self.memory.items()}
        out["regressed"] = self.regressed
        out["severity"] = self.severity
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CellResult":
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["key"] = CellKey(**data["key"])
        values["latency"] = Verdict.from_dict(data["latency"])
        values["memory"] = {k: Verdict.from_dict(v) for k, v in (data.get("memory") or {}).items()}
        return cls(**values)




@dataclass
class RegressionReport:
    """The outcome of one comparison: the content of regressions.json and of every rendered report."""

    baseline: dict[str, Any]  # BaselineRef.to_dict()
    candidate: RunMeta
    cells: list[CellResult]
    baseline_runs: list[RunMeta] = field(default_factory=list)
    history_tag: str | None = None
    rerun_run: RunMeta | None = None
    rerun_error: str | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)  # {defaults, overrides, sources}
    missing_cells: list[dict[str, str]] = field(default_factory=list)  # in the previous nightly, not in the candidate
    notes: list[str] = field(default_factory=list)
    generated_at: str = field(default_factory=lambda: dt.datetime.now().isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION
    design: str | None = None  # same-session A/B: harness.abtest.describe(plan); None for a nightly comparison

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(VERDICTS, 0)
        for cell in self.cells:
            out[cell.verdict] += 1
        return out

    def regressions(self) -> list[CellResult]:
        """REGRESSION cells, worst first: confirmed before unconfirmed, then by the largest rise."""
        cells = [c for c in self.cells if c.verdict == REGRESSION]
        return sorted(cells, key=lambda c: (not c.confirmed, -c.severity, c.key))

    def confirmed_regressions(self) -> list[CellResult]:
        return [c for c in self.regressions() if c.confirmed]

    def unjudged(self) -> list[CellResult]:
        """Cells that could not be judged: UNSTABLE or INCONCLUSIVE (a failed or missing candidate job is
        INCONCLUSIVE too). No regression shown in them is not "no regression"."""
        return [c for c in self.cells if c.verdict in UNJUDGED or c.status != "ok"]

    def unjudged_counts(self) -> dict[str, int]:
        """Why cells were not judged: {"UNSTABLE": n, "INCONCLUSIVE": n, "failed": n} (failed or missing
        candidate jobs counted apart from the other INCONCLUSIVE cells), zero counts left out."""
        out = {UNSTABLE: 0, INCONCLUSIVE: 0, "failed": 0}
        for cell in self.unjudged():
            out["failed" if cell.status != "ok" else cell.verdict] += 1
        return {k: v for k, v in out.items() if v}

    def exit_code(self, strict: bool = False) -> int:
        """EXIT_CONFIRMED (1) when a REGRESSION is confirmed; else, with strict, EXIT_UNJUDGED (3) when some
        cell could not be judged; else 0. Input errors are the CLI's 2."""
        if self.confirmed_regressions():
            return EXIT_CONFIRMED
        if strict and self.unjudged():
            return EXIT_UNJUDGED
        return 0

    def summary(self) -> dict[str, Any]:
        return {"counts": self.counts(), "cells": len(self.cells), "regressions": len(self.regressions()),
                "confirmed_regressions": len(self.confirmed_regressions()), "exit_code": self.exit_code(),
                "unjudged": len(self.unjudged()), "unjudged_counts": self.unjudged_counts(),
                "exit_code_strict": self.exit_code(strict=True),
                "worst": [c.key.as_dict() for c in self.regressions()]}

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "schema_version": self.schema_version,
            "generated_at": self.generated_at,
            "summary": self.summary(),
            "baseline": self.baseline,
            "baseline_runs": [r.to_dict() for r in self.baseline_runs],
            "candidate": self.candidate.to_dict(),
            "history_tag": self.history_tag,
            "rerun_run": self.rerun_run.to_dict() if self.rerun_run else None,
            "rerun_error": self.rerun_error,
            "thresholds": self.thresholds,
            "missing_cells": self.missing_cells,
            "notes": self.notes,
            "design": self.design,
            "cells": [c.to_dict() for c in self.cells],
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RegressionReport":
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"regressions.json has schema_version {data.get('schema_version')!r}; "
                             f"this harness reads {SCHEMA_VERSION}")
        return cls(
            baseline=dict(data["baseline"]), candidate=RunMeta(**data["candidate"]),
            cells=[CellResult.from_dict(c) for c in data["cells"]],
            baseline_runs=[RunMeta(**r) for r in data.get("baseline_runs", [])],
            history_tag=data.get("history_tag"),
            rerun_run=RunMeta(**data["rerun_run"]) if data.get("rerun_run") else None,
            rerun_error=data.get("rerun_error"), thresholds=dict(data.get("thresholds") or {}),
            missing_cells=list(data.get("missing_cells") or []), notes=list(data.get("notes") or []),
            generated_at=data.get("generated_at", ""), schema_version=data["schema_version"],
            design=data.get("design"),
        )


def _op_deltas(job: JobRecord | None, base: CellBaseline) -> list[dict[str, Any]]:
    """Per op category: median of the baseline jobs' op times vs the candidate's (ms per iteration)."""
    if job is None or job.status != "ok" or not job.result.op_times_ms:
        return []
    out = []
    for category, cand_ms in job.result.op_times_ms.items():
        base_values = [b.result.op_times_ms[category] for b in base.jobs if category in b.result.op_times_ms]
        if not base_values:
            continue
        base_ms = _median(base_values)
        out.append({"category": category, "baseline_ms": base_ms, "candidate_ms": float(cand_ms),
                    "ratio": float(cand_ms) / base_ms if base_ms > 0 else None})
    return sorted(out, key=lambda d: (d["category"] == "other", -abs(d["candidate_ms"] - d["baseline_ms"])))


def _verdicts_of(latency: Verdict, memory: Mapping[str, Verdict]) -> dict[str, Any]:
    return {"verdicts": {v.metric: v.verdict for v in (latency, *memory.values())},
            "reasons": {v.metric: v.reason for v in (latency, *memory.values())}}


def _trend(history: TagHistory | None, key: CellKey, job: JobRecord | None, candidate: RunRecord,
           th: Thresholds) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if history is None:
        return [], []
    points = [{"run_id": n.run_id, "started_at": n.started_at, "median_ms": _median(n.job.result.samples_ms),
               "candidate": False} for n in history.trend(key, before=candidate.started_at)]
    if job is not None and job.status == "ok" and job.result.samples_ms:
        points.append({"run_id": candidate.id, "started_at": candidate.started_at,
                       "median_ms": _median(job.result.samples_ms), "candidate": True})
    changes: list[dict[str, Any]] = []
    if len(points) >= 2 * changepoint.DEFAULT_MIN_SIZE:
        found = changepoint.detect_change_points([p["median_ms"] for p in points], min_rel_change=th.min_effect)
        for cp in found:
            changes.append({**cp.to_dict(), "run_id": points[cp.index]["run_id"],
                            "started_at": points[cp.index]["started_at"]})
    return points, changes


def load_overrides(candidate: RunRecord, extra: Sequence[Override] = (), extra_source: str | None = None,
                   ) -> tuple[list[Override], list[str], list[dict[str, Any]]]:
    """The candidate suite's `thresholds:` overrides, then `extra` (a --thresholds file): later ones win."""
    try:
        suite_overrides = parse_threshold_overrides(candidate.suite.get("thresholds") or [])
    except ValueError as exc:
        raise BaselineError(f"the candidate run's suite has invalid thresholds: {exc}") from None
    sources = []
    if suite_overrides:
        sources.append(f"suite {candidate.suite_name!r} ({len(suite_overrides)} override(s))")
    if extra:
        sources.append(f"{extra_source or 'thresholds file'} ({len(extra)} override(s))")
    overrides = [*suite_overrides, *extra]
    listed = [{"match": m, "set": s} for m, s in overrides]
    return overrides, sources, listed


def compare_runs(store: Store, baseline: str, candidate: str = "latest", overrides: Sequence[Override] = (),
                 overrides_source: str | None = None, rerun: RerunFn | None = None,
                 history_tag: str | None = None) -> RegressionReport:
    """Compare the candidate run (id, prefix or 'latest') with a baseline (run or tag); see the module docstring.

    Raises BaselineError (or StoreError) when there is nothing to compare; a failing rerun callback is
    recorded in `rerun_error` and leaves its cells unconfirmed.
    """
    cand = store.load_run(resolve_candidate(store, candidate))
    if not cand.jobs:
        raise BaselineError(f"candidate run {cand.id} has no jobs (status {cand.status}); nothing to compare")
    ref: BaselineRef = resolve_baseline(store, baseline)
    all_overrides, sources, listed = load_overrides(cand, overrides, overrides_source)
    tag = ref.tag if ref.kind == "tag" else history_tag
    history = TagHistory(store, tag, before=cand.started_at, exclude={cand.id}) if tag else None
    if ref.kind == "tag":
        assert history is not None
        baselines = tag_baseline(history, cand)
    else:
        assert ref.run_id is not None
        baselines = run_baseline(store, ref.run_id, cand)

    cells: list[CellResult] = []
    thresholds_of: dict[CellKey, Thresholds] = {}
    history_of: dict[CellKey, NightlyHistory] = {}
    cand_jobs = cell_jobs(cand.jobs)
    for key, job in cand_jobs.items():
        th = resolve_thresholds(key.as_dict(), all_overrides)
        thresholds_of[key] = th
        base = baselines[key]
        history_of[key] = nightly_history(history, key, cand.started_at, th)
        latency, memory, throttled = evaluate_cell(job, base, history_of[key], th)
        trend, changes = _trend(history, key, job, cand, th)
        err = job.result.error
        cells.append(CellResult(
            key=key, label=standin.marked(LADDER_LABELS.get(key.variant, key.variant), job.result.stand_in),
            stand_in=list(job.result.stand_in), variant_index=job.variant_index,
            status=job.status, verdict=cell_verdict(latency, memory), latency=latency, memory=memory,
            throttled=throttled, error=f"{err.kind}: {err.message}" if err else None,
            baseline_runs=base.run_ids, baseline_note=base.error or base.note, rebaseline=base.rebaseline,
            history_runs=history_of[key].window(th.history_k), trend=trend, change_points=changes,
            op_deltas=_op_deltas(job, base), candidate_memory=job.result.memory.model_dump(),
            state_before=dict(job.result.device_state_before), state_after=dict(job.result.device_state_after),
        ))

    report = RegressionReport(
        baseline=ref.to_dict(), candidate=RunMeta.of(cand), cells=cells, history_tag=tag,
        thresholds={"defaults": Thresholds().to_dict(), "overrides": listed, "sources": sources},
    )
    used = sorted({rid for c in cells for rid in c.baseline_runs})
    report.baseline_runs = [RunMeta.of(store.load_run(rid)) for rid in used] if len(used) <= 50 else []
    if history is None and ref.kind == "run":
        report.notes.append("No nightly history (the baseline is a single run and no --history tag was given): "
                            "the history gate is skipped and there are no trend plots.")
    if history is not None and history.rejected:
        report.notes.append(f"{len(history.rejected)} run(s) tagged {tag!r} are marked rejected and not used.")

    # 1. Previous nightly (tag baselines): the same metric regressed there too.
    if ref.kind == "tag" and history is not None:
        for cell in cells:
            if cell.verdict != REGRESSION:
                continue
            prev = history.previous(cell.key, before=cand.started_at)
            if prev is None:
                cell.confirmation = "no previous nightly of this cell to confirm with"
                continue
            th = thresholds_of[cell.key]
            prev_base = history.pool(cell.key, before=prev.started_at)
            # The previous nightly's own history (before it), with its own change points: the same
            # drift-aware gate as the candidate's.
            prev_hist = nightly_history(history, cell.key, prev.started_at, th)
            lat, mem, _ = evaluate_cell(prev.job, prev_base, prev_hist, th)
            cell.previous = {"run_id": prev.run_id, **_verdicts_of(lat, mem)}
            both = sorted(set(cell.regressed) & set(regressed_metrics(lat, mem)))
            if both:
                cell.confirmed = True
                cell.confirmation = f"also a REGRESSION ({', '.join(both)}) in the previous nightly {prev.run_id}"
            else:
                cell.confirmation = (f"the previous nightly {prev.run_id} was "
                                     f"{lat.verdict} for latency_ms: not confirmed by it")

    # 2. Automatic rerun of the regressed cells not confirmed yet.
    pending = [c for c in cells if c.verdict == REGRESSION and not c.confirmed]
    if pending and rerun is not None:
        try:
            rerun_id = rerun(cand.id, [c.key for c in pending])
            rerun_run = store.load_run(rerun_id)
        except Exception as exc:  # noqa: BLE001 - a failed rerun is reported, not fatal
            report.rerun_error = f"{type(exc).__name__}: {exc}"
            report.notes.append(f"The automatic rerun failed ({report.rerun_error}); "
                                f"{len(pending)} REGRESSION(s) stay unconfirmed.")
            for cell in pending:
                cell.confirmation = (cell.confirmation + "; " if cell.confirmation else "") + "the rerun failed"
        else:
            report.rerun_run = RunMeta.of(rerun_run)
            rerun_jobs = cell_jobs(rerun_run.jobs)
            for cell in pending:
                th = thresholds_of[cell.key]
                lat, mem, _ = evaluate_cell(rerun_jobs.get(cell.key), baselines[cell.key],
                                            history_of[cell.key], th)
                cell.rerun = {"run_id": rerun_run.id, **_verdicts_of(lat, mem)}
                both = sorted(set(cell.regressed) & set(regressed_metrics(lat, mem)))
                prefix = cell.confirmation + "; " if cell.confirmation else ""
                if both:
                    cell.confirmed = True
                    cell.confirmation = f"{prefix}reproduced ({', '.join(both)}) on the rerun {rerun_run.id}"
                else:
                    cell.confirmation = f"{prefix}not reproduced on the rerun {rerun_run.id} ({lat.verdict}: {lat.reason})"
    elif pending:
        for cell in pending:
            cell.confirmation = (cell.confirmation + "; " if cell.confirmation else "") + "no rerun was asked for (--rerun)"

    # Cells the previous nightly had that the candidate lacks (a device or a variant went missing).
    if history is not None and history.runs:
        last_cells = set(history.cells_of(history.runs[-1]["id"]))
        report.missing_cells = [k.as_dict() for k in sorted(last_cells - set(cand_jobs))]
        if report.missing_cells:
            report.notes.append(f"{len(report.missing_cells)} cell(s) of the previous nightly "
                                f"{history.runs[-1]['id']} are missing from the candidate run.")
    cells.sort(key=lambda c: (c.key.device, c.key.workload, c.key.options_hash, c.variant_index, c.key.variant))
    return report
