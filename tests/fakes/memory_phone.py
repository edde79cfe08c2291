"""A phone held in memory, reached through a fake of harness.devices.remote.Transport, and a device kind
built on the remote-agent template over it (`memory`), for tests of the template and of the runner.

`MemoryPhone` keeps its files (path -> digest) and runs an agent that follows a script, one word per
launch (default "ok"):
- ok: DONE after `polls_to_finish` polls, with a result.json (a JobResult) for the job;
- hang: runs and never ends, never writes a heartbeat;
- stall: writes one heartbeat, then hangs;
- beat: writes a new heartbeat on every poll and never ends;
- crash: gone without DONE;
- garbage: DONE with a result.json that is not JSON;
- stale: DONE with another job's result.json;
- drop: the connection drops at the first poll, and the phone is away for `away_polls` reconnect checks
  (forever: None); its agent keeps running and finishes (a stale job on the phone).
Faults on the wire: `drop_pushes` (the next N pushes drop), `full` (a push is refused: disk full). Every
call made is recorded (`calls`), with the pushes, launches, kills and cancels apart.

The `memory` kind lists the phones of `PHONES` (serial -> MemoryPhone); a test registers it with
`monkeypatch.setitem(harness.devices.base.KINDS, "memory", "tests.fakes.memory_phone:MemoryKind")`.
A job's artifact is the host file `options.extra.graph`.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.devices.base import (
    Artifact, Device, DeviceContext, DeviceDisconnectedError, DeviceInfo, DeviceKind, JobFailure,
)
from harness.devices.remote import AgentRun, Outcome, Poll, RemoteDevice, RemoteFile, Transport
from harness.protocol import Execution, JobResult, JobSpec, ProtocolError, parse_result

PHONES: dict[str, "MemoryPhone"] = {}


@dataclass
class MemoryPhone:
    script: list[str] = field(default_factory=list)
    polls_to_finish: int = 2
    latency_ms: float = 12.5
    away_polls: int | None = 3
    drop_pushes: int = 0
    full: bool = False
    files: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # job dir -> its agent's state
    calls: list[str] = field(default_factory=list)
    pushes: list[str] = field(default_factory=list)
    launches: list[str] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    clears: int = 0
    away: int | None = 0  # reconnect checks until the phone is back (None: never)
    launched: threading.Event = field(default_factory=threading.Event)

    def wire(self, call: str) -> None:
        """Every call of the transport: recorded, and refused while the phone is away."""
        self.calls.append(call)
        if self.away != 0:
            raise DeviceDisconnectedError(f"the memory phone is away ({call})")

    def drop(self) -> None:
        self.away = self.away_polls
        raise DeviceDisconnectedError("the connection to the memory phone closed: the device dropped")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class MemoryTransport(Transport):
    def __init__(self, phone: MemoryPhone):
        self.phone = phone

    def reconnect(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.phone.away == 0:
                return
            if self.phone.away is not None:
                self.phone.away -= 1
                continue
            if time.monotonic() >= deadline:
                raise DeviceDisconnectedError(f"the memory phone did not come back within {timeout_s:.2f} s")
            time.sleep(0.005)

    def local_hash(self, path: Path) -> str:
        return sha256(path)

    def remote_hashes(self, paths: list[str]) -> dict[str, str | None]:
        self.phone.wire("hashes")
        return {p: self.phone.files.get(p) for p in paths}

    def push(self, file: RemoteFile) -> int:
        self.phone.wire(f"push {file.remote}")
        if self.phone.drop_pushes > 0:
            self.phone.drop_pushes -= 1
            self.phone.drop()
        if self.phone.full:
            raise JobFailure("disk_full", f"the memory phone refused {file.local.name}: no space left")
        self.phone.files[file.remote] = file.digest or sha256(file.local)
        self.phone.pushes.append(file.remote)
        return file.local.stat().st_size

    def clear_jobs(self) -> None:
        self.phone.wire("clear")
        self.phone.clears += 1
        self.phone.jobs.clear()

    def launch(self, run: AgentRun) -> None:
        self.phone.wire(f"launch {run.job_dir}")
        word = self.phone.script.pop(0) if self.phone.script else "ok"
        self.phone.jobs[run.job_dir] = {"word": word, "polls": 0, "job_id": run.spec.job_id, "killed": False}
        self.phone.launches.append(run.job_dir)
        run.pid = len(self.phone.launches)
        self.phone.launched.set()

    def poll(self, run: AgentRun) -> Poll:
        self.phone.wire(f"poll {run.job_dir}")
        job = self.phone.jobs[run.job_dir]
        job["polls"] += 1
        word = job["word"]
        if job["killed"] or word == "crash":
            return Poll("gone")
        if word == "drop":
            job["word"] = "ok"  # the agent goes on while the phone is away
            self.phone.drop()
        if word in ("ok", "garbage", "stale") and job["polls"] >= self.phone.polls_to_finish:
            return Poll("done", rc=0)
        if word == "beat" or (word == "stall" and job["polls"] == 1):
            return Poll("running", heartbeat=f"beat {job['polls']}".encode(), progress=("run", job["polls"], 0))
        return Poll("running")

    def kill(self, run: AgentRun) -> None:
        self.phone.wire(f"kill {run.job_dir}")
        self.phone.kills.append(run.job_dir)
        self.phone.jobs[run.job_dir]["killed"] = True

    def cancel(self, run: AgentRun) -> None:
        self.phone.cancels.append(run.job_dir)  # another connection: not refused while a call is in flight
        self.phone.jobs[run.job_dir]["killed"] = True

    def collect(self, run: AgentRun) -> dict[str, Any]:
        self.phone.wire(f"collect {run.job_dir}")
        job = self.phone.jobs.pop(run.job_dir)
        if job["killed"] or job["word"] in ("crash", "hang", "stall", "beat"):
            return {"result.json": None}
        if job["word"] == "garbage":
            return {"result.json": "Segmentation fault\x00\x01"}
        job_id = "another-run-j0" if job["word"] == "stale" else job["job_id"]
        ms = self.phone.latency_ms
        return {"result.json": JobResult(job_id=job_id, status="ok", samples_ms=[ms, ms + 1.0],
                                         execution=Execution(timing_method="memory agent")).model_dump_json()}


class MemoryDevice(RemoteDevice):
    kind = "memory"

    def __init__(self, info: DeviceInfo, ctx: DeviceContext, phone: MemoryPhone | None = None):
        super().__init__(info, ctx)
        self.phone = phone or PHONES[info.id.split(":", 1)[1]]
        self.transport = MemoryTransport(self.phone)
        self.reconnect_timeout_s = 0.05

    def artifact_key(self, spec: JobSpec, component: str) -> str:
        return f"graph:{spec.options.extra.get('graph')}"

    def resolve_artifact(self, spec: JobSpec, component: str) -> Artifact:
        graph = spec.options.extra.get("graph")
        if not graph or not Path(str(graph)).is_file():
            raise JobFailure("input", f"options.extra.graph {graph!r} is not a file")
        local = Path(str(graph))
        return Artifact(local, sha256(local), local.stat().st_size, "graph")

    def files_for(self, arts: list[Artifact], specs: list[JobSpec]) -> list[RemoteFile]:
        return [RemoteFile(a.local, f"/models/{a.sha256[:16]}", digest=a.sha256) for a in arts]

    def agent_run(self, spec: JobSpec, workdir: Path, arts: dict[str, Artifact], push: dict[str, Any],
                  component: str | None = None) -> AgentRun:
        return AgentRun(spec, f"/jobs/{spec.job_id}", workdir / "device", payload=spec.model_dump_json(),
                        heartbeat_timeout_s=0.05, launch_timeout_s=5.0, pause_s=0.002, info={"push": push})

    def read_result(self, run: AgentRun, outcome: Outcome, files: dict[str, Any], cooldown: dict[str, Any] | None,
                    started: float) -> JobResult:
        kw = dict(started_at=started, ended_at=time.time(),
                  extra={"push": run.info["push"], "wait": outcome.to_dict(run.pid)})
        if outcome.end == "timeout":
            return JobResult.failure(run.spec.job_id, "timeout", "the memory agent was killed", **kw)
        text = files.get("result.json")
        if outcome.end == "gone" or text is None:
            return JobResult.failure(run.spec.job_id, "crash", "the memory agent ended without a result", **kw)
        try:
            result = parse_result(text)
        except ProtocolError as exc:
            return JobResult.failure(run.spec.job_id, "parse", f"result.json does not parse: {exc}", detail=text,
                                     **kw)
        if result.job_id != run.spec.job_id:
            return JobResult.failure(run.spec.job_id, "parse", f"result.json belongs to job {result.job_id!r}",
                                     detail=text, **kw)
        return result.model_copy(update={"extra": {**result.extra, **kw["extra"]}})


class MemoryKind(DeviceKind):
    name = "memory"

    def discover(self, ctx: DeviceContext) -> list[DeviceInfo]:
        return [DeviceInfo(id=f"memory:{serial}", kind="memory", name=serial, stand_in=["memory phone"])
                for serial in PHONES]

    def open(self, info: DeviceInfo, ctx: DeviceContext) -> Device:
        return MemoryDevice(info, ctx)
