"""Same-session A/B: a baseline run's and a candidate run's jobs, interleaved on one device (`harness compare --ab`).

The statistics and the sampling state machine are `harness.abtest`; this module is the orchestration,
on the same path as every other run (suite -> plan -> device -> store -> verdict -> report):

1. Both stored runs' suites are expanded again for the session's devices (a stored run knows what it
   ran: its suite, hence its variants, options, artifacts through the export cache, benchmark_model
   flags); their jobs are paired by cell (device, workload, variant, sweep coordinates). Host runtimes
   that run an artifact get it from the cache, as `harness run` does.
2. Per device, per pair, an `ABSession` decides which side runs next (ABBA blocks); each block is one
   job of that side with `measure.iterations = block` (the reference check only on each side's first
   block), run through the device's ordinary `run_job`: host, Android and iOS alike.
3. Each side's blocks of a cell are stored as one job (samples in the order they ran, `extra.ab`: the
   design, every block and look, why sampling stopped) in two new runs, A and B, of run group
   `ab:<session>`: `harness report` and `harness compare` read them like any run.
4. The verdicts become a `RegressionReport` (cells with `sampling`), so every renderer (terminal,
   Markdown, JUnit, JSON, HTML) shows them. A REGRESSION shown within one session under the alpha
   spending is confirmed by design (the same device, the same session: replication is built in).

Ctrl-C: the block in flight is dropped, everything finished is stored (the cell in flight with its
blocks so far), both runs are marked interrupted and KeyboardInterrupt propagates.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import standin
from harness.abtest import A, B, ABSession, SequentialPlan, describe
from harness.baseline import AB_GROUP_PREFIX, BaselineError, CellBaseline, CellKey, resolve_baseline, resolve_candidate
from harness.compare import REGRESSION, compare_memory
from harness.devices.base import DeviceContext, DeviceDisconnectedError, DeviceError, DeviceInfo, open_device
from harness.protocol import JobResult
from harness.regression import (
    MEMORY_METRICS, CellResult, RegressionReport, RunMeta, _no_verdict, cell_verdict, load_overrides,
    throttling_seen,
)
from harness.store import Store, new_run_id
from harness.runner import safe_name, store_job
from harness.suite import PlannedJob, Suite, expand
from harness.thresholds import Override, Thresholds, resolve_thresholds
from harness.variants import LADDER_LABELS

# (side, pair, block index, session) -> None: what the CLI's progress line shows.
BlockProgress = Callable[[str, "ABPair", int, ABSession], None]


@dataclass
class ABPair:
    key: CellKey  # the candidate's cell
    a: PlannedJob
    b: PlannedJob


@dataclass
class ABSetup:
    a_source: str  # the stored runs the sides come from
    b_source: str
    a_suite: Suite
    b_suite: Suite
    a_jobs: list[PlannedJob]
    b_jobs: list[PlannedJob]
    pairs: list[ABPair]
    notes: list[str] = field(default_factory=list)


def _suite_of(store: Store, run_id: str, side: str) -> Suite:
    run = store.load_run(run_id)
    try:
        return Suite.model_validate(run.suite)
    except ValueError as exc:
        raise BaselineError(f"cannot run the {side} side: run {run_id}'s stored suite no longer validates: {exc}") from None


def _source_run(store: Store, ref: str, side: str) -> str:
    """A run id for one side: a run (id, prefix, 'latest'), or a tag's newest run."""
    if side == "candidate":
        return resolve_candidate(store, ref)
    ref_ = resolve_baseline(store, ref)
    if ref_.kind == "run":
        assert ref_.run_id is not None
        return ref_.run_id
    runs = [r for r in store.tagged_runs(ref_.tag or ref) if not r.get("rejected")]
    if not runs:
        raise BaselineError(f"tag {ref!r} names no accepted run")
    return runs[-1]["id"]


