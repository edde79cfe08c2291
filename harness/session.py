"""The application layer under the CLI: start a run, resume one, rerun cells of one - through one path.

    suite (new run) | stored run (resume) | stored run + cells (rerun, `harness compare --rerun`)
      -> devices resolved (and sharded) -> preflight (Android's benchmark_model, the iOS agent IPA, every
         job's runtime on its device's kind) -> the run created (or reopened) in the store
      -> host artifacts exported -> jobs executed, SIGINT/SIGTERM = interrupted (finished jobs stored, the
         run marked interrupted) -> SessionRun

Nothing here prints or parses arguments: progress and the run about to start reach the caller through a
`SessionProgress` (the CLI's rich progress bar); bad input is an `InputError`, an interrupt an `Interrupted`.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from harness.baseline import RERUN_GROUP_PREFIX, CellKey
from harness.devices.android import check_benchmark_model
from harness.devices.base import DeviceContext, DeviceError, DeviceInfo, resolve_devices
from harness.devices.ios import ipa_info
from harness.export.commands import prepare_run_artifacts
from harness.runner import Progress, RunOutcome, execute, shard_devices
from harness.runtimes import UnknownRuntimeError, get_runtime
from harness.store import Store, new_run_id
from harness.suite import Plan, PlannedJob, Suite, expand

# Where the jobs' files go (one folder per run).
RUNS_DIR = Path("results") / "runs"


class InputError(Exception):
    """Bad input or environment: the CLI prints it without a traceback and exits 2."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a session: the finished jobs are stored and the run is marked interrupted.
    A KeyboardInterrupt, so that nothing that catches Exception (a rerun callback's caller) swallows it;
    str() says what happened and how to go on."""

    def __init__(self, run_id: str, phase: str, mode: str):
        self.run_id, self.phase, self.mode = run_id, phase, mode
        what = "interrupted while exporting artifacts" if phase == "export" else \
            "interrupted: finished jobs are stored"
        if mode == "rerun":  # its run holds only the cells asked for: `--resume` would run the whole suite
            super().__init__(f"{what}; the rerun {run_id} is marked interrupted")
        else:
            super().__init__(f"{what}; run {run_id} is marked interrupted; continue with "
                             f"`harness run --resume {run_id}`")


@dataclass
class RunStart:
    """The run a session is about to execute (after the preflight, before the export and the first job)."""

    run_id: str
    mode: str  # "new" | "resume" | "rerun"
    plan: Plan
    infos: list[DeviceInfo]
    todo: int  # jobs of the plan to run (the rest are stored already, or not asked for)
    store_url: str  # the store's URL for messages (password masked)
    in_memory: bool  # the store vanishes when the process exits
    of_run: str | None = None  # rerun: the run whose cells are rerun


class SessionProgress(Progress):
    """What a session reports: the runner's per-job progress, and the run about to start. Does nothing."""

    def run_started(self, start: RunStart) -> None: ...


@dataclass
class SessionRun:
    """A session that ran to its end (every job stored, ok or failed)."""

    run_id: str
    plan: Plan
    infos: list[DeviceInfo]
    outcome: RunOutcome
    skipped: int = 0  # jobs of the plan not run: stored already (resume) or not asked for (rerun)


@dataclass
class _Target:
    """What one session runs: a suite on devices into a run, less the jobs `skip(plan)` names."""

    run_id: str
    suite: Suite
    device_ids: list[str]
    mode: str  # "new" | "resume" | "rerun"
    skip: Callable[[Plan], set[str]] = lambda plan: set()
    suite_path: str | None = None
    run_group: str | None = None
    of_run: str | None = None


def _raise_interrupt(signum, frame):  # noqa: ANN001
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (how CI cancels) raises KeyboardInterrupt, like Ctrl-C, inside the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_runtimes(jobs: Iterable[PlannedJob], infos: list[DeviceInfo]) -> None:
    """Every job's runtime must run on its device's kind (harness.runtimes): else InputError, before any job."""
    kinds = {i.id: i.kind for i in infos}
    problems: list[str] = []
    for job in jobs:
        try:
            get_runtime(job.spec.options.runtime).on(kinds.get(job.device, job.device.split(":")[0]))
        except UnknownRuntimeError as exc:
            if str(exc) not in problems:
                problems.append(str(exc))
    if problems:
        raise InputError("; ".join(problems) + "; pick another --device or --set runtime=...")


def resolve(device_ids: list[str], ctx: DeviceContext, shard: str | None = None) -> list[DeviceInfo]:
    """Device ids -> the devices, only shard I/N's when `shard` is given (maybe none), each checked before any
    job: an Android device needs a benchmark_model, an iOS one an agent IPA that is one. InputError otherwise."""
    try:
        infos = resolve_devices(device_ids, ctx)
        if shard:
            try:
                mine = shard_devices([i.id for i in infos], shard)
            except ValueError as exc:
                raise InputError(str(exc)) from None
            infos = [i for i in infos if i.id in mine]
        android = [i.id.split(":", 1)[1] for i in infos if i.kind == "android"]
        if android:
            check_benchmark_model(ctx, android)
        if ctx.ios_agent and any(i.kind == "ios" for i in infos):
            ipa_info(ctx.ios_agent)  # a path that is no IPA stops here, before any job
    except DeviceError as exc:
        raise InputError(str(exc)) from None
    return infos


def _stored_suite(doc: dict, whose: str) -> Suite:
    """A stored run's suite; InputError `{whose} stored suite no longer validates: ...` when it does not."""
    try:
        return Suite.model_validate(doc)
    except ValidationError as exc:
        raise InputError(f"{whose} stored suite no longer validates: {exc}") from None


class Session:
    """Runs jobs into a store on the devices of a DeviceContext; `start`, `resume` and `rerun` share one path."""

    def __init__(self, store: Store, ctx: DeviceContext, progress: SessionProgress | None = None,
                 retries: int = 1, max_parallel: int | None = None, workdir: Path = RUNS_DIR):
        self.store, self.ctx, self.workdir = store, ctx, workdir
        self.progress = progress or SessionProgress()
        self.retries, self.max_parallel = retries, max_parallel

    def start(self, suite: Suite, device_ids: list[str], suite_path: str | None = None,
              run_group: str | None = None, shard: str | None = None) -> SessionRun | None:
        """A new run of `suite` on the devices; None when `shard` leaves this machine no device."""
        return self._run(_Target(new_run_id(), suite, device_ids, "new", suite_path=suite_path,
                                 run_group=run_group), shard)

    def resume(self, run_ref: str, shard: str | None = None) -> SessionRun | None:
        """The jobs of a stored run without a stored result, into the same run (same suite and devices)."""
        run_id = self.store.resolve_run(run_ref)
        suite = _stored_suite(self.store.load_run(run_id).suite, f"run {run_id} cannot be resumed: its")
        done = self.store.completed_job_keys(run_id)
        return self._run(_Target(run_id, suite, suite.devices, "resume", skip=lambda plan: done), shard)

    def rerun(self, candidate_id: str, cells: Iterable[CellKey]) -> SessionRun:
        """The given cells of a stored run again, on their devices, into a new run grouped under it."""
        cells = list(cells)
        cand = self.store.load_run(candidate_id)
        wanted = {(c.device, c.workload, c.variant, c.options_hash) for c in cells}

        def skip(plan: Plan) -> set[str]:
            keys = {j.job_key for j in plan.jobs if (j.device, j.spec.workload, j.variant, j.options_hash) not in wanted}
            if len(keys) == len(plan.jobs):
                raise InputError(f"run {cand.id}'s suite no longer expands to the regressed cells")
            return keys

        try:
            suite = _stored_suite(cand.suite, f"run {cand.id}'s")
            run = self._run(_Target(new_run_id(), suite, sorted({c.device for c in cells}), "rerun", skip=skip,
                                    run_group=f"{RERUN_GROUP_PREFIX}{cand.id}", of_run=cand.id))
        except InputError as exc:
            raise InputError(f"cannot rerun: {exc}") from None
        assert run is not None  # no shard: never empty
        return run

    def _run(self, t: _Target, shard: str | None = None) -> SessionRun | None:
        infos = resolve(t.device_ids, self.ctx, shard)
        if not infos:
            return None
        plan = expand(t.suite, [i.id for i in infos], t.run_id)
        check_runtimes(plan.jobs, infos)
        skip = t.skip(plan) & {j.job_key for j in plan.jobs}
        if t.mode == "resume":
            self.store.reopen_run(t.run_id)
        else:
            suite_doc = t.suite.model_dump(mode="json")
            suite_doc["devices"] = [i.id for i in infos]  # what --resume runs again
            self.store.create_run(t.run_id, t.suite.name, suite_doc, t.suite_path, t.run_group)
        self.progress.run_started(RunStart(t.run_id, t.mode, plan, infos, len(plan.jobs) - len(skip),
                                           self.store.display_url, self.store.in_memory, t.of_run))
        phase = "export"
        try:
            with sigterm_as_interrupt():
                # host runtimes that run an artifact: through the cache, for the jobs that will run
                prepare_run_artifacts(Plan(plan.suite, plan.devices, [j for j in plan.jobs if j.job_key not in skip]),
                                      self.ctx.cache_dir)
                phase = "execute"
                outcome = execute(plan, infos, self.store, t.run_id, self.ctx, self.workdir, self.progress,
                                  self.retries, skip_keys=skip, max_parallel=self.max_parallel)
        except KeyboardInterrupt:
            if phase == "export":  # execute marks the run itself
                self.store.finish_run(t.run_id, "interrupted")
            raise Interrupted(t.run_id, phase, t.mode) from None
        return SessionRun(t.run_id, plan, infos, outcome, skipped=len(skip))
