"""Memory headroom: verdicts against the per-app limit table, and the Table-1 report flagging."""
import pytest

from harness.headroom import GIB, MB, device_memory_limit, headroom, ios_app_limit, job_peak_bytes
from harness.protocol import JobResult, MemoryFigures
from harness.report.render import render_markdown
from harness.report.table1 import table1
from tests.fakes.stored_runs import ladder_run

IPHONE_14_PRO = {"id": "ios:abc", "kind": "ios", "model": "iPhone15,2", "extra": {"product_type": "iPhone15,2"}}
IPHONE_13 = {"id": "ios:def", "kind": "ios", "model": "iPhone14,5", "extra": {"product_type": "iPhone14,5"}}


def test_ios_limits_by_ram_class():
    assert ios_app_limit("iPhone14,5")[0] == 2 * GIB  # iPhone 13: 4 GiB RAM
    assert ios_app_limit("iPhone15,2")[0] == int(2.8 * GIB)  # iPhone 14 Pro: 6 GiB
    limit, why = ios_app_limit("iPhone16,1")  # 15 Pro: 8 GiB, no published figure
    assert limit is None and "no per-app limit documented" in why
    assert ios_app_limit("iPhone99,9", ram_bytes=4 * GIB)[0] == 2 * GIB  # unknown model: its RAM
    assert ios_app_limit("iPhone99,9")[0] is None


def test_verdicts():
    ok = headroom(2500 * MB, IPHONE_14_PRO)
    assert ok.verdict == "ok" and ok.headroom_bytes == int(2.8 * GIB) - 2500 * MB
    over = headroom(2500 * MB, IPHONE_13)
    assert over.verdict == "over" and over.headroom_bytes == 2 * GIB - 2500 * MB
    assert "over the limit 2,048 MB by 452 MB" in over.reason
    # With the increased-memory-limit entitlement the table is a lower bound: over it is unknown.
    assert headroom(2500 * MB, IPHONE_13, increased_memory_limit=True).verdict == "unknown"
    android = {"id": "android:1", "kind": "android", "ram_bytes": 8 * GIB}
    assert headroom(9 * GIB, android).verdict == "over" and headroom(7 * GIB, android).verdict == "ok"
    assert device_memory_limit({"id": "x", "kind": "android"})[0] is None
    assert headroom(1, {"id": "x", "kind": "android"}).verdict == "unknown"
    assert headroom(None, android).verdict == "unknown"


def test_job_peak_bytes():
    assert job_peak_bytes(MemoryFigures(peak_rss_bytes=100, gpu_bytes=20)) == (120, "peak RSS + GPU driver memory")
    assert job_peak_bytes(MemoryFigures(weight_bytes=10, tensor_bytes_measured=5))[0] == 15
    assert job_peak_bytes(MemoryFigures())[0] is None


@pytest.fixture()
def run(tmp_path):
    """Two ladder rows on an iPhone 13 (4 GiB: 2 GiB per app): the first fits, the second does not."""
    results = [JobResult(job_id=f"j{i}", status="ok", samples_ms=[10.0, 11.0, 12.0],
                         memory=MemoryFigures(peak_rss_bytes=peak_mb * MB, weight_bytes=1600 * MB))
               for i, peak_mb in enumerate([1800, 2300])]
    return ladder_run(f"sqlite:///{tmp_path}/r.db", IPHONE_13, results,
                      {"runtime": "coreml", "dtype": "fp16", "accelerator": "gpu"})


def test_report_flags_variant_over_limit(run):
    df = table1(run)
    assert list(df["headroom"]) == ["ok", "over"]
    assert list(df["mem_limit_mb"]) == [2048.0, 2048.0]
    md = render_markdown(run, df)
    assert "| Peak MB / limit |" in md
    assert "| 1,800 / 2,048 |" in md and "| 2,300 / 2,048 OVER |" in md
    assert "OVER THE MEMORY LIMIT: ios:def / + optimized softmax: peak 2,300 MB is over the limit" in md