def _cell(job: PlannedJob) -> tuple[str, str, str, str]:
    return (job.device, job.spec.workload, job.variant, json.dumps(job.axes, sort_keys=True, default=str))


def pair_runs(store: Store, baseline: str, candidate: str, devices: Sequence[str]) -> ABSetup:
    """Expand both stored runs' suites for `devices` and pair their jobs by cell (see the module doc)."""
    a_id, b_id = _source_run(store, baseline, "baseline"), _source_run(store, candidate, "candidate")
    if a_id == b_id:
        notes = [f"baseline and candidate are the same run {a_id}: an A/A session (a check of the device's noise)"]
    else:
        notes = []
    a_suite, b_suite = _suite_of(store, a_id, "baseline"), _suite_of(store, b_id, "candidate")
    a_plan, b_plan = expand(a_suite, list(devices), "ab-a"), expand(b_suite, list(devices), "ab-b")
    a_by = {_cell(j): j for j in a_plan.jobs}
    pairs: list[ABPair] = []
    for j in b_plan.jobs:
        match = a_by.pop(_cell(j), None)
        if match is None:
            notes.append(f"{j.device} {j.variant}: only in the candidate's suite; not compared")
            continue
        pairs.append(ABPair(key=CellKey(device=j.device, workload=j.spec.workload, variant=j.variant,
                                        options_hash=j.options_hash), a=match, b=j))
    notes += [f"{j.device} {j.variant}: only in the baseline's suite; not compared" for j in a_by.values()]
    if not pairs:
        raise BaselineError(f"runs {a_id} and {b_id} share no cell (device x workload x variant x sweep "
                            f"coordinates) on {', '.join(devices)}; nothing to compare")
    return ABSetup(a_source=a_id, b_source=b_id, a_suite=a_suite, b_suite=b_suite, a_jobs=a_plan.jobs,
                   b_jobs=b_plan.jobs, pairs=pairs, notes=notes)


def _block_spec(job: PlannedJob, side: str, index: int, run_id: str, block: int, first: bool):
    measure = job.spec.measure.model_copy(update={"iterations": block, "min_seconds": 0.0})
    check = job.spec.check if first else job.spec.check.model_copy(update={"enabled": False})
    return job.spec.model_copy(update={"job_id": f"{job.spec.job_id}-{side}{index:03d}", "run_id": run_id,
                                       "measure": measure, "check": check})


def _pool(results: list[JobResult], job_id: str, ab: dict[str, Any]) -> JobResult:
    """One side's blocks as one stored job: samples in run order, the first block's check and memory."""
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        failed = results[-1] if results else JobResult.failure(job_id, "interrupted", "no block finished")
        return failed.model_copy(update={"job_id": job_id, "extra": {**failed.extra, "ab": ab}})
    first, last = ok[0], ok[-1]
    peaks = [r.memory.peak_rss_bytes for r in ok if r.memory.peak_rss_bytes is not None]
    memory = first.memory.model_copy(update={"peak_rss_bytes": max(peaks) if peaks else None})
    return first.model_copy(update={
        "job_id": job_id, "samples_ms": [x for r in ok for x in r.samples_ms],
        "warmup_ms": [x for r in ok for x in r.warmup_ms], "memory": memory,
        "device_state_after": last.device_state_after, "ended_at": last.ended_at,
        "extra": {**first.extra, "ab": ab},
    })


def _memory_verdicts(a: list[JobResult], b: list[JobResult], th) -> dict:
    out = {}
    for metric in MEMORY_METRICS:
        va = [getattr(r.memory, metric) for r in a if r.status == "ok" and getattr(r.memory, metric) is not None]
        vb = [getattr(r.memory, metric) for r in b if r.status == "ok" and getattr(r.memory, metric) is not None]
        if va and vb:
            out[metric] = compare_memory(va, vb, th)
    return out


