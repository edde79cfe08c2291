"""Store round trip: runs, devices, jobs, raw samples, tags; one transaction per job."""
import pytest

from harness.protocol import Execution, JobResult, MemoryFigures
from harness.store import Store, StoreError


def _result(job_id: str, samples, status="ok") -> JobResult:
    if status != "ok":
        return JobResult.failure(job_id, "crash", "boom", detail="tail")
    return JobResult(job_id=job_id, status="ok", samples_ms=list(samples), warmup_ms=[99.0],
                     memory=MemoryFigures(weight_bytes=1000, tensor_bytes_planned=500),
                     execution=Execution(timing_method="perf_counter"))


def _record(store, run_id, i, variant, result):
    return store.record_job(run_id, job_key=f"k{i}", job_index=i, device_id="host", workload="unet_iteration",
                            model="tiny", variant=variant, variant_index=i, flags={"softmax": "naive"},
                            options={"runtime": "torch"}, options_hash="h", result=result)


@pytest.fixture()
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path}/r.db")


def test_round_trip(store):
    store.create_run("r1", "smoke", {"name": "smoke", "model": {"name": "tiny"}}, "suites/smoke.yaml")
    store.record_device("r1", {"id": "host", "kind": "host", "model": "cpu"})
    store.record_device("r1", {"id": "host", "kind": "host", "model": "cpu2"})  # updated, not duplicated
    _record(store, "r1", 0, "baseline", _result("j0", [3.0, 1.0, 2.0]))
    _record(store, "r1", 1, "+opt_softmax", _result("j1", [], status="failed"))
    store.finish_run("r1", "completed")
    store.tag_run("r1", "nightly")
    run = store.load_run(store.resolve_run("latest"))
    assert run.id == "r1" and run.status == "completed" and run.ended_at is not None
    assert run.devices["host"]["model"] == "cpu2" and run.tags == ["nightly"]
    assert [j.variant for j in run.jobs] == ["baseline", "+opt_softmax"]
    ok, bad = run.jobs
    assert ok.result.samples_ms == [3.0, 1.0, 2.0]  # order kept, from the samples table
    assert ok.result.warmup_ms == [99.0] and ok.result.memory.weight_bytes == 1000
    assert bad.status == "failed" and bad.result.error.message == "boom" and bad.result.error.detail == "tail"
    assert store.completed_job_keys("r1") == {"k0"}


def test_resolve_errors(store):
    with pytest.raises(StoreError, match="no runs yet"):
        store.resolve_run("latest")
    store.create_run("20260101-a", "s", {})
    store.create_run("20260101-b", "s", {})
    assert store.resolve_run("20260101-a") == "20260101-a"
    with pytest.raises(StoreError, match="ambiguous"):
        store.resolve_run("20260101")
    with pytest.raises(StoreError, match="no run 'zzz'"):
        store.resolve_run("zzz")


def test_bad_url():
    with pytest.raises(StoreError, match="not a database URL"):
        Store("not a url")


def test_a_failed_job_write_leaves_earlier_jobs(store, monkeypatch):
    store.create_run("r1", "s", {})
    _record(store, "r1", 0, "baseline", _result("j0", [1.0]))
    # A sample that violates NOT NULL makes the second job's transaction fail as a whole.
    bad = _result("j1", [1.0])
    bad.samples_ms = [None]  # type: ignore[list-item]
    with pytest.raises(Exception):
        _record(store, "r1", 1, "x", bad)
    run = store.load_run("r1")
    assert [j.variant for j in run.jobs] == ["baseline"]  # no half-written job


def test_a_failures_detail_is_a_bounded_masked_tail_wherever_it_comes_from(store):
    """JobError.detail (the device's stderr tail) keeps the last 20 lines / 2 KB with credentials masked, however a
    device or agent filled it, and a stored one reads back the same (issue 20)."""
    from harness.protocol import DETAIL_MAX_CHARS, DETAIL_MAX_LINES, error_tail, mask_credentials

    stderr = "\n".join(f"INFO: line {i}" for i in range(100)) + (
        "\nconnecting to postgresql://bench:SECRET1@db/x with token=SECRET2 and password: SECRET3"
        "\nModuleNotFoundError: No module named 'ai_edge_litert'\n")
    res = JobResult.failure("j", "crash", "store at mysql://u:SECRET4@h/db failed", detail=stderr)
    tail = res.error.detail
    assert tail.endswith("ModuleNotFoundError: No module named 'ai_edge_litert'")
    assert len(tail.splitlines()) == DETAIL_MAX_LINES + 1 and tail.startswith("[... earlier lines cut]")
    assert "INFO: line 81\n" not in tail and "INFO: line 82\n" in tail
    assert not any(f"SECRET{i}" in tail + res.error.message for i in range(1, 5))
    assert "postgresql://bench:***@db/x with token=*** and password: ***" in tail
    assert error_tail(tail) == tail and error_tail("x" * 9000).endswith("x") and len(error_tail("x" * 9000)) <= DETAIL_MAX_CHARS
    assert error_tail(("y" * 300 + "\n") * 15) == error_tail(error_tail(("y" * 300 + "\n") * 15))
    assert error_tail("\n \n") is None and mask_credentials("no secrets here: a=1") == "no secrets here: a=1"
    store.create_run("r1", "smoke", {"name": "smoke"})
    _record(store, "r1", 0, "baseline", res)
    assert store.load_run("r1").jobs[0].result.error.detail == tail
