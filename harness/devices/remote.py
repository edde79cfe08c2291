"""The remote-agent template: one job on a device whose agent runs elsewhere (a phone over ADB, an
iPhone over usbmux), in one place for every such kind.

`RemoteDevice.run_job`: reconnect guard (a device that dropped gets `reconnect_timeout_s` to come back)
-> the job's artifacts (memoized; one error mapping, `base.export_failure`) -> push what the device
lacks (its hash there differs from the one here) -> clear what an abandoned attempt left -> cooldown ->
launch the agent -> wait (the job's timeout, the agent's heartbeat, Ctrl-C) -> collect the agent's
files -> read and validate the result. One failure handling: a JobFailure becomes the job's failed
JobResult (kind, message, detail, extra); a drop raises DeviceDisconnectedError (the runner retries,
the next job waits for the device); an unavailable device (locked, unauthorized) fails the job as
`device`; a bug fails it as `internal`; Ctrl-C stops the agent on the device.

A kind supplies its transport (`Transport`: push, hashes, launch, poll, kill, collect, ...), its
artifacts (`resolve_artifact`), the files a job needs (`files_for`), the agent run of a job (`agent_run`:
where and with what the agent starts), and its result reader (`read_result`); a kind whose job is
several agent runs (Android's e2e) overrides `run`.
"""
from __future__ import annotations

import contextlib
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from harness.devices.base import (
    Artifact, Device, DeviceContext, DeviceDisconnectedError, DeviceError, DeviceInfo, DeviceUnavailableError,
    JobFailure, ProgressFn, memoized_artifact,
)
from harness.protocol import JobResult, JobSpec, write_json_atomic

STDERR_TAIL_CHARS = 4000


def tail(text: str, limit: int = STDERR_TAIL_CHARS) -> str:
    return text[-limit:]


@dataclass(frozen=True)
class RemoteFile:
    """A host file (or folder) the device needs at `remote`; `digest` its hash in the transport's algorithm
    (None: the transport computes it)."""
    local: Path
    remote: str
    mode: int = 0o644
    digest: str | None = None


@dataclass
class AgentRun:
    """One launch of the agent: the job, its directory on the device and here, its limits, and what the
    kind passes to its agent (`payload`: benchmark_model's arguments, the JobSpec the app reads)."""
    spec: JobSpec
    job_dir: str
    local_dir: Path
    payload: Any = None
    heartbeat_timeout_s: float | None = None  # an agent that writes heartbeats: kill it when they stop
    launch_timeout_s: float | None = None  # ... or when none came this long after the launch
    pause_s: float = 0.0  # between polls (0: the transport's poll waits by itself)
    pid: int | None = None  # set by the transport's launch
    info: dict[str, Any] = field(default_factory=dict)  # what the kind keeps for its result reader


@dataclass(frozen=True)
class Poll:
    """What one look at a running agent saw: state done | running | gone, the exit code (done), the
    heartbeat's raw text (its change is what counts) and the progress it reported."""
    state: str
    rc: int | None = None
    heartbeat: bytes | None = None
    progress: tuple[str, int, int] | None = None


@dataclass
class Outcome:
    """How the wait ended: done | gone | timeout (the job's timeout, or `stalled_s` of no heartbeat)."""
    end: str
    wait_s: float
    rc: int | None = None
    heartbeats: int = 0
    stalled_s: float | None = None

    def to_dict(self, pid: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"end": self.end, "pid": pid, "heartbeats": self.heartbeats,
                               "wait_s": round(self.wait_s, 3)}
        if self.rc is not None:
            out["rc"] = self.rc
        if self.stalled_s is not None:
            out["stalled_s"] = self.stalled_s
        return out