def run_ab(store: Store, ctx: DeviceContext, setup: ABSetup, infos: Sequence[DeviceInfo], plan: SequentialPlan,
           workdir: Path, overrides: Sequence[Override] = (), overrides_source: str | None = None,
           progress: BlockProgress | None = None) -> RegressionReport:
    """Run every pair's A/B session and judge it; see the module docstring."""
    session_id = new_run_id()
    a_run, b_run = f"{session_id}-A", f"{session_id}-B"
    group = f"{AB_GROUP_PREFIX}{session_id}"
    for run_id, suite, source in ((a_run, setup.a_suite, setup.a_source), (b_run, setup.b_suite, setup.b_source)):
        doc = suite.model_dump(mode="json")
        doc["devices"] = [i.id for i in infos]
        doc["ab_source_run"] = source
        store.create_run(run_id, suite.name, doc, None, group)
    cand = store.load_run(setup.b_source)
    all_overrides, sources, listed = load_overrides(cand, overrides, overrides_source)
    sessions: dict[CellKey, tuple[ABSession, list[JobResult], list[JobResult]]] = {}
    status = "completed"
    try:
        for info in infos:
            pairs = [p for p in setup.pairs if p.key.device == info.id]
            if not pairs:
                continue
            for run_id in (a_run, b_run):
                store.record_device(run_id, info.to_dict())
            try:
                device = open_device(info, ctx)
                device.prepare([p.a.spec for p in pairs] + [p.b.spec for p in pairs])
            except DeviceError as exc:
                for p in pairs:
                    fail = JobResult.failure(p.b.spec.job_id, "device", f"{info.id}: {exc}",
                                             started_at=time.time(), ended_at=time.time())
                    s = ABSession(plan=plan, thresholds=resolve_thresholds(p.key.as_dict(), all_overrides))
                    s.stop(f"the device could not be prepared: {exc}")
                    sessions[p.key] = (s, [fail], [fail])
                continue
            try:
                for p in pairs:
                    _session(device, p, plan, resolve_thresholds(p.key.as_dict(), all_overrides),
                             workdir / session_id, (a_run, b_run), sessions, progress)
            finally:
                device.close()
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException:
        status = "failed"
        raise
    finally:
        for key, (s, ra, rb) in sessions.items():
            if status != "completed":
                s.stop("interrupted (Ctrl-C): the block in flight was dropped" if status == "interrupted"
                       else "the session failed (see the error above)")
            pair = next(p for p in setup.pairs if p.key == key)
            ab = {**s.to_dict(), "session": session_id, "a_run": a_run, "b_run": b_run}
            for run_id, job, res, side in ((a_run, pair.a, ra, A), (b_run, pair.b, rb, B)):
                values = s.samples_a if side == A else s.samples_b  # what the verdict used, in its unit
                store_job(store, run_id, job, _pool(res, f"{job.spec.job_id}-{side}", {**ab, "side": side,
                                                                                        "values": values}), len(res))
        store.finish_run(a_run, status)
        store.finish_run(b_run, status)

    cells: list[CellResult] = []
    info_of = {i.id: i for i in infos}
    for pair in setup.pairs:
        if pair.key not in sessions:
            continue
        s, ra, rb = sessions[pair.key]
        th = s.thresholds
        last_b = rb[-1] if rb else None
        if s.verdict is None:
            why = s.stop_reason or "no look was reached"
            latency = _no_verdict(f"A/B session ended before its first look: {why}", th, CellBaseline(key=pair.key),
                                  None)
        else:
            latency = s.verdict
        memory = _memory_verdicts(ra, rb, th)
        verdict = cell_verdict(latency, memory)
        err = last_b.error if last_b is not None and last_b.status == "failed" else None
        if err is None:
            failed = [r for r in ra if r.status == "failed"]
            err = failed[-1].error if failed else None
        stand_in = standin.merge(info_of[pair.key.device].stand_in if pair.key.device in info_of else [],
                                 *(r.stand_in for r in [*ra, *rb]))
        cells.append(CellResult(
            key=pair.key, label=standin.marked(LADDER_LABELS.get(pair.key.variant, pair.key.variant), stand_in),
            stand_in=stand_in,
            variant_index=pair.b.variant_index, status="ok" if s.verdict is not None and err is None else "failed",
            verdict=verdict, latency=latency, memory=memory, throttled=s.throttled,
            confirmed=verdict == REGRESSION,
            confirmation=("shown within one A/B session (alpha spent over the looks): confirmed by design"
                          if verdict == REGRESSION else ""),
            error=f"{err.kind}: {err.message}" if err else None,
            baseline_runs=[a_run], baseline_note=f"A side: run {setup.a_source}'s jobs re-run in session {session_id}",
            candidate_memory=(rb[0].memory.model_dump() if rb and rb[0].status == "ok" else {}),
            sampling=s.to_dict(),
        ))
    report = RegressionReport(
        baseline={"kind": "ab", "ref": setup.a_source, "run_id": a_run, "tag": None,
                  "description": f"run {setup.a_source}, re-run as side A of session {session_id} (run {a_run})"},
        candidate=RunMeta.of(store.load_run(b_run)), cells=cells,
        baseline_runs=[RunMeta.of(store.load_run(a_run))],
        thresholds={"defaults": Thresholds().to_dict(), "overrides": listed, "sources": sources},
        notes=list(setup.notes), design=describe(plan),
    )
    report.notes.insert(0, f"Same-session A/B: side A re-runs {setup.a_source}, side B re-runs {setup.b_source}; "
                           f"stored as runs {a_run} and {b_run} (group {group}). No history gate: both sides share "
                           "the session's drift.")
    return report


