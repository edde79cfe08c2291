"""The remote-agent template (harness.devices.remote) and the runner's retry, resume and interrupt logic,
on phones held in memory (tests/fakes/memory_phone.py: a fake of the Transport interface under a real
device built on the template). No subprocess, no model conversion."""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from harness.devices.base import KINDS, DeviceContext, DeviceDisconnectedError, DeviceInfo
from harness.protocol import JobSpec, MeasurePolicy, RuntimeOptions
from harness.runner import execute
from harness.store import Store
from harness.suite import Suite, expand

try:
    from tests.fakes.memory_phone import PHONES, MemoryDevice, MemoryKind, MemoryPhone
except ModuleNotFoundError:  # pytest's default import mode puts tests/, not the repo root, on sys.path
    from fakes.memory_phone import PHONES, MemoryDevice, MemoryKind, MemoryPhone  # type: ignore[no-redef]


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(b"weights" * 100)
    return path


def _device(phone: MemoryPhone) -> MemoryDevice:
    return MemoryDevice(DeviceInfo(id="memory:p", kind="memory"), DeviceContext(), phone=phone)


def _spec(graph: Path, job_id: str = "j1", timeout_s: float = 5.0) -> JobSpec:
    return JobSpec(job_id=job_id, run_id="r", device="memory:p", variant="baseline",
                   options=RuntimeOptions(extra={"graph": str(graph)}), measure=MeasurePolicy(timeout_seconds=timeout_s))


# ------------------------------------------------------------------------------------ the template

def test_push_only_what_the_phone_lacks(tmp_path: Path, graph: Path) -> None:
    phone = MemoryPhone()
    dev = _device(phone)
    first = dev.run_job(_spec(graph, "j1"), tmp_path / "j1")
    second = dev.run_job(_spec(graph, "j2"), tmp_path / "j2")
    assert first.status == second.status == "ok" and first.samples_ms == [12.5, 13.5]
    assert first.extra["push"]["bytes_pushed"] == graph.stat().st_size and len(phone.pushes) == 1
    assert second.extra["push"] == {"bytes_pushed": 0, "files_pushed": [], "files_skipped": 1}
    remote = phone.pushes[0]
    phone.files[remote] = "0" * 64  # the phone's copy changed: pushed again
    dev.run_job(_spec(graph, "j3"), tmp_path / "j3")
    assert phone.pushes == [remote, remote] and (dev.files_pushed, dev.files_skipped) == (2, 1)
    assert phone.clears == 1  # stale jobs are cleared before the first launch only: each job's files are collected


def test_a_job_past_its_timeout_is_killed_and_fails_as_timeout(tmp_path: Path, graph: Path) -> None:
    phone = MemoryPhone(script=["hang"])
    res = _device(phone).run_job(_spec(graph, timeout_s=0.05), tmp_path / "j")
    assert res.status == "failed" and res.error.kind == "timeout"
    assert phone.kills == ["/jobs/j1"] and res.extra["wait"]["end"] == "timeout"
    assert "stalled_s" not in res.extra["wait"]


def test_a_heartbeat_that_stops_is_a_timeout_long_before_the_jobs(tmp_path: Path, graph: Path) -> None:
    phone = MemoryPhone(script=["stall", "beat"])
    dev = _device(phone)
    t0 = time.monotonic()
    stalled = dev.run_job(_spec(graph, "j1", timeout_s=30), tmp_path / "j1")
    assert time.monotonic() - t0 < 5
    assert stalled.error.kind == "timeout" and stalled.extra["wait"]["stalled_s"] == 0.05
    assert stalled.extra["wait"]["heartbeats"] == 1
    beating = dev.run_job(_spec(graph, "j2", timeout_s=0.2), tmp_path / "j2")  # alive, but past the job's timeout
    assert beating.error.kind == "timeout" and "stalled_s" not in beating.extra["wait"]
    assert beating.extra["wait"]["heartbeats"] > 2 and phone.kills == ["/jobs/j1", "/jobs/j2"]


