"""The store on SQLite and PostgreSQL: round trip, run groups, resume keys, concurrent writers.

PostgreSQL runs for real: .ci/run starts Debian's server on loopback and sets HARNESS_TEST_PG_URL
(scripts/start_test_postgres.sh does the same on a developer machine).
"""
from __future__ import annotations

import multiprocessing as mp
import os

import pytest
import sqlalchemy as sa

from harness.protocol import JobResult
from harness.store import Store, jobs, metadata, samples

PG_URL = os.environ.get("HARNESS_TEST_PG_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/r.db"
    if not PG_URL:
        pytest.skip("HARNESS_TEST_PG_URL is not set: run scripts/start_test_postgres.sh (CI does)")
    engine = sa.create_engine(PG_URL)
    metadata.drop_all(engine)  # a fresh schema per test
    engine.dispose()
    return PG_URL


def _write(url: str, run_id: str, writer: int, n: int) -> None:
    store = Store(url)
    for i in range(n):
        res = JobResult(job_id=f"{writer}-{i}", status="ok", samples_ms=[1.0 + i, 2.0, 3.0], warmup_ms=[9.0])
        store.record_job(run_id, job_key=f"w{writer}-{i}", job_index=i, device_id=f"android:dev{writer}",
                         workload="unet_iteration", model="tiny", variant="baseline", variant_index=0,
                         flags={}, options={}, options_hash="h", result=res)
    store.engine.dispose()


def test_concurrent_writers_lose_no_row(url):
    store = Store(url)
    store.create_run("r1", "s", {"name": "s"})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write, args=(url, "r1", w, 100)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar() == 400
        assert conn.execute(sa.select(sa.func.count()).select_from(samples)).scalar() == 400 * 4
    run = store.load_run("r1")
    assert len({j.job_key for j in run.jobs}) == 400
    assert all(len(j.result.samples_ms) == 3 for j in run.jobs)


def test_run_group_merges_shards_and_resume_keys(url):
    store = Store(url)
    for shard in (1, 2):
        rid = f"r{shard}"
        store.create_run(rid, "nightly", {"name": "nightly"}, run_group="night-1")
        store.record_device(rid, {"id": f"android:d{shard}", "kind": "android"})
        _write(url, rid, shard, 3)
        store.finish_run(rid, "completed")
    store.record_job("r1", job_key="bad", job_index=9, device_id="android:d1", workload="unet_iteration",
                     model="tiny", variant="x", variant_index=1, flags={}, options={}, options_hash="h",
                     result=JobResult.failure("x", "crash", "boom"))
    merged = store.load_run_group("night-1")
    assert merged.id == "night-1" and merged.status == "completed"
    assert set(merged.devices) == {"android:d1", "android:d2"} and len(merged.jobs) == 7
    assert store.completed_job_keys("r1") == {"w1-0", "w1-1", "w1-2"}  # the failed job is not done
    store.reopen_run("r1")
    assert store.load_run("r1").status == "running"
