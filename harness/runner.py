"""The controller's run loop: plan -> devices -> results store, with progress and Ctrl-C safety."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.devices.base import (
    Device, DeviceContext, DeviceDisconnectedError, DeviceError, DeviceInfo, DeviceUnavailableError, open_device,
)
from harness.protocol import JobResult
from harness.store import Store
from harness.suite import Plan, PlannedJob


@dataclass
class RunOutcome:
    run_id: str
    status: str  # completed | interrupted
    ok: int = 0
    failed: int = 0
    retried: int = 0
    failures: list[tuple[PlannedJob, JobResult]] = field(default_factory=list)


class Progress:
    """What the run loop reports; the CLI renders it with rich. The default does nothing."""

    def start(self, total_jobs: int) -> None: ...
    def job_started(self, job: PlannedJob) -> None: ...
    def job_phase(self, job: PlannedJob, phase: str, done: int, total: int) -> None: ...
    def job_finished(self, job: PlannedJob, result: JobResult) -> None: ...
    def stop(self) -> None: ...


def eta_seconds(finished_s: list[float], remaining: int, current_elapsed_s: float = 0.0,
                parallel: int = 1) -> float | None:
    """Seconds until the run ends: the mean duration of the finished jobs times the jobs left (the one
    in flight counts, less what it has run), spread over `parallel` devices; None before any job has
    finished (nothing to go by)."""
    if not finished_s or remaining <= 0:
        return 0.0 if remaining <= 0 else None
    mean = sum(finished_s) / len(finished_s)
    return max(0.0, mean * remaining - current_elapsed_s) / max(1, parallel)


def format_eta(seconds: float | None) -> str:
    """'ETA 4m05s', 'ETA 1h02m', or 'ETA --' when unknown."""
    if seconds is None:
        return "ETA --"
    s = int(round(seconds))
    if s >= 3600:
        return f"ETA {s // 3600}h{s % 3600 // 60:02d}m"
    return f"ETA {s // 60}m{s % 60:02d}s"


def shard_devices(device_ids: list[str], shard: str | None) -> list[str]:
    """`--shard i/n`: the devices of shard i (1-based) of n, a deterministic partition by device.

    Devices are sorted by id and dealt round-robin, so every CI runner that sees the same farm
    computes the same split and each device lands in exactly one shard."""
    if not shard:
        return device_ids
    try:
        i, n = (int(x) for x in shard.split("/"))
        if not 1 <= i <= n:
            raise ValueError
    except ValueError:
        raise ValueError(f"--shard {shard!r}: expected I/N with 1 <= I <= N, e.g. --shard 2/4") from None
    return [d for k, d in enumerate(sorted(device_ids)) if k % n == i - 1]


def execute(plan: Plan, infos: list[DeviceInfo], store: Store, run_id: str, ctx: DeviceContext,
            workdir: Path, progress: Progress | None = None, retries: int = 1,
            skip_keys: set[str] | None = None, max_parallel: int | None = None) -> RunOutcome:
    """Run every job of the plan, storing each result as it finishes.

    One worker per device (at most `max_parallel` at once), one job at a time per device, each
    device's jobs in plan order. A failed job is a stored result and the others go on; a device
    that cannot be prepared fails its own jobs only. Transient failures (a device that dropped, an
    error marked transient) are retried up to `retries` more times. On Ctrl-C/SIGTERM the jobs in
    flight are stopped (their agents killed) and not stored, everything finished stays stored, and
    the run is marked interrupted.
    """
    progress = progress or Progress()
    outcome = RunOutcome(run_id=run_id, status="running")
    by_device: dict[str, list[PlannedJob]] = {}
    for job in plan.jobs:
        if skip_keys and job.job_key in skip_keys:
            continue
        by_device.setdefault(job.device, []).append(job)
    info_by_id = {i.id: i for i in infos}
    stop = threading.Event()
    lock = threading.Lock()
    live: dict[str, Device] = {}

    def finish(job: PlannedJob, result: JobResult, attempts: int) -> None:
        store_job(store, run_id, job, result, attempts)
        with lock:
            outcome.retried += attempts - 1
            if result.status == "ok":
                outcome.ok += 1
            else:
                outcome.failed += 1
                outcome.failures.append((job, result))
        progress.job_finished(job, result)

    def worker(device_id: str, jobs: list[PlannedJob]) -> None:
        info = info_by_id[device_id]
        store.record_device(run_id, info.to_dict())
        try:
            if not info.ready:
                raise DeviceUnavailableError(f"not ready ({info.state}): {info.hint or 'see `harness devices`'}")
            device = open_device(info, ctx)
            with lock:
                live[device_id] = device
            device.prepare([j.spec for j in jobs])
        except DeviceError as exc:  # this device's jobs fail; the other devices go on
            for job in jobs:
                finish(job, JobResult.failure(job.spec.job_id, "device", f"{device_id}: {exc}",
                                              started_at=time.time(), ended_at=time.time()), 1)
            return
        try:
            for job in jobs:
                if stop.is_set():
                    return
                result, attempts = _run_with_retries(device, job, workdir / run_id, progress, retries)
                if stop.is_set():
                    return  # the job in flight was stopped by the interrupt: not a measurement
                finish(job, result, attempts)
        finally:
            with lock:
                live.pop(device_id, None)
            device.close()

    progress.start(sum(len(v) for v in by_device.values()))
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_parallel or len(by_device) or 1, len(by_device) or 1)),
                              thread_name_prefix="device")
    try:
        futures = [pool.submit(worker, d, jobs) for d, jobs in by_device.items()]
        for future in as_completed(futures):
            future.result()
        outcome.status = "completed"
    except KeyboardInterrupt:
        stop.set()
        with lock:
            devices = list(live.values())
        for device in devices:
            device.cancel()
        outcome.status = "interrupted"
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.stop()
        store.finish_run(run_id, outcome.status if outcome.status != "running" else "failed")
    return outcome


def _run_with_retries(device, job: PlannedJob, workdir: Path, progress: Progress,
                      retries: int) -> tuple[JobResult, int]:
    attempts = 0
    while True:
        attempts += 1
        progress.job_started(job)
        phase: Callable[[str, int, int], None] = lambda p, d, t: progress.job_phase(job, p, d, t)  # noqa: E731
        started = time.time()
        try:
            spec = job.spec.model_copy(update={"job_id": f"{job.spec.job_id}-a{attempts}" if attempts > 1
                                               else job.spec.job_id})
            result = device.run_job(spec, workdir / f"{job.index:03d}-{safe_name(job.variant)}", phase)
        except DeviceDisconnectedError as exc:
            result = JobResult.failure(job.spec.job_id, "device", str(exc), transient=True,
                                       started_at=started, ended_at=time.time())
        transient = result.status == "failed" and result.error is not None and result.error.transient
        if not transient or attempts > retries:
            return result, attempts


def safe_name(name: str) -> str:
    """A name as a folder name: letters, digits and -_. kept, the rest _, at most 60 characters."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]


def store_job(store: Store, run_id: str, job: PlannedJob, result: JobResult, attempts: int) -> None:
    """Record one planned job's result in the run (the runner's and the A/B session's one way in)."""
    store.record_job(run_id, job_key=job.job_key, job_index=job.index, device_id=job.device,
                     workload=job.spec.workload, model=job.spec.model.name, variant=job.variant,
                     variant_index=job.variant_index, flags=job.flags.to_dict(),
                     options=job.spec.options.model_dump(), options_hash=job.options_hash, result=result,
                     attempts=attempts, axes=job.axes)
