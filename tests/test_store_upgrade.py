"""Schema 2: version-1 results are upgraded when parsed (protocol.upgrade_result) and when a store is opened
(Store._upgrade_results, once). tests/data/store_v1/harness_v1.db is a store the release before wrote
(make_store.py beside it, run at commit 63da832), with that release's `harness report` of each run."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from harness.cli import main
from harness.protocol import (
    SCHEMA_VERSION, V1_EXECUTION_KEYS, ErrorKind, JobResult, ProtocolError, parse_result, upgrade_result,
)
from harness.store import RESULTS_VERSION_KEY, Store

DATA = Path(__file__).parent / "data" / "store_v1"
GROUPS = ("v1-host", "v1-android", "v1-failed")


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    db = tmp_path / "harness_v1.db"
    shutil.copy(DATA / "harness_v1.db", db)
    return db


def _docs(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        return [json.loads(r[0]) for r in conn.execute("SELECT result_json FROM jobs ORDER BY id")]


def _meta(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT key, value FROM store_meta").fetchall())


def test_the_fixture_holds_version_1_results(old_db: Path) -> None:
    docs = _docs(old_db)
    assert len(docs) == 8 and {d["schema_version"] for d in docs} == {1}
    assert all("execution" not in d and "timing_method" in d for d in docs)
    assert sum(d["status"] == "failed" for d in docs) == 1
    with sqlite3.connect(old_db) as conn:
        assert not conn.execute("SELECT name FROM sqlite_master WHERE name = 'store_meta'").fetchall()


def test_opening_the_store_upgrades_it_once(old_db: Path) -> None:
    Store(f"sqlite:///{old_db}")
    docs = _docs(old_db)
    assert {d["schema_version"] for d in docs} == {SCHEMA_VERSION}
    assert not any("timing_method" in d or set(V1_EXECUTION_KEYS) & set(d["extra"]) for d in docs)
    assert _meta(old_db) == {RESULTS_VERSION_KEY: str(SCHEMA_VERSION)}
    # Recorded: a later open does not rewrite rows (a row put back to version 1 by hand stays as it is,
    # and still reads as version 2, upgraded as it is parsed).
    v1 = (DATA / "harness_v1.db")
    with sqlite3.connect(v1) as src:
        first = src.execute("SELECT id, result_json FROM jobs ORDER BY id LIMIT 1").fetchone()
    with sqlite3.connect(old_db) as conn:
        conn.execute("UPDATE jobs SET result_json = ? WHERE id = ?", (first[1], first[0]))
    store = Store(f"sqlite:///{old_db}")
    assert _docs(old_db)[0]["schema_version"] == 1
    job = next(j for j in store.load_run_group("v1-host").jobs if j.id == first[0])
    assert job.result.schema_version == 2 and job.result.execution.timing_method == "perf_counter"


def test_upgraded_results_carry_the_execution_record(old_db: Path) -> None:
    store = Store(f"sqlite:///{old_db}")
    host = store.load_run_group("v1-host").jobs
    assert [j.variant for j in host] == ["baseline", "+opt_softmax", "+sgn_gelu", "+flash_attention", "+winograd"]
    for job in host:
        ex = job.result.execution
        assert (ex.runtime, ex.accelerator, ex.unit_used, ex.timing_method) == ("torch", "cpu", "cpu", "perf_counter")
        assert ex.delegation.state == "unknown" and ex.latency_summary_ms is None and ex.na_flags == []
    android = store.load_run_group("v1-android").jobs
    assert len(android) == 2
    for job in android:
        ex = job.result.execution
        assert (ex.runtime, ex.accelerator, ex.unit_asked, ex.unit_used) == ("litert-cpu", "cpu", "cpu", "cpu")
        assert ex.timing_method == "benchmark_model" and ex.latency_summary_ms.n == 3
        assert ex.latency_summary_ms.min <= ex.latency_summary_ms.avg <= ex.latency_summary_ms.max
        assert ex.na_flags == [] and "benchmark_flags" in job.result.extra  # diagnostics stay in extra
    (failed,) = store.load_run_group("v1-failed").jobs
    err = failed.result.error
    assert failed.status == "failed" and err.kind is ErrorKind.REFERENCE_MISMATCH
    # what the failed job's result did not say is completed from its options, as reports showed it before
    assert (failed.result.execution.runtime, failed.result.execution.unit_used) == ("torch", "cpu")


@pytest.mark.parametrize("group", GROUPS)
def test_the_upgraded_store_reports_the_same_figures(old_db: Path, tmp_path: Path, group: str) -> None:
    for fmt in ("csv", "md"):
        out = tmp_path / f"report_{group}.{fmt}"
        assert main(["report", "--store", f"sqlite:///{old_db}", "--run-group", group, "--format", fmt,
                     "-o", str(out)]) == 0
        assert out.read_text() == (DATA / f"report_{group}.{fmt}").read_text(), fmt


def _v1(**kw) -> dict:
    return {"schema_version": 1, "job_id": "j", "status": "ok", "samples_ms": [1.0], **kw}


def test_upgrade_result_moves_each_known_key() -> None:
    android = parse_result(json.dumps(_v1(timing_method="benchmark_model", extra={
        "runtime": "litert-gpu", "accelerator": "gpu", "unit": "gpu (partial: 7 delegate kernels, the rest on the CPU)",
        "latency_summary_ms": {"n": 5, "avg": 2.0, "std": 0.1, "median": 1.9}, "na_flags": ["conv3x3"],
        "delegates": [{"name": "XNNPACK", "coverage": "complete", "delegate_kernels": None},
                      {"name": "GPU", "coverage": "partial", "delegate_kernels": 7}],
        "benchmark_flags": ["--use_gpu=true"]})))
    ex = android.execution
    assert (ex.runtime, ex.accelerator, ex.unit_asked, ex.timing_method) == ("litert-gpu", "gpu", "gpu", "benchmark_model")
    assert ex.unit_used.startswith("gpu (partial") and ex.na_flags == ["conv3x3"]
    assert ex.latency_summary_ms.median == 1.9 and ex.latency_summary_ms.n == 5
    assert (ex.delegation.state, ex.delegation.delegated_nodes) == ("partial", 7)
    assert set(android.extra) == {"delegates", "benchmark_flags"} and android.timing_method == "benchmark_model"

    ios = JobResult.model_validate(_v1(timing_method="mach_absolute_time", extra={"compute_units": "cpuAndGPU"}))
    assert ios.execution.unit_used == ios.execution.unit_asked == "coreml:cpuAndGPU" and ios.extra == {}

    host_gpu = JobResult.model_validate(_v1(extra={"gpu": {"fully_accelerated": False, "ops_on_gpu": 30,
                                                           "ops_on_cpu": 2}, "unit": "gpu (partial: ...)"}))
    d = host_gpu.execution.delegation
    assert (d.state, d.delegated_nodes, d.total_nodes, d.evidence) == ("partial", 30, 32, "is_fully_accelerated()")

    aihub = JobResult.model_validate(_v1(extra={"accelerator": "npu", "latency_summary_ms": {"estimated": 3.5},
                                                "aihub": {"fully_on_unit": False, "layer_units": {"npu": 9, "cpu": 1}}}))
    d = aihub.execution.delegation
    assert (d.state, d.delegated_nodes, d.total_nodes) == ("partial", 9, 10)
    assert aihub.execution.latency_summary_ms.estimated == 3.5

    failed = JobResult.model_validate(_v1(status="failed", error={"kind": "disk_full", "message": "full"}))
    assert failed.error.kind is ErrorKind.DISK_FULL and f"{failed.error.kind}" == "disk_full"
    assert failed.execution.completed({"runtime": "torch", "accelerator": "auto"}).unit_used == "auto"
    assert upgrade_result({"schema_version": 2, "job_id": "x"}) == {"schema_version": 2, "job_id": "x"}


def test_an_unknown_error_kind_does_not_parse() -> None:
    with pytest.raises(ProtocolError, match="kind"):
        parse_result(json.dumps(_v1(status="failed", error={"kind": "gremlins", "message": "?"})))