def test_a_drop_mid_run_raises_then_the_next_job_waits_for_the_phone(tmp_path: Path, graph: Path) -> None:
    phone = MemoryPhone(script=["drop", "ok"])
    dev = _device(phone)
    with pytest.raises(DeviceDisconnectedError, match="dropped"):
        dev.run_job(_spec(graph, "j1"), tmp_path / "a1")
    assert "/jobs/j1" in phone.jobs  # the agent goes on, on the phone
    res = dev.run_job(_spec(graph, "j1-a2"), tmp_path / "a2")  # the runner's retry
    assert res.status == "ok" and phone.away == 0
    assert phone.clears == 2 and "/jobs/j1" not in phone.jobs  # what the abandoned attempt left was cleared


def test_a_phone_that_stays_away_fails_the_next_jobs_fast(tmp_path: Path, graph: Path) -> None:
    phone = MemoryPhone(script=["drop"], away_polls=None)
    dev = _device(phone)
    for i in range(3):
        t0 = time.monotonic()
        with pytest.raises(DeviceDisconnectedError):
            dev.run_job(_spec(graph, f"j{i}"), tmp_path / f"j{i}")
        waited = time.monotonic() - t0
    assert waited < dev.reconnect_timeout_s  # the third did not wait again
    phone.away = 0  # back: the next job runs
    assert dev.run_job(_spec(graph, "j9"), tmp_path / "j9").status == "ok"


@pytest.mark.parametrize("word, kind, words", [
    ("garbage", "parse", "does not parse"), ("stale", "parse", "belongs to job 'another-run-j0'"),
    ("crash", "crash", "without a result"),
])
def test_what_the_agent_left_is_validated(tmp_path: Path, graph: Path, word: str, kind: str, words: str) -> None:
    res = _device(MemoryPhone(script=[word])).run_job(_spec(graph), tmp_path / "j")
    assert res.status == "failed" and res.error.kind == kind and words in res.error.message
    assert not res.error.transient


def test_failures_before_the_launch_are_results_with_their_kind(tmp_path: Path, graph: Path) -> None:
    res = _device(MemoryPhone(full=True)).run_job(_spec(graph), tmp_path / "full")
    assert res.error.kind == "disk_full" and res.extra["push"] == {"bytes_pushed_total": 0}
    phone = MemoryPhone()
    missing = _device(phone).run_job(_spec(tmp_path / "nope.bin"), tmp_path / "missing")
    assert missing.error.kind == "input" and "is not a file" in missing.error.message and phone.launches == []


def test_prepare_keeps_a_drop_for_the_first_job(tmp_path: Path, graph: Path) -> None:
    phone = MemoryPhone(drop_pushes=1, away_polls=2)
    dev = _device(phone)
    dev.prepare([_spec(graph)])
    assert dev.prepare_note.startswith("prepare: ") and phone.pushes == []
    res = dev.run_job(_spec(graph), tmp_path / "j")  # waited for the phone, then pushed and ran
    assert res.status == "ok" and res.extra["push"]["bytes_pushed"] == graph.stat().st_size


def test_cancel_stops_the_agent_in_flight(tmp_path: Path, graph: Path) -> None:
    phone = MemoryPhone(script=["hang"])
    dev = _device(phone)
    out: dict = {}
    worker = threading.Thread(target=lambda: out.setdefault("res", dev.run_job(_spec(graph), tmp_path / "j")))
    worker.start()
    assert phone.launched.wait(5)
    dev.cancel()
    worker.join(5)
    assert phone.cancels == ["/jobs/j1"] and out["res"].error.kind == "crash"  # the killed agent left nothing
    dev.cancel()  # nothing in flight: nothing to do
    assert phone.cancels == ["/jobs/j1"]


# ------------------------------------------------------------------------------------ the runner