def _session(device, pair: ABPair, plan: SequentialPlan, th, workdir: Path, runs: tuple[str, str],
             sessions: dict, progress: BlockProgress | None) -> None:
    s = ABSession(plan=plan, thresholds=th)
    ra: list[JobResult] = []
    rb: list[JobResult] = []
    sessions[pair.key] = (s, ra, rb)
    index = 0
    while not s.done:
        side = s.next_side()
        job, results, run_id = (pair.a, ra, runs[0]) if side == A else (pair.b, rb, runs[1])
        if progress:
            progress(side, pair, index, s)
        spec = _block_spec(job, side, index, run_id, plan.block, first=not results)
        started = time.time()
        try:
            result = device.run_job(spec, workdir / f"{safe_name(pair.key.variant)}-{side}{index:03d}")
        except DeviceDisconnectedError as exc:
            result = JobResult.failure(spec.job_id, "device", str(exc), transient=True,
                                       started_at=started, ended_at=time.time())
        except KeyboardInterrupt:
            device.cancel()  # stop the block's agent on the device; finished blocks stay
            raise
        results.append(result)
        index += 1
        samples = block_samples(result, s)
        if result.status != "ok" or not samples:
            why = f"{result.error.kind}: {result.error.message}" if result.error else "no timed samples"
            s.stop(f"a block of side {side} failed ({why}); the last look's verdict stands")
            break
        s.add(side, samples, seconds=(result.ended_at or time.time()) - (result.started_at or started),
              started_at=result.started_at,
              throttled=throttling_seen(result.device_state_before) or throttling_seen(result.device_state_after))


def block_samples(result: JobResult, session: ABSession) -> list[float]:
    """A block's samples: its timed runs; or, from a device that reports only a summary per launch
    (Android's benchmark_model: count, avg, std, and a median in newer builds; `execution.latency_summary_ms`),
    one value per block, its median (else mean), and the session's unit becomes the launch."""
    summary = result.execution.latency_summary_ms
    if summary is None:
        return list(result.samples_ms)
    session.sample_unit = "launch"
    value = summary.median if summary.median is not None else summary.avg
    return [float(value)] if value is not None and value > 0 else []



