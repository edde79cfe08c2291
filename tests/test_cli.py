"""The CLI path run -> store -> report on the small config, through real subprocesses."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.store import Store


def _sigint_default() -> None:
    """In the child: SIGINT back to its default, so Python turns it into KeyboardInterrupt even when
    pytest itself was started in the background (where the shell makes children ignore SIGINT)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


REPO = Path(__file__).resolve().parents[1]


def harness(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    url = f"sqlite:///{tmp}/r.db"
    report = tmp / "report.html"
    proc = harness("run", "suites/smoke.yaml", "--store", url, "--report", str(report),
                   "--set", "iterations=3", "--cache", str(tmp / "cache"))
    return proc, url, report


def test_run_stores_every_job_and_reports(smoke_run):
    proc, url, report = smoke_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = proc.stdout.strip().splitlines()[-1]
    assert proc.stdout == f"{run_id}\n"  # stdout is the run id alone (`run=$(harness run ...)`)
    run = Store(url).load_run(run_id)
    assert run.status == "completed"
    assert [j.variant for j in run.jobs] == ["baseline", "+opt_softmax", "+sgn_gelu", "+flash_attention",
                                            "+winograd"]
    for job in run.jobs:
        r = job.result
        assert job.status == "ok", r.error
        assert len(r.samples_ms) == 3 and all(s > 0 for s in r.samples_ms) and len(r.warmup_ms) == 1
        assert r.check.passed and r.check.rel_error < 1e-3
        m = r.memory
        assert m.weight_bytes == 12_890_768  # tiny config, fp32
        assert m.tensor_bytes_measured > 0 and m.tensor_bytes_planned > 0
        assert m.tensor_measure_method == "torch_profiler_cpu_peak"
        assert set(r.op_times_ms) >= {"attention", "groupnorm", "gelu", "conv3x3", "other"}
        assert r.versions["torch"].startswith("2.")
    # FlashAttention never materializes the T x T scores: its planned tensor memory is lower.
    planned = {j.variant: j.result.memory.tensor_bytes_planned for j in run.jobs}
    assert planned["+flash_attention"] < planned["+sgn_gelu"]
    # The terminal table printed the five rows (on stderr).
    for label in ("Baseline", "+ optimized softmax", "+ S-GN/GELU", "+ FlashAttention", "+ Winograd (all)"):
        assert label in proc.stderr
    html = report.read_text()
    assert html.count("<tr>") >= 6 and "data:image/png;base64," in html and "+ FlashAttention" in html


def test_report_formats_from_the_store(smoke_run, tmp_path):
    _, url, _ = smoke_run
    md = harness("report", "--store", url, "--format", "md")
    assert md.returncode == 0, md.stderr
    rows = [line for line in md.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 6  # header + five ladder rows
    assert "| Baseline |" in md.stdout and "+0.0%" in md.stdout
    out = tmp_path / "t.csv"
    c = harness("report", "--store", url, "--format", "csv", "-o", str(out))
    assert c.returncode == 0, c.stderr
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["variant"] for r in table] == ["baseline", "+opt_softmax", "+sgn_gelu", "+flash_attention",
                                            "+winograd"]
    assert all(float(r["latency_ms"]) > 0 and float(r["weight_mb"]) > 0 for r in table)
    listing = harness("report", "--store", url, "--list")
    assert "smoke" in listing.stdout and "completed" in listing.stdout
    # --format json: the same rows as the CSV, one JSON object (issue 20: one --format across commands)
    js = harness("report", "--store", url, "--format", "json")
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    assert doc["status"] == "completed" and [r["variant"] for r in doc["rows"]] == [r["variant"] for r in table]
    assert all(r["latency_ms"] > 0 and r["error_detail"] is None for r in doc["rows"])
    runs = json.loads(harness("report", "--store", url, "--list", "--format", "json").stdout)
    assert runs[0]["id"] == doc["run_id"] and runs[0]["suite_name"] == "smoke"
    table_out = harness("report", "--store", url, "--format", "table")
    assert table_out.returncode == 0 and "+ FlashAttention" in table_out.stdout
    assert harness("report", "--store", url, "--format", "terminal").stdout == table_out.stdout  # the old name


def test_readme_ci_recipe_captures_only_the_run_id(tmp_path):
    """README "Regression detection": `run=$(harness run ...)` then `harness tag "$run" nightly`, under set -e;
    stdout of run is one line, the run id; --json prints one JSON object instead."""
    url = f"sqlite:///{tmp_path}/r.db"
    h = f"{sys.executable} -m harness"
    script = (f'set -e; run=$({h} run suites/smoke.yaml --store {url} --no-report --set iterations=2 '
              f'--set "variants=[baseline]"); printf "%s" "$run" > {tmp_path}/run.txt; '
              f'{h} tag "$run" nightly --store {url}')
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = (tmp_path / "run.txt").read_text()
    assert run_id and "\n" not in run_id and run_id == Store(url).resolve_run()
    assert f"run {run_id}: 1 job on host" in proc.stderr  # not "1 jobs"
    assert f"tagged {run_id} 'nightly'" in proc.stderr
    js = harness("run", "--resume", run_id, "--store", url, "--no-report", "--json")
    assert js.returncode == 0, js.stderr[-3000:]
    assert json.loads(js.stdout) == {"run_id": run_id, "status": "completed",
                                     "counts": {"jobs": 1, "ok": 0, "failed": 0, "skipped": 1, "retried": 0},
                                     "failures": [], "stand_in": {}}  # the host is no stand-in
    js2 = harness("run", "--resume", run_id, "--store", url, "--no-report", "--format", "json")  # --json's new name
    assert js2.returncode == 0 and json.loads(js2.stdout)["run_id"] == run_id


def test_reference_mismatch_fails_that_job_only(tmp_path):
    # Winograd in fp32 differs from direct convolution by ~3e-6 (relative); the others by <1e-6.
    url = f"sqlite:///{tmp_path}/r.db"
    proc = harness("run", "suites/smoke.yaml", "--store", url, "--no-report", "--set", "iterations=1",
                   "--set", "variants=[baseline, +winograd]", "--set", "check.rel_tolerance=2e-6")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "FAILED host +winograd: reference_mismatch" in proc.stderr
    run = Store(url).load_run(Store(url).resolve_run())
    ok, bad = run.jobs
    assert ok.status == "ok" and ok.result.samples_ms
    assert bad.status == "failed" and "disagrees with the PyTorch reference" in bad.result.error.message
    assert bad.result.check.rel_error > 2e-6


def test_bad_input_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: tiny\nmeasure:\n  iteratons: 3\n")
    proc = harness("run", str(bad), "--store", f"sqlite:///{tmp_path}/r.db")
    assert proc.returncode == 2 and f"{bad}:4: measure.iteratons: unknown field" in proc.stderr
    proc = harness("run", "suites/smoke.yaml", "--device", "phone:123", "--store", f"sqlite:///{tmp_path}/r.db")
    assert proc.returncode == 2 and "unknown device kind 'phone'" in proc.stderr
    proc = harness("run", "suites/smoke.yaml", "--weights", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    proc = harness("report", "--store", f"sqlite:///{tmp_path}/empty.db")  # a read-only command creates no store
    assert proc.returncode == 2 and "no results store at" in proc.stderr and not (tmp_path / "empty.db").exists()
    proc = harness("run", "suites/smoke.yaml", "--bogus")
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr


def test_help_for_every_command():
    for cmd in ([], ["run"], ["report"], ["devices"], ["export"], ["inspect"]):
        proc = harness(*cmd, "--help")
        assert proc.returncode == 0 and "usage: harness" in proc.stdout
        if cmd:  # one --format option wherever output has a machine form; --json, where it was, as its alias
            assert "--format table|json" in " ".join(proc.stdout.split()), cmd
            assert ("the same as --format json" in " ".join(proc.stdout.split())) == (cmd[0] in ("run", "devices",
                                                                                               "inspect")), cmd


def test_devices_lists_the_host():
    proc = harness("devices", "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"id": "host"' in proc.stdout and '"state": "ready"' in proc.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_finished_jobs(tmp_path, sig):
    url = f"sqlite:///{tmp_path}/r.db"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "suites/smoke.yaml", "--store", url,
                             "--no-report", "--set", "iterations=1", "--set", "variants=[baseline, +opt_softmax]"],
                            cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    store = None
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for the first stored job
        time.sleep(0.5)
        if Path(f"{tmp_path}/r.db").exists():
            store = store or Store(url)
            try:
                if store.load_run(store.resolve_run()).jobs:
                    break
            except Exception:  # noqa: BLE001 - the run row may not exist yet
                pass
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    run = store.load_run(store.resolve_run())
    assert run.status == "interrupted"
    assert f"continue with `harness run --resume {run.id}`" in err
    assert len(run.jobs) == 1 and run.jobs[0].status == "ok" and run.jobs[0].variant == "baseline"
    # The agent of the job in flight was stopped with the controller.
    agents = subprocess.run(["pgrep", "-f", f"device_agents/host/agent.py.*{run.id}"], capture_output=True)
    assert agents.stdout.strip() == b""
    if sig == signal.SIGINT:
        # --resume runs only the job without a stored result, into the same run.
        resumed = harness("run", "--resume", run.id, "--store", url, "--no-report")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "1 of 2 jobs have no stored result" in resumed.stderr
        run = store.load_run(run.id)
        assert run.status == "completed" and [j.variant for j in run.jobs] == ["baseline", "+opt_softmax"]