class Transport(ABC):
    """The wire to one device, as the template uses it. Device calls that fail because the device dropped
    raise DeviceDisconnectedError; a refusal the job cannot get past raises JobFailure."""

    def reconnect(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for a device that dropped to be back (default: each session connects anew)."""

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """A connection held for one job's device calls (default: none; each call connects by itself)."""
        yield

    @abstractmethod
    def local_hash(self, path: Path) -> str:
        """The hash of a host file as `remote_hashes` gives it."""

    @abstractmethod
    def remote_hashes(self, paths: list[str]) -> dict[str, str | None]:
        """The hash of each path on the device (None: missing), creating the folders the pushes need."""

    @abstractmethod
    def push(self, file: RemoteFile) -> int:
        """Push one file (or folder); the bytes sent."""

    @abstractmethod
    def clear_jobs(self) -> None:
        """Stop and remove what earlier, abandoned jobs left on the device."""

    @abstractmethod
    def launch(self, run: AgentRun) -> None:
        """Start the agent for `run` without waiting for it (set run.pid where known)."""

    @abstractmethod
    def poll(self, run: AgentRun) -> Poll:
        ...

    @abstractmethod
    def kill(self, run: AgentRun) -> None:
        """Stop the agent of `run` (the job timed out)."""

    def cancel(self, run: AgentRun) -> None:
        """Stop the agent of `run` from another thread (Ctrl-C); default: kill."""
        self.kill(run)

    @abstractmethod
    def collect(self, run: AgentRun) -> dict[str, Any]:
        """The agent's files (name -> content, None: absent), copied under run.local_dir; removes the job's
        directory from the device."""


class RemoteDevice(Device):
    """A device that runs an agent through a transport. Subclasses set `self.transport` and
    `self.reconnect_timeout_s`, and supply the steps named in the module's docstring."""

    transport: Transport
    reconnect_timeout_s: float = 30.0

    def __init__(self, info: DeviceInfo, ctx: DeviceContext):
        super().__init__(info, ctx)
        self.bytes_pushed = 0  # counters over this device's lifetime in the run
        self.files_pushed = 0
        self.files_skipped = 0
        self.prepare_note: str | None = None
        self.prepare_push: dict[str, Any] | None = None  # what prepare() pushed
        self._artifacts: dict[str, Artifact | JobFailure] = {}
        self._dropped = False
        self._gone = False
        self._stale_possible = True  # an earlier run or attempt may have left a job running on the device
        self._in_flight: AgentRun | None = None

    # ---- what a kind supplies

    @abstractmethod
    def resolve_artifact(self, spec: JobSpec, component: str) -> Artifact:
        """The artifact of one component of a job (the user's file, or the export cache's)."""

    @abstractmethod
    def artifact_key(self, spec: JobSpec, component: str) -> str:
        """What identifies that artifact within this session (memo key)."""

    def components(self, spec: JobSpec) -> tuple[str, ...]:
        return ("unet",)

    @abstractmethod
    def files_for(self, arts: list[Artifact], specs: list[JobSpec]) -> list[RemoteFile]:
        """Everything these jobs need on the device."""

    def check(self, spec: JobSpec) -> None:
        """Raise JobFailure (input) for a job this kind cannot run, before anything is pushed."""

    @abstractmethod
    def agent_run(self, spec: JobSpec, workdir: Path, arts: dict[str, Artifact], push: dict[str, Any],
                  component: str | None = None) -> AgentRun:
        """The agent run of a job (of one of its components, for a kind that runs them one by one)."""

    def cooldown(self, spec: JobSpec, progress: ProgressFn | None) -> dict[str, Any] | None:
        """Wait until the device may be measured again; what was done (None: this kind has no cooldown)."""
        return None

    @abstractmethod
    def read_result(self, run: AgentRun, outcome: Outcome, files: dict[str, Any], cooldown: dict[str, Any] | None,
                    started: float) -> JobResult:
        """The job's JobResult from what the agent left: a failure for a timeout, a missing or bad result."""

    # ---- the template

    def run(self, spec: JobSpec, workdir: Path, progress: ProgressFn | None, started: float) -> JobResult:
        """The job inside the transport's session: artifacts, push what changed, one agent run."""
        arts = self.artifacts_for(spec)
        push = self.sync(self.files_for(list(arts.values()), [spec]), progress)
        return self.run_agent(self.agent_run(spec, workdir, arts, push), progress, started)

    def artifacts_for(self, spec: JobSpec) -> dict[str, Artifact]:
        return {c: memoized_artifact(self._artifacts, self.artifact_key(spec, c),
                                     lambda c=c: self.resolve_artifact(spec, c))
                for c in self.components(spec)}

    def sync(self, files: list[RemoteFile], progress: ProgressFn | None) -> dict[str, Any]:
        """Push every file whose hash on the device differs from the host's. Returns what was done."""
        remote = self.transport.remote_hashes([f.remote for f in files])
        report: dict[str, Any] = {"bytes_pushed": 0, "files_pushed": [], "files_skipped": 0}
        unique = list({f.remote: f for f in files}.values())
        for i, file in enumerate(unique):
            if progress:
                progress("push", i, len(unique))
            if remote.get(file.remote) == (file.digest or self.transport.local_hash(file.local)):
                report["files_skipped"] += 1
                self.files_skipped += 1
                continue
            n = self.transport.push(file)
            report["bytes_pushed"] += n
            report["files_pushed"].append(file.remote)
            self.bytes_pushed += n
            self.files_pushed += 1
        return report

    def prepare(self, specs: list[JobSpec]) -> None:
        """Push what every job needs (hash-skipped). Problems are kept for run_job, which repeats what it
        needs and turns them into job failures."""
        arts: list[Artifact] = []
        for spec in specs:
            try:
                self.check(spec)
                arts.extend(self.artifacts_for(spec).values())
            except JobFailure:
                continue
        try:
            with self.transport.session():
                self.prepare_push = self.sync(self.files_for(arts, specs), None)
        except (JobFailure, DeviceError) as exc:
            self.prepare_note = f"prepare: {exc}"
            if isinstance(exc, DeviceDisconnectedError):
                self._dropped = True  # the first job waits for the device to come back

    def run_job(self, spec: JobSpec, workdir: Path, progress: ProgressFn | None = None) -> JobResult:
        started = time.time()
        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(workdir / "job.json", spec)
        try:
            self._reconnect_guard()
            self.check(spec)
            with self.transport.session():
                return self.run(spec, workdir, progress, started)
        except DeviceDisconnectedError:
            self._dropped = True
            raise
        except DeviceUnavailableError as exc:
            return JobResult.failure(spec.job_id, "device", str(exc), started_at=started, ended_at=time.time())
        except JobFailure as f:
            extra = {"push": {"bytes_pushed_total": self.bytes_pushed}, **f.extra}
            return JobResult.failure(spec.job_id, f.kind, f.message, detail=f.detail, transient=f.transient,
                                     started_at=started, ended_at=time.time(), extra=extra)
        except KeyboardInterrupt:
            self.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here fails this job, not the run
            return JobResult.failure(spec.job_id, "internal", f"{type(exc).__name__}: {exc}",
                                     detail=tail(traceback.format_exc()), started_at=started, ended_at=time.time())

    def _reconnect_guard(self) -> None:
        if self._dropped:
            try:
                self.transport.reconnect(0.0 if self._gone else self.reconnect_timeout_s)
            except DeviceDisconnectedError:
                self._gone = True  # later jobs fail fast until the device is back
                raise
        self._dropped = self._gone = False

    def run_agent(self, run: AgentRun, progress: ProgressFn | None, started: float) -> JobResult:
        """One agent run: clear stale jobs, cool down, launch, wait, collect, read the result."""
        if self._stale_possible:
            self.transport.clear_jobs()
        cooled = self.cooldown(run.spec, progress)
        self._stale_possible = True  # until this job's files are collected
        if progress:
            progress("launch", 0, 1)
        self.transport.launch(run)
        self._in_flight = run
        try:
            outcome = self._wait(run, progress)
        except KeyboardInterrupt:
            self.cancel()  # stop the agent on the device too, then let the runner stop
            raise
        finally:
            self._in_flight = None
        if progress:
            progress("pull", 0, 1)
        files = self.transport.collect(run)
        self._stale_possible = False
        return self.read_result(run, outcome, files, cooled, started)

    def _wait(self, run: AgentRun, progress: ProgressFn | None) -> Outcome:
        timeout = run.spec.measure.timeout_seconds
        t0 = time.monotonic()
        last: bytes | None = None
        last_change = t0
        beats = 0
        while True:
            if progress and run.heartbeat_timeout_s is None:
                elapsed = time.monotonic() - t0
                progress("run", int(elapsed), int(timeout))
            poll = self.transport.poll(run)
            now = time.monotonic()
            if poll.state in ("done", "gone"):
                return Outcome(poll.state, now - t0, rc=poll.rc, heartbeats=beats)
            if poll.heartbeat is not None and poll.heartbeat != last:
                last, last_change = poll.heartbeat, now
                beats += 1
                if progress and poll.progress:
                    progress(*poll.progress)
            stale_after = run.heartbeat_timeout_s if last is not None else run.launch_timeout_s
            stalled = stale_after is not None and now - last_change > stale_after
            if now - t0 > timeout or stalled:
                self.transport.kill(run)
                return Outcome("timeout", now - t0, heartbeats=beats,
                               stalled_s=stale_after if stalled and now - t0 <= timeout else None)
            if run.pause_s:
                time.sleep(run.pause_s)

    def cancel(self) -> None:
        run, self._in_flight = self._in_flight, None
        if run is None:
            return
        with contextlib.suppress(Exception):
            self.transport.cancel(run)

    def close(self) -> None:
        self._in_flight = None