@pytest.fixture
def farm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, graph: Path):
    """Two memory phones registered as the `memory` kind, a store, and a three-variant plan over both."""
    monkeypatch.setitem(KINDS, "memory", f"{MemoryKind.__module__}:MemoryKind")  # the module imported here
    PHONES.clear()
    PHONES.update(a=MemoryPhone(), b=MemoryPhone())
    suite = Suite(name="mem", devices=["memory:a", "memory:b"], variants=["baseline", "+opt_softmax", "+sgn_gelu"],
                  options={"extra": {"graph": str(graph)}}, measure={"timeout_seconds": 5})
    store = Store(f"sqlite:///{tmp_path}/r.db")
    yield suite, store
    PHONES.clear()


def _run(suite: Suite, store: Store, run_id: str, tmp_path: Path, **kw):
    plan = expand(suite, run_id=run_id)
    store.create_run(run_id, suite.name, suite.model_dump())
    infos = [DeviceInfo(id=d, kind="memory") for d in suite.devices]
    return plan, execute(plan, infos, store, run_id, DeviceContext(), tmp_path / "work", **kw)


def test_runner_retries_a_drop_once_and_stores_every_job(farm, tmp_path: Path) -> None:
    suite, store = farm
    PHONES["a"].script = ["drop", "ok", "drop", "drop"]
    _, outcome = _run(suite, store, "r1", tmp_path, retries=1)
    assert (outcome.status, outcome.ok, outcome.failed, outcome.retried) == ("completed", 5, 1, 2)
    jobs = {(j.device_id, j.variant): j for j in store.load_run("r1").jobs}
    assert len(jobs) == 6
    assert jobs[("memory:a", "baseline")].attempts == 2 and jobs[("memory:a", "baseline")].status == "ok"
    lost = jobs[("memory:a", "+opt_softmax")]  # dropped on both attempts: a transient device failure
    assert lost.status == "failed" and lost.attempts == 2 and lost.result.error.kind == "device"
    assert all(j.status == "ok" and j.attempts == 1 for (d, _), j in jobs.items() if d == "memory:b")


def test_resume_runs_only_what_did_not_finish(farm, tmp_path: Path) -> None:
    suite, store = farm
    PHONES["b"].script = ["ok", "crash"]
    plan, first = _run(suite, store, "r1", tmp_path, retries=0)
    assert (first.ok, first.failed) == (5, 1)
    done = store.completed_job_keys("r1")
    launches = {s: len(p.launches) for s, p in PHONES.items()}
    store.reopen_run("r1")
    again = execute(plan, [DeviceInfo(id=d, kind="memory") for d in suite.devices], store, "r1", DeviceContext(),
                    tmp_path / "work", retries=0, skip_keys=done)
    assert (again.ok, again.failed) == (1, 0)
    assert {s: len(p.launches) - launches[s] for s, p in PHONES.items()} == {"a": 0, "b": 1}


def test_interrupt_stops_the_agents_and_keeps_what_finished(farm, tmp_path: Path) -> None:
    suite, store = farm
    PHONES["a"].script = ["ok", "hang"]
    PHONES["b"].script = ["ok", "ok", "ok"]

    def ctrl_c() -> None:  # Ctrl-C while memory:a's second job runs and memory:b has finished
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(PHONES["a"].launches) < 2 or len(PHONES["b"].launches) < 3
                                               or PHONES["b"].jobs):
            time.sleep(0.005)
        time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C is KeyboardInterrupt here
    threading.Thread(target=ctrl_c, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(suite, store, "r1", tmp_path, retries=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    run = store.load_run("r1")
    assert run.status == "interrupted"
    assert PHONES["a"].cancels == [PHONES["a"].launches[1]]  # the agent in flight was stopped on the phone
    stored = sorted((j.device_id, j.variant) for j in run.jobs)
    assert stored == [("memory:a", "baseline"), ("memory:b", "+opt_softmax"), ("memory:b", "+sgn_gelu"),
                      ("memory:b", "baseline")]  # the stopped job is not a measurement; the third never started
    assert len(PHONES["a"].launches) == 2
