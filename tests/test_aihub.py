"""Qualcomm AI Hub devices (`aihub:<name>`) end to end: the real qai-hub client (0.56.0) against the local
stand-in of the Hub's REST API (tests/fakes/aihub_server.py), through `harness run` / `harness devices`.
No internet: every figure here is the stand-in's (labelled so in the fake)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.store import Store
from tests.fakes.aihub_server import PUBLISHED_S24_NPU_MS, FakeAiHub

pytest.importorskip("qai_hub")

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "suites" / "smoke.yaml"
S24 = "Samsung Galaxy S24 (Family)"
TOKEN = "tok-7f3a9c1e-secret"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with FakeAiHub(token=TOKEN) as srv:
        monkeypatch.setenv("QAIHUB_API_TOKEN", TOKEN)
        monkeypatch.setenv("QAIHUB_API_URL", srv.url)
        monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "no-client.ini"))  # never a developer's own
        monkeypatch.setenv("HARNESS_AIHUB_POLL_S", "0.01")
        monkeypatch.chdir(tmp_path)
        yield srv


def _one_row_suite(tmp_path: Path) -> Path:
    path = tmp_path / "one.yaml"
    path.write_text("name: one\nmodel: tiny\nworkload: unet_iteration\nvariants: [baseline]\n"
                    "options: {runtime: litert-gpu, dtype: fp32}\ndevices: [host]\n")
    return path


def _run(suite: Path, tmp_path: Path, graph: Path, *more: str, device: str = f"aihub:{S24}") -> int:
    return main(["run", str(suite), "--device", device, "--set", f"options.extra.graph={graph}",
                 "--store", f"sqlite:///{tmp_path}/x.db", "--cache", str(tmp_path / "cache"), "--no-report", *more])


def _jobs(tmp_path: Path, run_id: str | None = None):
    store = Store(f"sqlite:///{tmp_path}/x.db")
    run_id = run_id or store.list_runs()[0]["id"]
    return store.load_run(run_id)


def _no_token_anywhere(tmp_path: Path, *texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), f"the API token was written to {path}"


def test_smoke_suite_on_the_hub_standin(hub: FakeAiHub, tmp_path: Path, tiny_tflite: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    hub.cpu_fallback_ops = {"GELU"}  # the "NPU" refuses GELU: those layers run on the CPU
    assert _run(SMOKE, tmp_path, tiny_tflite, "--set", "runtime=litert-delegate") == 0
    run = _jobs(tmp_path)
    assert len(run.jobs) == 5 and all(j.status == "ok" for j in run.jobs), [j.result.error for j in run.jobs]
    # one upload for the five rows (one file), five profile jobs asking for the NPU
    assert hub.uploads == 1 and len(hub.jobs) == 5
    assert {j.options for j in hub.jobs.values()} == {"--compute_unit npu"}
    res = run.jobs[0].result
    assert res.timing_method == "aihub_profile" and len(res.samples_ms) == 100
    assert abs(sorted(res.samples_ms)[50] - PUBLISHED_S24_NPU_MS) < 0.06 * PUBLISHED_S24_NPU_MS
    assert res.extra["aihub"]["estimated_inference_ms"] == PUBLISHED_S24_NPU_MS
    assert res.init_ms == pytest.approx(PUBLISHED_S24_NPU_MS * 40, rel=1e-3)  # the stand-in's cold load
    assert res.memory.peak_rss_bytes == res.extra["aihub"]["memory_ranges_bytes"]["inference_memory_peak"][1]
    assert res.op_times_ms["attention"] > 0 and res.op_times_ms["gelu"] > 0 and res.op_times_ms["conv3x3"] > 0
    units = res.extra["aihub"]["layer_units"]
    assert set(units) == {"npu", "cpu"} and not res.extra["aihub"]["fully_on_unit"]
    assert res.execution.unit_used.startswith("npu (partial: ") and "on the CPU" in res.execution.unit_used
    assert res.execution.delegation.state == "partial"
    assert res.execution.delegation.delegated_nodes == units["npu"] < res.execution.delegation.total_nodes
    assert {d["type"] for d in res.extra["aihub"]["layers_off_unit"]} == {"GELU"}
    assert Path(res.extra["aihub"]["profile_file"]).is_file()
    assert "not Qualcomm AI Hub's" in res.extra["aihub"]["endpoint_note"]  # stand-in rows say so

    # harness report: Table 1 with the device name, the profile's latency and the partial unit
    capsys.readouterr()
    assert main(["report", "--store", f"sqlite:///{tmp_path}/x.db", "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert f"aihub:{S24}" in csv and "npu (partial: " in csv and "aihub_profile" in csv
    assert "AI Hub API stand-in" in csv  # the stand_in column of every row
    assert res.stand_in == ["AI Hub API stand-in"]  # typed, in the store
    assert main(["report", "--store", f"sqlite:///{tmp_path}/x.db", "--format", "md"]) == 0
    md = capsys.readouterr().out
    assert "stand-in figures, not measurements" in md and "[stand-in: AI Hub API stand-in]" in md

    # a second run: the model id is reused (get_model), nothing uploaded again
    assert _run(SMOKE, tmp_path, tiny_tflite, "--set", "runtime=litert-gpu") == 0
    assert hub.uploads == 1 and len(hub.jobs) == 10
    assert [j.options for j in hub.jobs.values()][5:] == ["--compute_unit gpu"] * 5
    out = capsys.readouterr()
    _no_token_anywhere(tmp_path, out.out, out.err)


def test_devices_listing_with_client_ini_and_without_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    ini = tmp_path / "client.ini"
    # plain `harness devices` asks adb and usbmuxd too: never start a real adb server here
    monkeypatch.setenv("ADBUTILS_ADB_PATH", shutil.which("true") or "/bin/true")
    for var in ("QAIHUB_API_TOKEN", "QAIHUB_API_URL", "ANDROID_ADB_SERVER_HOST", "ANDROID_ADB_SERVER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(ini))
    assert main(["devices", "--aihub", "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)
    assert len(notes) == 1 and notes[0]["note"] and "qai-hub configure" in notes[0]["hint"]
    assert main(["run", str(SMOKE), "--device", f"aihub:{S24}", "--store", f"sqlite:///{tmp_path}/x.db"]) == 2
    assert "no AI Hub credentials" in capsys.readouterr().err  # the fix is named, nothing ran

    with FakeAiHub(token=TOKEN) as srv:
        # the client's own `qai-hub configure` writes client.ini, as a user does
        exe = Path(sys.executable).with_name("qai-hub")
        subprocess.run([str(exe), "configure", "--api_token", TOKEN, "--api_url", srv.url, "--web_url", srv.url,
                        "--no-verbose"], check=True, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "QAIHUB_CLIENT_INI": str(ini)})
        assert main(["devices", "--aihub", "--json"]) == 0
        devices = json.loads(capsys.readouterr().out)
        s24 = next(d for d in devices if d["id"] == f"aihub:{S24}")
        assert s24["soc"] == "qualcomm-snapdragon-8gen3" and "framework:tflite" in s24["extra"]["attributes"]
        assert s24["os_version"] == "android 14"
        # plain `harness devices` lists them too when a token is configured
        assert main(["devices", "--json"]) == 0
        assert f"aihub:{S24}" in {d["id"] for d in json.loads(capsys.readouterr().out)}
        # the table in 80 columns: every id and chipset whole, on one line; the stand-in named under it
        monkeypatch.setenv("COLUMNS", "80")
        assert main(["devices", "--aihub"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert all(len(line) <= 80 for line in lines)
        row = next(line for line in lines if f"aihub:{S24}" in line)
        assert "qualcomm-snapdragon-8gen3" in row
        assert any(line.startswith(f"stand-in: aihub:{S24}: AI Hub API stand-in") for line in lines)
        # a rejected (expired) token: a note naming the fix, the token never printed
        srv.token_expired = True
        assert main(["devices", "--aihub"]) == 0
        out = capsys.readouterr().out
        assert "authenticate" in out and "qai-hub configure" in out and TOKEN not in out


def test_job_failure_unavailable_device_and_bad_option(hub: FakeAiHub, tmp_path: Path, tiny_tflite: Path) -> None:
    suite = _one_row_suite(tmp_path)
    hub.fail_devices = {S24: "Failed to compile model: Op GELU is not supported by the QNN delegate"}
    assert _run(suite, tmp_path, tiny_tflite) == 1
    job = _jobs(tmp_path).jobs[0]
    assert job.status == "failed" and job.result.error.kind == "compile"
    assert "Op GELU is not supported" in job.result.error.message and job.result.extra["aihub"]["hub_job_id"]

    hub.fail_devices = {}
    hub.unavailable_devices = {S24}
    before = len(hub.jobs)
    assert _run(suite, tmp_path, tiny_tflite, "--retries", "1") == 1
    run = _jobs(tmp_path, Store(f"sqlite:///{tmp_path}/x.db").list_runs()[0]["id"])
    job = run.jobs[0]
    assert job.result.error.kind == "device" and job.result.error.transient and "unavailable" in job.result.error.message
    assert job.attempts == 2 and len(hub.jobs) == before + 2  # retried once: a second Hub job

    # an option the Hub rejects (a compute unit it does not know): the stand-in answers 400 as the Hub does
    hub.unavailable_devices = set()
    assert _run(suite, tmp_path, tiny_tflite, "--set", "options.extra.aihub_options=--compute_unit tpu") == 1
    job = _jobs(tmp_path, Store(f"sqlite:///{tmp_path}/x.db").list_runs()[0]["id"]).jobs[0]
    assert job.result.error.kind == "input" and "Invalid value 'tpu'" in job.result.error.message

    # an unknown device name: exit 2 before any job, naming the Hub's devices
    assert _run(suite, tmp_path, tiny_tflite, device="aihub:Galaxy S99") == 2
    # a device picked by chipset attribute: the run names the device it picked
    assert _run(suite, tmp_path, tiny_tflite, device="aihub:chipset:qualcomm-snapdragon-8gen2") == 0
    run = _jobs(tmp_path, Store(f"sqlite:///{tmp_path}/x.db").list_runs()[0]["id"])
    assert run.jobs[0].device_id == "aihub:Samsung Galaxy S23 (Family)" and run.jobs[0].status == "ok"
    assert _run(suite, tmp_path, tiny_tflite, device="aihub:chipset:qualcomm-snapdragon-999") == 2


def test_timeout_then_resume_waits_for_the_same_hub_job(hub: FakeAiHub, tmp_path: Path, tiny_tflite: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    suite = _one_row_suite(tmp_path)
    hub.hang_devices = {S24}
    assert _run(suite, tmp_path, tiny_tflite, "--set", "measure.timeout_seconds=0.3", "--json") == 1
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    job = _jobs(tmp_path, first["run_id"]).jobs[0]
    assert job.result.error.kind == "timeout" and "--resume" in job.result.error.message
    hub_ids = set(hub.jobs)
    assert len(hub_ids) == 1
    # the Hub finishes it later; --resume picks the recorded Hub job up instead of submitting again
    hub.hang_devices = set()
    assert main(["run", "--resume", first["run_id"], "--store", f"sqlite:///{tmp_path}/x.db",
                 "--cache", str(tmp_path / "cache"), "--no-report"]) == 0
    assert set(hub.jobs) == hub_ids
    job = _jobs(tmp_path, first["run_id"]).jobs[-1]
    assert job.status == "ok" and job.result.extra["aihub"]["resumed"] is True
    assert job.result.extra["aihub"]["hub_job_id"] in hub_ids


def test_ctrl_c_loses_no_submitted_job(hub: FakeAiHub, tmp_path: Path, tiny_tflite: Path) -> None:
    """SIGINT while the five Hub jobs are queued: the run is interrupted (exit 130), and --resume finishes it
    from the recorded Hub job ids without submitting anything again."""
    import signal
    import time

    hub.hang_devices = {S24}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(SMOKE), "--device", f"aihub:{S24}",
                             "--set", f"options.extra.graph={tiny_tflite}", "--store", f"sqlite:///{tmp_path}/x.db",
                             "--cache", str(tmp_path / "cache"), "--no-report", "--json"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        while len(hub.jobs) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert len(hub.jobs) == 5, proc.communicate(timeout=30)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    run_id = Store(f"sqlite:///{tmp_path}/x.db").list_runs()[0]["id"]
    assert "--resume" in err and run_id in err
    submitted = set(hub.jobs)
    hub.hang_devices = set()
    assert main(["run", "--resume", run_id, "--store", f"sqlite:///{tmp_path}/x.db", "--cache", str(tmp_path / "cache"),
                 "--no-report"]) == 0
    assert set(hub.jobs) == submitted and hub.uploads == 1
    run = _jobs(tmp_path, run_id)
    ok = [j for j in run.jobs if j.status == "ok"]
    assert len(ok) == 5 and all(j.result.extra["aihub"]["resumed"] for j in ok)
    assert {j.result.extra["aihub"]["hub_job_id"] for j in ok} == submitted


def test_http_5xx_is_retried_and_an_expired_token_stops_the_run(hub: FakeAiHub, tmp_path: Path, tiny_tflite: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    suite = _one_row_suite(tmp_path)
    hub.http_5xx = 1  # the next API request answers 503: the client retries it
    assert _run(suite, tmp_path, tiny_tflite) == 0
    assert hub.answered_5xx == 1 and _jobs(tmp_path).jobs[0].status == "ok"
    capsys.readouterr()
    hub.token_expired = True
    assert _run(suite, tmp_path, tiny_tflite) == 2
    err = capsys.readouterr().err
    assert "authenticate" in err and "qai-hub configure" in err and TOKEN not in err
