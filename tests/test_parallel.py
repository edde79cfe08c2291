"""bench/parallel.py: its efficiency arithmetic, and one short real run on 1 and 2 fake phones."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "parallel.py"


def _bench():
    """bench/parallel.py as a module (bench/ is no package); registered first, as dataclasses need."""
    if "bench_parallel" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_parallel", SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_parallel"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_parallel"]


def _point(bp, n: int, jobs_ok: int, cli_wall_s: float, run_wall_s: float):
    return bp.Point(devices=n, jobs_planned=jobs_ok, jobs_ok=jobs_ok, jobs_failed=0, jobs_lost=0, rc=0,
                    cli_wall_s=cli_wall_s, run_wall_s=run_wall_s, controller_cpu_s=2.0, controller_user_s=1.8,
                    controller_sys_s=0.2,
                    controller_peak_rss_mib=200.0, phones_cpu_s=0.4 * jobs_ok, adb_server_cpu_s=0.1,
                    host_busy_s=10.0, load_avg_1m_before=0.5, job_wall_s_mean=3.0, device_run_s_mean=2.8,
                    orphans_reaped=jobs_ok, startup_wall_s=2.0, startup_cpu_s=1.5, prep_and_gaps_s=0.5,
                    busiest_phone_jobs_s=6.0, mean_phone_jobs_s=6.0)


def test_efficiency_is_throughput_per_device_against_the_smallest_count() -> None:
    bp = _bench()
    one = _point(bp, 1, 2, cli_wall_s=10.0, run_wall_s=8.0)
    four = _point(bp, 4, 8, cli_wall_s=12.5, run_wall_s=10.0)
    assert bp.efficiency(one, one, "cli_wall_s") == pytest.approx(1.0)
    assert bp.efficiency(four, one, "cli_wall_s") == pytest.approx(0.8)  # 8/12.5 over 4 x 2/10
    assert bp.efficiency(four, one, "run_wall_s") == pytest.approx(0.8)
    failed = _point(bp, 4, 6, cli_wall_s=10.0, run_wall_s=8.0)  # 2 of 8 jobs failed: they are no throughput
    assert bp.efficiency(failed, one, "run_wall_s") == pytest.approx(0.75)
    # repeats: the row is the median-wall repeat; relative wall and efficiency against N0 = 2 here
    two_a, two_b, two_c = (_point(bp, 2, 4, w, w - 2) for w in (11.0, 30.0, 10.0))
    eight = _point(bp, 8, 16, 13.0, 11.0)
    rows = bp.summarize([two_a, eight, two_b, two_c])
    assert [r["devices"] for r in rows] == [2, 8] and rows[0]["cli_wall_s"] == 11.0 and rows[0]["repeats"] == 3
    assert rows[1]["cli_wall_rel"] == pytest.approx(13.0 / 11.0)
    assert rows[1]["efficiency_cli"] == pytest.approx((16 / 13.0) / (4 * 4 / 11.0))
    assert rows[1]["others_cpu_s"] == pytest.approx(10.0 - 2.0 - 6.4 - 0.1)


def test_bench_runs_one_and_two_fake_phones(tmp_path: Path, pytestconfig: pytest.Config) -> None:
    bp = _bench()
    # the same tiny block as tests/test_android.py: same cache file, converted once for both
    key = hashlib.sha256(bp._BLOCK_SRC.encode()).hexdigest()[:12]
    cache = getattr(pytestconfig, "cache", None)
    folder = Path(cache.mkdir("android_tflite")) if cache is not None else tmp_path
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--devices", "1,2", "--variants", "1", "--runs", "2",
                           "--run-delay", "0.3", "--tflite", str(folder / f"block-{key}.tflite"), "--json", str(out)],
                          check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    counts = [(r["devices"], r["jobs_ok"], r["jobs_failed"], r["jobs_lost"]) for r in rows]
    assert counts == [(1, 1, 0, 0), (2, 2, 0, 0)]
    for r in rows:
        assert 0 < r["run_wall_s"] < r["cli_wall_s"] and 0 < r["startup_wall_s"] < r["cli_wall_s"]
        assert 0 < r["startup_cpu_s"] <= r["controller_cpu_s"] and r["controller_peak_rss_mib"] > 20
        # run_job.sh outlives its launching shell: one orphan per job, reaped and counted as the phone's
        assert r["orphans_reaped"] == r["jobs_ok"] and r["phones_cpu_s"] > 0.05 * r["jobs_ok"]
        # the phone's part of a job holds its 3 runs x 0.3 s of --run_delay
        assert r["device_run_s_mean"] >= 0.9 and r["job_wall_s_mean"] >= r["device_run_s_mean"]
    # Efficiency is a measurement (bench/parallel.py prints it), not asserted here: it swings with the
    # machine's load. That the phones run in parallel is checked in tests/test_android.py.
    assert 0 < rows[1]["efficiency_run"] <= 2.5, rows
    assert "| devices | jobs ok/failed/lost | wall s |" in proc.stdout and "\n| 2 | 2/0/0 |" in proc.stdout
