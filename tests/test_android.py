"""Android devices end to end against the fake adb server: the real CLI, adbutils, run_job.sh under
mksh with toybox's tools (Android's userland), the benchmark_model stand-in, the parser, the store and the report.

`pytest tests/test_android.py -s` also prints the bytes pushed per run and the fault table
(jobs completed / retried / failed / lost per injected fault).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.devices.android import (
    AGENT_SCRIPT, AndroidConfigError, Cooldown, JobFailure, benchmark_flags, check_benchmark_model,
    device_state, exact_samples_ms, parse_adb_server, runtime_of, settings_for, unit_of, unit_ran,
)
from harness.devices.android.parse import DelegateApplication, RunStats
from harness.devices.base import DeviceContext
from harness.protocol import JobSpec, MeasurePolicy, RuntimeOptions
from harness.store import Store


def _sigint_default() -> None:
    """In the child: SIGINT back to its default, so Python turns it into KeyboardInterrupt even when
    pytest itself was started in the background (where the shell makes children ignore SIGINT)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


try:
    from tests.fakes.adb_faults import DropPushes, has_pid, watch
    from tests.fakes.adb_server import FakeAdbServer, FakeDevice
    from tests.fakes.benchmark_model_standin import FAULT_FILE_NAME, write_standin
except ModuleNotFoundError:  # pytest's default import mode puts tests/, not the repo root, on sys.path
    from fakes.adb_faults import DropPushes, has_pid, watch  # type: ignore[no-redef]
    from fakes.adb_server import FakeAdbServer, FakeDevice  # type: ignore[no-redef]
    from fakes.benchmark_model_standin import FAULT_FILE_NAME, write_standin  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "suites" / "smoke.yaml"
DEVICE_DIR = "/data/local/tmp/harness"


@pytest.fixture(autouse=True)
def _harmless_adb(monkeypatch: pytest.MonkeyPatch) -> None:
    # adbutils runs `adb start-server` when a connect fails: never start a real adb server here.
    monkeypatch.setenv("ADBUTILS_ADB_PATH", shutil.which("true") or "/bin/true")
    monkeypatch.delenv("ANDROID_ADB_SERVER_HOST", raising=False)
    monkeypatch.delenv("ANDROID_ADB_SERVER_PORT", raising=False)


def _farm(path: Path, **android) -> Path:
    settings = {"meminfo_interval_s": 0.1, "poll_s": 0.5, "reconnect_timeout_s": 2}
    settings.update(android)
    path.write_text(yaml.safe_dump({"android": settings}))
    return path


def _run_args(port: int, standin: Path, store: str, farm: Path, *extra: str) -> list[str]:
    return ["run", str(SMOKE), "--device", "android", "--adb", f"127.0.0.1:{port}", "--benchmark-model",
            str(standin), "--farm", str(farm), "--store", store, *extra]


# ------------------------------------------------------------------------------------ pure parts

def _spec(**kw) -> JobSpec:
    options = kw.pop("options", {})
    measure = kw.pop("measure", {})
    return JobSpec(job_id="j", run_id="r", device="android:X", variant="baseline",
                   options=RuntimeOptions(**options), measure=MeasurePolicy(**measure), **kw)


def test_gpu_precision_follows_the_weight_dtype() -> None:
    """fp16 and int8 (weight-only: weights dequantized, compute in fp16 on the GPU) allow fp16 GPU
    precision; fp32 keeps full precision."""
    for dtype, allowed in (("fp32", "false"), ("fp16", "true"), ("int8", "true")):
        args, _ = benchmark_flags(_spec(options={"runtime": "litert-gpu", "dtype": dtype}), "/d/m.tflite",
                                  supported=None)
        assert f"--gpu_precision_loss_allowed={allowed}" in args


def test_flags_from_options_and_measure() -> None:
    spec = _spec(options={"runtime": "litert-gpu", "dtype": "fp16", "threads": 4,
                          "extra": {"gpu_backend": "cl", "enable_op_profiling": True, "run_delay": 0.25,
                                    "flags": {"use_xnnpack": False}}},
                 measure={"iterations": 20, "warmup_runs": 3, "min_seconds": 1.5, "max_seconds": 90})
    args, missing = benchmark_flags(spec, "/d/m.tflite", supported=None, result_file="/d/r.pb")
    assert args == ["--graph=/d/m.tflite", "--num_runs=20", "--warmup_runs=3", "--warmup_min_secs=0",
                    "--min_secs=1.5", "--max_secs=90", "--num_threads=4", "--use_gpu=true", "--gpu_backend=cl",
                    "--gpu_precision_loss_allowed=true", "--require_full_delegation=true", "--run_delay=0.25",
                    "--enable_op_profiling=true",
                    "--report_peak_memory_footprint=true", "--use_xnnpack=false"]
    assert missing == []  # nothing is known to be missing; result_file_path needs a binary that lists it
    supported = {"graph", "num_runs", "warmup_runs", "min_secs", "max_secs", "use_gpu", "result_file_path"}
    args, missing = benchmark_flags(spec, "/d/m.tflite", supported=supported, result_file="/d/r.pb")
    assert "--result_file_path=/d/r.pb" in args and "--gpu_backend=cl" not in args
    assert set(missing) == {"warmup_min_secs", "num_threads", "gpu_backend", "gpu_precision_loss_allowed",
                            "run_delay", "enable_op_profiling", "report_peak_memory_footprint", "use_xnnpack"}
    with pytest.raises(JobFailure, match="no --use_gpu flag"):
        benchmark_flags(spec, "/d/m.tflite", supported={"graph", "num_runs"})
    with pytest.raises(JobFailure, match="gpu_backend must be one of cl, gl"):
        benchmark_flags(_spec(options={"runtime": "litert-gpu", "extra": {"gpu_backend": "vulkan"}}), "g",
                        supported=None)


def test_gpu_rows_require_full_delegation_unless_cpu_fallback_is_allowed() -> None:
    """Classic tool: --require_full_delegation=true where it lists the flag; LiteRT 2.x's CompiledModel
    tool (known by --use_cpu and --gpu-precision): the GPU alone, full delegation, its precision flag."""
    classic = {"graph", "num_runs", "use_gpu", "gpu_precision_loss_allowed", "require_full_delegation"}
    args, _ = benchmark_flags(_spec(options={"runtime": "litert-gpu", "dtype": "fp16"}), "g", supported=classic)
    assert "--require_full_delegation=true" in args and "--gpu_precision_loss_allowed=true" in args
    args, _ = benchmark_flags(_spec(options={"runtime": "litert-gpu", "extra": {"allow_cpu_fallback": True}}), "g",
                              supported=classic)
    assert "--require_full_delegation=false" in args
    compiled = {"graph", "num_runs", "use_cpu", "use_gpu", "use_npu", "require_full_delegation", "gpu_backend",
                "gpu-precision"}
    args, missing = benchmark_flags(_spec(options={"runtime": "litert-gpu", "dtype": "fp16",
                                                   "extra": {"gpu_backend": "webgpu"}}), "g", supported=compiled)
    assert args[:2] == ["--graph=g", "--num_runs=5"]
    assert {"--use_gpu=true", "--use_cpu=false", "--require_full_delegation=true", "--gpu-precision=fp16",
            "--gpu_backend=webgpu"} <= set(args)
    assert not any(a.startswith("--gpu_precision_loss_allowed") for a in args)
    args, _ = benchmark_flags(_spec(options={"runtime": "litert-gpu", "dtype": "fp16",
                                             "extra": {"allow_cpu_fallback": True, "precision": "fp32"}}), "g",
                              supported=compiled)
    assert {"--use_cpu=true", "--require_full_delegation=false", "--gpu-precision=fp32"} <= set(args)
    with pytest.raises(JobFailure, match="one of opencl, webgpu, opengl, gl for LiteRT 2.x"):
        benchmark_flags(_spec(options={"runtime": "litert-gpu", "extra": {"gpu_backend": "cl"}}), "g", supported=compiled)
    with pytest.raises(JobFailure, match="options.extra.allow_cpu_fallback"):
        benchmark_flags(_spec(options={"runtime": "litert-gpu", "extra": {"allow_cpu_fallback": "perhaps"}}), "g",
                        supported=compiled)


def test_runtime_mapping() -> None:
    assert runtime_of(_spec(options={"runtime": "torch"})) == ("litert-gpu", True)  # the suite default
    assert runtime_of(_spec(options={"runtime": "torch", "accelerator": "cpu"})) == ("litert-cpu", False)
    assert runtime_of(_spec(options={"runtime": "litert-cpu"})) == ("litert-cpu", False)
    assert runtime_of(_spec(options={"runtime": "litert-cpu", "extra": {"use_gpu": True}})) == ("litert-gpu", True)
    with pytest.raises(JobFailure, match=r"'coreml' does not run on android devices \(it runs on: ios\)"):
        runtime_of(_spec(options={"runtime": "coreml"}))



def test_compute_units_map_to_benchmark_model_delegate_flags(tmp_path: Path) -> None:
    nnapi = _spec(options={"runtime": "litert-nnapi", "dtype": "fp16", "extra": {"nnapi_accelerator_name": "qti-dsp"}})
    args, _ = benchmark_flags(nnapi, "/d/m.tflite", supported=None)
    assert {"--use_gpu=false", "--use_nnapi=true", "--nnapi_allow_fp16=true", "--nnapi_accelerator_name=qti-dsp"} <= set(args)
    assert unit_of(nnapi).label == "nnapi:qti-dsp" and runtime_of(nnapi) == ("litert-nnapi", False)
    with pytest.raises(JobFailure, match="no --use_nnapi flag"):
        benchmark_flags(nnapi, "/d/m.tflite", supported={"graph", "num_runs", "use_gpu"})
    with pytest.raises(JobFailure, match="not an NNAPI device name"):
        unit_of(_spec(options={"runtime": "litert-nnapi", "extra": {"nnapi_accelerator_name": "x; rm -rf /"}}))
    # an external (vendor NPU) delegate: a host file is pushed under device_dir/lib, a phone path used as is
    lib = tmp_path / "libQnnTFLiteDelegate.so"
    lib.write_bytes(b"not really a delegate")
    ext = _spec(options={"runtime": "litert-delegate", "extra": {
        "external_delegate_path": str(lib), "external_delegate_options": {"backend_type": "htp"}}})
    unit = unit_of(ext, "/data/local/tmp/h")
    assert unit.library_host == str(lib) and unit.library_device == "/data/local/tmp/h/lib/libQnnTFLiteDelegate.so"
    args, _ = benchmark_flags(ext, "/d/m.tflite", supported=None, device_dir="/data/local/tmp/h")
    assert "--external_delegate_path=/data/local/tmp/h/lib/libQnnTFLiteDelegate.so" in args
    assert "--external_delegate_options=backend_type:htp" in args and "--use_gpu=false" in args
    on_phone = _spec(options={"runtime": "litert-delegate", "extra": {"external_delegate_path": "/vendor/lib64/libX.so"}})
    assert unit_of(on_phone).library_host is None and unit_of(on_phone).label == "delegate:libX.so"
    with pytest.raises(JobFailure, match="needs the vendor delegate library"):
        unit_of(_spec(options={"runtime": "litert-delegate"}))
    with pytest.raises(JobFailure, match="neither a file on this host nor an absolute path"):
        unit_of(_spec(options={"runtime": "litert-delegate", "extra": {"external_delegate_path": "rel/lib.so"}}))
    with pytest.raises(JobFailure, match="unknown runtime 'tpu'; known runtimes: torch, litert-cpu, litert-gpu"):
        unit_of(_spec(options={"runtime": "tpu"}))


def test_the_unit_a_run_used_comes_from_what_benchmark_model_said() -> None:
    gpu = unit_of(_spec(options={"runtime": "litert-gpu"}))
    nnapi = unit_of(_spec(options={"runtime": "litert-nnapi"}))
    assert unit_ran(gpu, [DelegateApplication("GPU", "complete", None)]) == "gpu"
    assert unit_ran(gpu, [DelegateApplication("GPU", "partial", 7)]) == \
        "gpu (partial: 7 delegate kernels, the rest on the CPU)"
    assert unit_ran(nnapi, [DelegateApplication("NNAPI", "none", 0)]) == "cpu (the NNAPI delegate took no node)"
    assert unit_ran(nnapi, []) == "nnapi (benchmark_model did not report applying the delegate)"
    assert unit_ran(unit_of(_spec(options={"runtime": "litert-cpu"})), []) == "cpu"

def test_exact_samples_only_where_the_stat_line_implies_them() -> None:
    def stats(count, first, curr, lo, hi):
        return RunStats(count, first, curr, lo, hi, (lo + hi) / 2, 1.0)

    assert exact_samples_ms(stats(1, 5000, 5000, 5000, 5000)) == [5.0]
    assert exact_samples_ms(stats(2, 5000, 7000, 5000, 7000)) == [5.0, 7.0]
    assert exact_samples_ms(stats(4, 3000, 3000, 3000, 3000)) == [3.0] * 4
    assert exact_samples_ms(stats(5, 5000, 7000, 4000, 9000)) == []  # only the summary is known


def test_settings_precedence_and_validation(tmp_path: Path) -> None:
    farm = {"adb_servers": ["10.1.2.3:5037"],
            "android": {"benchmark_model": "bin/bm", "affinity": "0xF0", "cooldown": {"max_temp_c": 40}},
            "devices": {"S1": {"affinity": "80", "cooldown": {"max_battery_c": 35}, "udid_only_key": 1}}}
    ctx = DeviceContext(farm=farm, farm_path=tmp_path / "farm.yaml")
    s = settings_for(ctx, "S1")
    assert s.benchmark_model == str(tmp_path / "bin" / "bm")  # relative to the farm file
    assert s.affinity == "80" and s.cooldown == Cooldown(max_temp_c=40.0, max_battery_c=35.0)
    assert settings_for(ctx, "OTHER").affinity == "f0"
    ctx.benchmark_model = "/opt/bm"  # --benchmark-model wins over the farm
    assert settings_for(ctx, "S1").benchmark_model == "/opt/bm"
    for bad, match in [({"android": {"afinity": "f"}}, "unknown key.*afinity"),
                       ({"android": {"affinity": "xyz"}}, "not a non-zero hex CPU mask"),
                       ({"android": {"device_dir": "relative/dir"}}, "must be an absolute directory"),
                       ({"android": {"cooldown": {"max_temp": 3}}}, "unknown key.*max_temp"),
                       ({"android": {"poll_s": "soon"}}, r"android.poll_s: expected a number of seconds, got 'soon'"),
                       ({"android": {"reconnect_timeout_s": 0}}, r"android.reconnect_timeout_s: must be > 0")]:
        with pytest.raises(AndroidConfigError, match=match):
            settings_for(DeviceContext(farm=bad))
    assert parse_adb_server("[::1]:5037") == ("::1", 5037)
    with pytest.raises(ValueError, match="not HOST:PORT"):
        parse_adb_server("farmhost")
    with pytest.raises(AndroidConfigError, match="No pip package ships"):
        check_benchmark_model(DeviceContext(), ["S1"])


def test_device_state_from_agent_files() -> None:
    thermal = "thermal_zone0\tcpu-0\t41200\nthermal_zone1\tgpuss-0\t52500\nthermal_zone2\tbogus\t-273000\n" \
              "thermal_zone3\tpmic\t\n"
    state = device_state(thermal, "312\n")
    assert state["thermal_c"] == {"cpu-0": 41.2, "gpuss-0": 52.5, "bogus": -273.0}
    assert (state["hottest_zone"], state["hottest_c"], state["battery_c"]) == ("gpuss-0", 52.5, 31.2)


# ------------------------------------------------------------------------------------ discovery

def test_devices_lists_every_state_with_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    no_soc = {k: v for k, v in FakeDevice("x").props.items() if k != "ro.soc.model"}
    devices = [FakeDevice("READY1", root=tmp_path / "r"), FakeDevice("NOSOC", root=tmp_path / "n", props=no_soc, gles=None),
               FakeDevice("OFF1", state="offline", root=tmp_path / "o"),
               FakeDevice("UNAUTH1", state="unauthorized", root=tmp_path / "u")]
    closed = socket_port_closed()
    with FakeAdbServer(devices) as srv:
        assert main(["devices", "--json", "--adb", f"127.0.0.1:{srv.port}", "--adb", f"127.0.0.1:{closed}"]) == 0
        rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
        ready = rows["android:READY1"]
        assert (ready["state"], ready["model"], ready["soc"], ready["gpu"], ready["os_version"], ready["ram_bytes"]) == (
            "ready", "SM-S918B", "SM8550", "Adreno (TM) 740", "Android 14 (API 34)", 11_597_696 * 1024)
        assert ready["extra"]["gles"].startswith("Qualcomm, Adreno (TM) 740, OpenGL ES 3.2")
        assert rows["android:NOSOC"]["soc"] == "kalama" and rows["android:NOSOC"]["gpu"] == ""
        assert rows["android:OFF1"]["state"] == "offline" and "replug" in rows["android:OFF1"]["hint"]
        assert rows["android:UNAUTH1"]["state"] == "unauthorized"
        assert "Allow USB debugging" in rows["android:UNAUTH1"]["hint"]
        assert rows[f"android@127.0.0.1:{closed}"]["state"] == "unreachable"
        # naming an unready device, or running without benchmark_model, fails before any job (exit 2)
        store = f"sqlite:///{tmp_path}/x.db"
        for dev, words in [("android:OFF1", "is offline"), ("android:UNAUTH1", "Allow USB debugging")]:
            assert main(["run", str(SMOKE), "--device", dev, "--adb", f"127.0.0.1:{srv.port}", "--store", store]) == 2
            assert words in capsys.readouterr().err
        assert main(["run", str(SMOKE), "--device", "android:READY1", "--adb", f"127.0.0.1:{srv.port}",
                     "--store", store]) == 2
        err = capsys.readouterr().err
        assert "No pip package ships" in err and "android_aarch64_benchmark_model" in err


def socket_port_closed() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


# ------------------------------------------------------------------------------------ end to end

def test_smoke_suite_on_two_fake_phones_then_nothing_to_push(tmp_path: Path, tiny_tflite: Path, standin: Path,
                                                             capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    devices = [FakeDevice("PHONE1", root=tmp_path / "p1"), FakeDevice("PHONE2", root=tmp_path / "p2")]
    store_url = f"sqlite:///{tmp_path}/x.db"
    farm = _farm(tmp_path / "farm.yaml")
    # run_delay: the tiny block runs in microseconds; 0.1 s between runs keeps benchmark_model alive for
    # several meminfo samples (interval 0.1 s), as a real SD model does by itself. On the CPU: the stand-in
    # profiles ops there (its GPU runs are tested in test_gpu_rows_on_both_benchmark_model_tools_...).
    graph = ["--set", f"options.extra.graph={tiny_tflite}", "--set", "options.extra.enable_op_profiling=true",
             "--set", "options.extra.run_delay=0.1", "--set", "runtime=litert-cpu"]
    with FakeAdbServer(devices) as srv:
        # 1) the real command line, in a subprocess
        proc = subprocess.run([sys.executable, "-m", "harness", *_run_args(srv.port, standin, store_url, farm, *graph),
                               "--report", str(tmp_path / "r1.html")], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        first = [d.bytes_pushed for d in devices]
        expected = standin.stat().st_size + AGENT_SCRIPT.stat().st_size + tiny_tflite.stat().st_size
        assert first == [expected, expected]
        for title in ("android:PHONE1 (SM-S918B, Adreno (TM) 740)", "android:PHONE2 (SM-S918B, Adreno (TM) 740)"):
            assert title in proc.stderr  # one Table-1 per device (stdout: the run id)
        # 2) again, in process: every file is already on the phones
        monkeypatch.chdir(tmp_path)
        assert main(_run_args(srv.port, standin, store_url, farm, *graph, "--no-report")) == 0
        second = [d.bytes_pushed - f for d, f in zip(devices, first)]
        assert second == [0, 0]
        print(f"\nbytes pushed per device: first run {first}, second run {second}")

    store = Store(store_url)
    runs = store.list_runs()
    assert len(runs) == 2
    for run_meta in runs:
        run = store.load_run(run_meta["id"])
        assert len(run.jobs) == 10 and all(j.status == "ok" for j in run.jobs)
        assert {j.device_id for j in run.jobs} == {"android:PHONE1", "android:PHONE2"}
        # The two phones ran in parallel: each one's span of jobs overlaps the other's.
        spans = {d: (min(j.result.started_at for j in run.jobs if j.device_id == d),
                     max(j.result.ended_at for j in run.jobs if j.device_id == d))
                 for d in ("android:PHONE1", "android:PHONE2")}
        (s1, e1), (s2, e2) = spans.values()
        assert max(s1, s2) < min(e1, e2), spans
    earlier, run = (store.load_run(r["id"]) for r in sorted(runs, key=lambda r: r["started_at"]))
    for older, newer in zip([j for j in earlier.jobs if j.variant == "baseline"],
                            [j for j in run.jobs if j.variant == "baseline"]):
        # prepare() pushed everything before the first job of each phone; the job reports it
        assert older.result.extra["prepare_push"]["bytes_pushed"] == expected
        assert newer.result.extra["prepare_push"] == {"bytes_pushed": 0, "files_pushed": [], "files_skipped": 3}
    kb = devices[0].meminfo_kb
    for job in run.jobs:
        res = job.result
        assert res.timing_method == "benchmark_model" and res.extra["push"]["bytes_pushed"] == 0
        summary = res.execution.latency_summary_ms
        assert summary.n == 5 and 0 < summary.min <= summary.median <= summary.max
        assert res.init_ms > 0 and res.first_run_ms > 0 and res.warmup_ms  # one warm-up run: exact
        assert res.memory.peak_rss_bytes > 10 * 2**20
        assert res.memory.gpu_bytes == (kb["GL mtrack"] + kb["EGL mtrack"] + kb["Gfx dev"]) * 1024
        assert res.device_state_before["hottest_c"] == 43.9 and res.device_state_after["battery_c"] == 31.2
        assert set(res.op_times_ms) == {"groupnorm", "gelu", "attention", "conv3x3", "other"}
        assert {"CONV_2D", "SOFTMAX", "GELU"} <= set(res.extra["op_type_ms"])
        assert res.execution.accelerator == "cpu" and "--use_gpu=false" in res.extra["benchmark_flags"]
        assert res.execution.delegation.state == "unknown"  # the CPU asked: nothing to delegate
    assert len(list(Path(f"results/runs/{run.id}").glob("*/device/stdout.txt"))) == 10  # pulled, kept per job
    # nothing is left on the phones but the binary, the agent and the model
    left = sorted(str(p.relative_to(tmp_path / "p1")) for p in (tmp_path / "p1" / "data/local/tmp").rglob("*")
                  if p.is_file())
    assert left == ["data/local/tmp/harness/bin/benchmark_model",
                    f"data/local/tmp/harness/models/{hashlib.sha256(tiny_tflite.read_bytes()).hexdigest()[:16]}.tflite",
                    "data/local/tmp/harness/run_job.sh"]


# A benchmark_model that is a Python script started by a Python without ai_edge_litert (issue 20: the README's
# fake phones once got the system Python's shebang): it logs, then dies of the import with exit status 1.
MISSING_MODULE_AGENT = """#!/bin/sh
i=0
while [ $i -lt 40 ]; do echo "INFO: startup line $i" >&2; i=$((i+1)); done
echo "INFO: results go to postgresql://bench:SECRET123@db.example/results" >&2
cat >&2 <<'EOF'
Traceback (most recent call last):
  File "/data/local/tmp/harness/bin/benchmark_model", line 52, in <module>
    from ai_edge_litert.interpreter import Interpreter
ModuleNotFoundError: No module named 'ai_edge_litert'
EOF
exit 1
"""


def test_a_failed_job_shows_the_tail_of_the_devices_stderr(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: the cause of a failure (the last lines of the device's stderr, bounded, credentials masked) is
    in the stored error, the terminal run summary, and the Markdown and HTML reports' failure listing."""
    agent = tmp_path / "benchmark_model"
    agent.write_text(MISSING_MODULE_AGENT)
    agent.chmod(0o755)
    graph = tmp_path / "m.tflite"  # never run: the agent dies first
    graph.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(24))
    store_url = f"sqlite:///{tmp_path}/x.db"
    monkeypatch.chdir(tmp_path)
    cause = "ModuleNotFoundError: No module named 'ai_edge_litert'"
    with FakeAdbServer([FakeDevice("PHONE1", root=tmp_path / "p1")]) as srv:
        args = _run_args(srv.port, agent, store_url, _farm(tmp_path / "farm.yaml"), "--set",
                         f"options.extra.graph={graph}", "--set", "runtime=litert-cpu", "--set", "variants=[baseline]")
        assert main([*args, "--no-report", "--format", "json"]) == 1  # for scripts: the failures with their cause
        failure, = json.loads(capsys.readouterr().out)["failures"]
        assert (failure["device"], failure["kind"]) == ("android:PHONE1", "crash") and failure["detail"].endswith(
            "ModuleNotFoundError: No module named 'ai_edge_litert'")
        assert main([*args, "--report", str(tmp_path / "r.html")]) == 1
    out, err = capsys.readouterr()
    summary = err[err.index("FAILED android:PHONE1 baseline: crash: benchmark_model failed with exit code 1"):]
    assert cause in summary and "from ai_edge_litert.interpreter import Interpreter" in summary
    assert "SECRET123" not in err and "postgresql://bench:***@db.example" in summary
    assert err.count(cause) == 1  # the run's table notes leave the tail to the FAILED lines
    store = Store(store_url)
    detail = store.load_run(out.strip()).jobs[0].result.error.detail
    assert detail.endswith(cause) and "SECRET123" not in detail
    assert len(detail.splitlines()) <= 21 and len(detail) <= 2048 and "startup line 0" not in detail  # bounded
    assert main(["report", "--format", "md", "--store", store_url]) == 0
    md = capsys.readouterr().out
    assert f"  {cause}" in md and "  ```text" in md  # a code block inside the failure's list item
    html = (tmp_path / "r.html").read_text()
    pre = html[html.index('<pre class="stderr">'):]
    assert "ModuleNotFoundError: No module named &#39;ai_edge_litert&#39;" in pre[:pre.index("</pre>")]
    assert main(["report", "--format", "table", "--store", store_url]) == 0
    assert cause in capsys.readouterr().out  # `harness report` shows it too


@pytest.mark.slow
def test_smoke_suite_with_exported_artifacts(tmp_path: Path, standin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same run with the variants exported by harness.export (4 tiny-UNet conversions: minutes; with
    $HARNESS_CACHE set, that cache is used and may already hold them)."""
    devices = [FakeDevice("PHONE1", root=tmp_path / "p1"), FakeDevice("PHONE2", root=tmp_path / "p2")]
    store_url = f"sqlite:///{tmp_path}/x.db"
    monkeypatch.chdir(tmp_path)
    with FakeAdbServer(devices) as srv:
        cache = [] if os.environ.get("HARNESS_CACHE") else ["--cache", str(tmp_path / "cache")]
        args = _run_args(srv.port, standin, store_url, _farm(tmp_path / "farm.yaml"), *cache, "--no-report")
        assert main(args) == 0
        first = [d.bytes_pushed for d in devices]
        assert main(args) == 0
        second = [d.bytes_pushed - f for d, f in zip(devices, first)]
    print(f"\nexported artifacts, bytes pushed per device: first run {first}, second run {second}")
    assert second == [0, 0]
    store = Store(store_url)
    run = store.load_run(store.resolve_run())
    models = {j.result.extra["artifact"]["sha256"] for j in run.jobs}
    # +winograd is n/a for .tflite: the same artifact as +flash_attention
    assert len(models) == 4 and all(j.status == "ok" for j in run.jobs)
    wino = [j for j in run.jobs if j.variant == "+winograd"][0]
    assert wino.result.execution.na_flags == ["conv3x3"] and wino.result.memory.weight_bytes > 0
    sizes = sum({j.result.extra["artifact"]["sha256"]: j.result.extra["artifact"]["size_bytes"] for j in run.jobs}.values())
    assert first[0] == standin.stat().st_size + AGENT_SCRIPT.stat().st_size + sizes


def test_quoting_of_variant_names_and_device_paths(tmp_path: Path, tiny_tflite: Path, standin: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    weird = "v'1 \"q\"; touch PWNED; $(touch PWNED2) `touch PWNED3` & echo"
    device_dir = "/data/local/tmp/h a'r\"n;ess $(touch PWNED4)"
    graph = tmp_path / "my model's; \"x\".tflite"
    shutil.copy(tiny_tflite, graph)
    suite = tmp_path / "weird.yaml"
    suite.write_text(yaml.safe_dump({"name": "weird", "model": "tiny", "variants": [{"name": weird, "flags": {}}],
                                     "options": {"extra": {"graph": str(graph)}},
                                     "measure": {"iterations": 2, "warmup_runs": 1}}))
    farm = _farm(tmp_path / "farm.yaml", device_dir=device_dir)
    monkeypatch.chdir(tmp_path)
    fake = FakeDevice("Q1", root=tmp_path / "q")
    with FakeAdbServer([fake]) as srv:
        args = ["run", str(suite), "--device", "android:Q1", "--adb", f"127.0.0.1:{srv.port}", "--benchmark-model",
                str(standin), "--farm", str(farm), "--store", f"sqlite:///{tmp_path}/q.db", "--no-report"]
        assert main(args) == 0
    store = Store(f"sqlite:///{tmp_path}/q.db")
    job = store.load_run(store.resolve_run()).jobs[0]
    assert job.status == "ok" and job.variant == weird
    assert job.result.extra["artifact"]["device_path"].startswith(device_dir + "/models/")
    assert fake.host_path(device_dir + "/run_job.sh").is_file()  # the directory exists under its exact name
    assert not [p for p in (tmp_path / "q").rglob("PWNED*")]  # nothing in a name was ever executed
    assert not list(tmp_path.glob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))



def test_nnapi_and_vendor_delegate_runs_on_a_fake_phone_report_the_unit(tmp_path: Path, tiny_tflite: Path,
                                                                         standin: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two compute units through the real command line: NNAPI (the stand-in has none, and says so as the
    real tool does: the report names the CPU as the unit that ran) and an external delegate library
    given as a host file (pushed under device_dir/lib; not a real delegate, so the run fails naming it)."""
    lib = tmp_path / "libVendor Delegate.so"
    lib.write_bytes(b"\x7fELF not really a delegate")
    monkeypatch.chdir(tmp_path)
    fake = FakeDevice("U1", root=tmp_path / "u")
    farm = _farm(tmp_path / "farm.yaml", device_dir="/data/local/tmp/h u")
    store = f"sqlite:///{tmp_path}/u.db"
    common = ["--device", "android:U1", "--set", f"options.extra.graph={tiny_tflite}", "--set", "variants=[baseline]",
              "--set", "iterations=2", "--no-report"]
    with FakeAdbServer([fake]) as srv:
        assert main(_run_args(srv.port, standin, store, farm, *common, "--set", "runtime=litert-nnapi")) == 0
        assert main(_run_args(srv.port, standin, store, farm, *common, "--set", "runtime=litert-delegate",
                              "--set", f"options.extra.external_delegate_path={lib}")) == 1
    db = Store(store)
    first, second = sorted(db.list_runs(), key=lambda r: r["started_at"])
    job = db.load_run(first["id"]).jobs[0]
    assert job.status == "ok"
    assert "--use_nnapi=true" in job.result.extra["benchmark_flags"]
    assert job.result.execution.accelerator == job.result.execution.unit_asked == "nnapi"
    assert job.result.execution.unit_used == "cpu (the NNAPI delegate took no node)"
    assert job.result.execution.delegation.state == "none"
    failed = db.load_run(second["id"]).jobs[0]
    assert failed.status == "failed" and "Failed to create external delegate" in failed.result.error.message
    assert fake.host_path("/data/local/tmp/h u/lib/libVendor Delegate.so").read_bytes() == lib.read_bytes()
    from harness.report.table1 import table1

    df = table1(db.load_run(first["id"]))
    assert df["unit"].iloc[0] == "cpu (the NNAPI delegate took no node)"

def test_gpu_rows_on_both_benchmark_model_tools_are_wholly_on_the_gpu_or_fail(
        tmp_path: Path, tiny_tflite: Path, broadcast_tflite: Path, standin: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """runtime litert-gpu through the fake phone: the classic tool and LiteRT 2.x's CompiledModel tool,
    both running the graph on LiteRT's GPU accelerator (SwiftShader here). A GPU-clean graph: unit gpu.
    A graph with a BROADCAST_TO: the row fails (kind delegation) with full delegation required, and with
    allow_cpu_fallback it runs and its unit says partial."""
    (tmp_path / "cm").mkdir()
    compiled = write_standin(tmp_path / "cm" / "benchmark_model", tool="compiled_model")
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path}/g.db"
    common = ["--device", "android:G1", "--set", "variants=[baseline]", "--set", "iterations=2", "--set",
              "runtime=litert-gpu", "--set", "dtype=fp16", "--no-report"]
    runs = []
    with FakeAdbServer([FakeDevice("G1", root=tmp_path / "g")]) as srv:
        farm = _farm(tmp_path / "farm.yaml")
        for tool in (standin, compiled):
            for graph, extra, rc in ((tiny_tflite, [], 0), (broadcast_tflite, [], 1),
                                     (broadcast_tflite, ["--set", "options.extra.allow_cpu_fallback=true"], 0)):
                args = _run_args(srv.port, tool, store, farm, *common, "--set", f"options.extra.graph={graph}", *extra)
                assert main(args) == rc, (tool, graph, extra)
                runs.append(tool)
    db = Store(store)
    jobs = [db.load_run(r["id"]).jobs[0] for r in sorted(db.list_runs(), key=lambda r: r["started_at"])]
    for i, label in enumerate(("classic", "compiled_model")):
        clean, refused, split = jobs[3 * i:3 * i + 3]
        assert clean.status == "ok" and clean.result.execution.unit_used == "gpu", (label, clean.result.error)
        assert clean.result.execution.delegation.state == "full", label
        assert clean.result.extra["benchmark_output_format"] == ("current" if label == "classic" else "compiled_model")
        assert refused.status == "failed" and refused.result.error.kind == "delegation", (label, refused.result.error)
        assert "GPU does not run the whole graph" in refused.result.error.message
        assert split.status == "ok" and "partial" in split.result.execution.unit_used, (label, split.result.execution)
        assert split.result.execution.delegation.state == ("partial" if label == "classic" else "unknown"), label
    assert "--require_full_delegation=true" in jobs[3].result.extra["benchmark_flags"]
    assert "--use_cpu=false" in jobs[3].result.extra["benchmark_flags"]


def test_cooldown_waits_for_a_cool_device_and_affinity_reaches_taskset(tmp_path: Path, tiny_tflite: Path,
                                                                         standin: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fake = FakeDevice("HOT1", root=tmp_path / "hot")
    fake.thermal_c = {**fake.thermal_c, "gpuss-0": 71.5}
    farm = _farm(tmp_path / "farm.yaml", affinity="f0", cooldown={"max_temp_c": 45, "timeout_s": 5, "poll_s": 0.2})
    store_url = f"sqlite:///{tmp_path}/c.db"
    with FakeAdbServer([fake]) as srv:
        common = ["run", str(SMOKE), "--device", "android:HOT1", "--adb", f"127.0.0.1:{srv.port}",
                  "--benchmark-model", str(standin), "--farm", str(farm), "--store", store_url, "--no-report",
                  "--set", f"options.extra.graph={tiny_tflite}", "--set", "variants=[baseline, +opt_softmax]"]
        # the phone cools down once the harness has looked at it three times (0.2 s apart)
        reads = lambda: sum("thermal_zone" in r for s, r in srv.requests if s == "HOT1")  # noqa: E731
        cool = watch(lambda: reads() >= 3, lambda: setattr(fake, "thermal_c", FakeDevice("x").thermal_c),
                     threading.Event())
        assert main(common) == 0
        cool.join(timeout=5)
        # the battery (31.2 C) never gets under 20 C: the wait gives up after its timeout and says so
        assert main(common + ["--set", "options.extra.cooldown={max_battery_c: 20, timeout_s: 0.5}"]) == 0
        launches = [r for s, r in srv.requests if s == "HOT1" and r.endswith("echo launched")]
    store = Store(store_url)
    runs = sorted(store.list_runs(), key=lambda r: r["started_at"])
    first, second = (store.load_run(r["id"]).jobs for r in runs)
    waited = [j.result.device_state_before["cooldown"] for j in first]
    assert waited[0]["reached"] and 0.35 <= waited[0]["waited_s"] < 5 and waited[0]["hottest_c"] <= 45
    assert waited[1]["reached"] and waited[1]["waited_s"] < 0.5
    assert [j.result.device_state_before["cooldown"]["reached"] for j in second] == [False, False]
    assert all(0.5 <= j.result.device_state_before["cooldown"]["waited_s"] < 2 for j in second)
    assert all(j.result.extra["affinity"] == "f0" for j in first + second)
    assert len(launches) == 4 and all(" f0 /sys/class/thermal " in r for r in launches)


def test_ctrl_c_stops_the_benchmark_on_the_phone(tmp_path: Path, tiny_tflite: Path, standin: Path) -> None:
    import psutil
    import signal

    fake = FakeDevice("INT1", root=tmp_path / "int")
    store_url = f"sqlite:///{tmp_path}/i.db"
    with FakeAdbServer([fake]) as srv:
        _fault_file("hang")(fake, srv)
        proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(SMOKE), "--device", "android:INT1",
                                 "--adb", f"127.0.0.1:{srv.port}", "--benchmark-model", str(standin), "--farm",
                                 str(_farm(tmp_path / "farm.yaml")), "--store", store_url, "--no-report",
                                 "--set", f"options.extra.graph={tiny_tflite}"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=_sigint_default)
        jobs = fake.host_path(DEVICE_DIR + "/jobs")
        deadline = time.monotonic() + 60
        pid_files: list[Path] = []
        while time.monotonic() < deadline and not pid_files:
            pid_files = list(jobs.glob("*/pid")) if jobs.is_dir() else []
            time.sleep(0.05)
        assert pid_files, "the benchmark never started"
        time.sleep(0.3)
        pid = int(pid_files[0].read_text())
        assert psutil.pid_exists(pid)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-2000:]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and psutil.pid_exists(pid) and \
                psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.05)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert Store(store_url).list_runs()[0]["status"] == "interrupted"


# ------------------------------------------------------------------------------------ faults

def _scenario(name: str, tmp: Path, tiny_tflite: Path, standin: Path, setup, extra_args=(),
              retries: int = 1) -> dict:
    """Run 2 variants on FAULTY and GOOD (FAULTY first) with one injected fault; count what the store holds."""
    tmp.mkdir(parents=True)
    factory = setup.get("device") or (lambda root: FakeDevice("FAULTY", root=root))
    faulty = factory(tmp / "faulty")
    good = FakeDevice("GOOD", root=tmp / "good")
    store_url = f"sqlite:///{tmp}/f.db"
    farm = _farm(tmp / "farm.yaml")
    stop = threading.Event()
    with FakeAdbServer([faulty, good]) as srv:
        if setup.get("before"):
            setup["before"](faulty, srv)
        watchers = [watch(c, a, stop) for c, a in setup.get("watch", [])]
        args = _run_args(srv.port, standin, store_url, farm, "--set", f"options.extra.graph={tiny_tflite}",
                         "--set", "variants=[baseline, +opt_softmax]", "--set", "iterations=3",
                         "--retries", str(retries), "--no-report", *extra_args)
        rc = main(args)
        stop.set()
        for w in watchers:
            w.join(timeout=5)
    store = Store(store_url)
    run = store.load_run(store.resolve_run())
    planned = 4
    by_dev = {d: [j for j in run.jobs if j.device_id == d] for d in ("android:FAULTY", "android:GOOD")}
    return {
        "fault": name, "rc": rc, "planned": planned, "stored": len(run.jobs),
        "completed": sum(j.status == "ok" for j in run.jobs),
        "retried": sum(j.attempts - 1 for j in run.jobs),
        "failed": sum(j.status == "failed" for j in run.jobs),
        "lost": planned - len(run.jobs),
        "good_ok": sum(j.status == "ok" for j in by_dev["android:GOOD"]),
        "errors": [(j.result.error.kind, j.result.error.message, j.result.error.detail or "", j.result.error.transient)
                   for j in by_dev["android:FAULTY"] if j.result.error],
        "faulty_ok": sum(j.status == "ok" for j in by_dev["android:FAULTY"]),
        "status": run.status,
    }


def _fault_file(word: str):
    def before(dev: FakeDevice, srv: FakeAdbServer) -> None:
        path = dev.host_path(DEVICE_DIR + "/bin/" + FAULT_FILE_NAME)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(word + "\n")
    return before


def test_fault_matrix(tmp_path: Path, tiny_tflite: Path, standin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    holder: dict[str, FakeDevice] = {}

    def offline_at(index: str, state: str):
        def cond() -> bool:
            return has_pid(holder["dev"], index)

        def act() -> None:
            holder["dev"].state = state
        return cond, act

    def drop_mid_run():
        # arm when FAULTY's first benchmark is running: the poll (a 0.5 s wait) is cut after 0.3 s;
        # disarm as soon as the retry's first command (mkdir) reaches the server
        armed: dict[str, int] = {}

        def cond_arm() -> bool:
            return has_pid(holder["dev"], "000")

        def arm() -> None:
            armed["at"] = len(holder["srv"].requests)
            holder["dev"].drop_shell_after_seconds = 0.3
            watch(lambda: any(s == "FAULTY" and "mkdir -p" in r for s, r in holder["srv"].requests[armed["at"]:]),
                   lambda: setattr(holder["dev"], "drop_shell_after_seconds", None), threading.Event())
        return cond_arm, arm

    def restart_mid_run():
        # while FAULTY's first benchmark runs, the adb server drops every connection and is gone 1 s
        def cond() -> bool:
            return has_pid(holder["dev"], "000")

        def act() -> None:
            holder["srv"].restart(downtime_s=1.0)
        return cond, act

    def keep(dev_factory=None, before=None, watch=()):
        def setup_before(dev, srv):
            holder["dev"], holder["srv"] = dev, srv
            if before:
                before(dev, srv)
        return {"device": dev_factory, "before": setup_before, "watch": list(watch)}

    scenarios = [
        ("device offline mid-run (stays offline)", keep(watch=[offline_at("001", "offline")]), (), 1),
        ("device unauthorized mid-run", keep(watch=[offline_at("001", "unauthorized")]), (), 1),
        ("dropped mid-push (once)", keep(dev_factory=lambda root: DropPushes("FAULTY", root=root, drops=2)), (), 1),
        ("dropped mid-push (every push)", keep(dev_factory=lambda root: DropPushes("FAULTY", root=root, drops=10**6)), (), 1),
        ("dropped mid-run (once)", keep(watch=[drop_mid_run()]), ("--set", "options.extra.run_delay=0.15"), 1),
        ("benchmark crash (SIGSEGV)", keep(before=_fault_file("crash")), (), 1),
        ("garbage output", keep(before=_fault_file("garbage")), (), 1),
        ("full disk", keep(before=lambda d, s: setattr(d, "disk_quota_bytes", 20_000)), (), 1),
        ("benchmark hangs (job timeout 15 s)", keep(before=_fault_file("hang")),
         ("--set", "measure.timeout_seconds=15"), 1),
        ("adb server restarted mid-run", keep(watch=[restart_mid_run()]),
         ("--set", "options.extra.run_delay=0.15"), 2),
    ]
    rows = []
    for i, (name, setup, extra, retries) in enumerate(scenarios):
        rows.append(_scenario(name, tmp_path / f"s{i}", tiny_tflite, standin, setup, extra, retries))
    table = ["| fault | completed | retried | failed | lost | FAULTY's failure reason |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        reason = "; ".join(f"{k}: {m[:90]}" for k, m, _, _ in r["errors"][:1]) or "-"
        table.append(f"| {r['fault']} | {r['completed']} | {r['retried']} | {r['failed']} | {r['lost']} | {reason} |")
    print("\n" + "\n".join(table))

    by = {r["fault"]: r for r in rows}
    for r in rows:  # every fault: the other phone finished both jobs, nothing stored was lost, run completed
        assert r["good_ok"] == 2 and r["lost"] == 0 and r["status"] == "completed", r
        assert r["rc"] == (0 if r["failed"] == 0 else 1), r

    def faulty(name: str) -> tuple[int, int, int, list]:
        r = by[name]
        return r["faulty_ok"], r["retried"], r["failed"], r["errors"]

    ok, retried, failed, errs = faulty("device offline mid-run (stays offline)")
    assert (ok, retried, failed) == (1, 1, 1)
    assert errs[0][0] == "device" and "did not come back" in errs[0][1] and errs[0][3] is True
    ok, retried, failed, errs = faulty("device unauthorized mid-run")
    assert (ok, retried, failed) == (1, 0, 1) and "Allow USB debugging" in errs[0][1] and errs[0][3] is False
    ok, retried, failed, errs = faulty("dropped mid-push (once)")
    assert (ok, retried, failed) == (2, 1, 0)
    ok, retried, failed, errs = faulty("dropped mid-push (every push)")
    assert (ok, retried, failed) == (0, 2, 2) and all("pushing" in e[1] and e[3] for e in errs)
    ok, retried, failed, errs = faulty("dropped mid-run (once)")
    assert (ok, retried, failed) == (2, 1, 0)
    ok, retried, failed, errs = faulty("benchmark crash (SIGSEGV)")
    assert (ok, retried, failed) == (0, 0, 2)
    assert errs[0][0] == "crash" and "SIGSEGV" in errs[0][1] and "Loaded model" in errs[0][2]
    ok, retried, failed, errs = faulty("garbage output")
    assert (ok, retried, failed) == (0, 0, 2) and errs[0][0] == "parse" and "random bytes" in errs[0][2]
    ok, retried, failed, errs = faulty("full disk")
    assert (ok, retried, failed) == (0, 0, 2) and errs[0][0] == "disk_full" and "full" in errs[0][1]
    ok, retried, failed, errs = faulty("adb server restarted mid-run")
    assert (ok, failed) == (2, 0) and retried >= 1  # both phones' jobs came back through retries
    ok, retried, failed, errs = faulty("benchmark hangs (job timeout 15 s)")
    assert (ok, retried, failed) == (0, 0, 2) and errs[0][0] == "timeout"


def test_ab_session_on_a_fake_phone(tmp_path: Path, tiny_tflite: Path, standin: Path,
                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`harness compare --ab` on a phone: the stored run's suite re-runs as both sides in ABBA blocks, each
    block an ordinary benchmark_model launch on the phone, stored as the session's two runs."""
    from harness.suite import load_suite

    url = f"sqlite:///{tmp_path}/ab.db"
    suite = load_suite(SMOKE, [f"options.extra.graph={tiny_tflite}", "options.extra.run_delay=0.05",
                               "runtime=litert-cpu", "variants=[baseline]"])
    doc = suite.model_dump(mode="json")
    doc["devices"] = ["android:ABPHONE"]
    store = Store(url)
    store.create_run("20261206-000000-aaaaaa", "smoke", doc)
    store.finish_run("20261206-000000-aaaaaa", "completed")
    farm = _farm(tmp_path / "farm.yaml")
    monkeypatch.chdir(tmp_path)
    with FakeAdbServer([FakeDevice("ABPHONE", root=tmp_path / "phone")]) as srv:
        rc = main(["compare", "--ab", "20261206-000000-aaaaaa", "20261206-000000-aaaaaa", "--store", url,
                   "--adb", f"127.0.0.1:{srv.port}", "--benchmark-model", str(standin), "--farm", str(farm),
                   "--block", "1", "--first-look", "6", "--batch", "2", "--max-samples", "6",
                   "--json", str(tmp_path / "ab.json")])
        launches = [r for s, r in srv.requests if s == "ABPHONE" and r.endswith("echo launched")]
    assert rc == 0
    doc = json.loads((tmp_path / "ab.json").read_text())
    (cell,) = doc["cells"]
    assert cell["key"]["device"] == "android:ABPHONE" and cell["verdict"] != "REGRESSION"
    s = cell["sampling"]
    # benchmark_model reports a summary per launch, not each run: one sample per block (launch)
    assert s["sample_unit"] == "launch" and s["order"] == "ABBAABBAABBA" and s["samples_a"] == s["samples_b"] == 6
    assert len(launches) == 12 and "one per launch" in capsys.readouterr().out
    for rid in (doc["baseline"]["run_id"], doc["candidate"]["id"]):
        (job,) = store.load_run(rid).jobs
        assert job.device_id == "android:ABPHONE" and job.result.timing_method == "benchmark_model"
        assert job.result.extra["ab"]["sample_unit"] == "launch" and len(job.result.extra["ab"]["values"]) == 6


def _real_tool(path: Path, standin: Path) -> Path:
    """The benchmark_model stand-in with its identifying line removed: to the harness, a real LiteRT
    benchmark_model (which prints no `harness-stand-in:` line) on a real phone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                    f"p = subprocess.run([{str(standin)!r}, *sys.argv[1:]], capture_output=True, text=True)\n"
                    "keep = lambda t: ''.join(x for x in t.splitlines(True) if 'harness-stand-in:' not in x)\n"
                    "sys.stdout.write(keep(p.stdout)); sys.stderr.write(keep(p.stderr)); sys.exit(p.returncode)\n")
    path.chmod(0o755)
    return path


def test_stand_ins_are_labelled_in_every_output_and_a_real_phone_never(
        tmp_path: Path, tiny_tflite: Path, standin: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20 item 3: a fake phone (ro.harness.stand_in) running the benchmark_model stand-in (its
    `harness-stand-in:` line) is labelled in the terminal table, --json, the store (typed fields), Markdown,
    CSV, HTML, `harness devices --json` and `harness compare`'s outputs; a phone without the property running
    a tool without the line (a real phone, a real tool) is labelled nowhere."""
    from tests.fakes.adb_server import DEFAULT_PROPS

    monkeypatch.chdir(tmp_path)
    real_props = {k: v for k, v in DEFAULT_PROPS.items() if k != "ro.harness.stand_in"}
    devices = [FakeDevice("FAKE1", root=tmp_path / "f"), FakeDevice("REAL1", props=real_props, root=tmp_path / "r")]
    real_tool = _real_tool(tmp_path / "real" / "benchmark_model", standin)
    store = f"sqlite:///{tmp_path}/s.db"
    farm = _farm(tmp_path / "farm.yaml")
    common = ["--set", f"options.extra.graph={tiny_tflite}", "--set", "variants=[baseline]", "--set", "iterations=2",
              "--set", "warmup_runs=0", "--set", "runtime=litert-cpu", "--json"]
    out: dict[str, dict[str, str]] = {}
    with FakeAdbServer(devices) as srv:
        adb = ["--adb", f"127.0.0.1:{srv.port}"]
        assert main(["devices", "--json", *adb]) == 0
        listed = {d["id"]: d for d in json.loads(capsys.readouterr().out)}
        assert listed["android:FAKE1"]["stand_in"] == ["fake phone"]
        assert listed["android:REAL1"]["stand_in"] == []
        for serial, tool in (("FAKE1", standin), ("REAL1", real_tool)):
            args = ["run", str(SMOKE), "--device", f"android:{serial}", *adb, "--benchmark-model", str(tool),
                    "--farm", str(farm), "--store", store, *common, "--report", str(tmp_path / f"{serial}.html")]
            assert main([*args, "--no-report"]) == 0  # a baseline for `harness compare`
            first = json.loads(capsys.readouterr().out)["run_id"]
            assert main(args) == 0
            cap = capsys.readouterr()
            doc = json.loads(cap.out)
            out[serial] = {"json": cap.out, "terminal": cap.err, "run": doc["run_id"]}
            for fmt in ("md", "csv", "html"):
                assert main(["report", "--run", doc["run_id"], "--format", fmt, "-o", str(tmp_path / f"{serial}.{fmt}"),
                             "--store", store]) == 0
                out[serial][fmt] = (tmp_path / f"{serial}.{fmt}").read_text()
            assert main(["compare", first, doc["run_id"], "--json", str(tmp_path / f"{serial}-cmp.json"),
                         "--markdown", str(tmp_path / f"{serial}-cmp.md"), "--store", store]) in (0, 3)
            capsys.readouterr()
            out[serial]["compare"] = (tmp_path / f"{serial}-cmp.json").read_text()
            out[serial]["compare_md"] = (tmp_path / f"{serial}-cmp.md").read_text()

    labels = ["fake phone", "benchmark_model stand-in"]
    fake = out["FAKE1"]
    assert json.loads(fake["json"])["stand_in"] == {"android:FAKE1": labels}
    title = "android:FAKE1 (SM-S918B, Adreno (TM) 740) [stand-in: fake phone, benchmark_model stand-in]"
    import html

    for fmt in ("terminal", "md", "html"):  # (rich wraps a long title at the table's width)
        text = " ".join(html.unescape(fake[fmt]).split())
        assert title in text, fmt
        assert "their latency and memory are not a phone's" in text, fmt
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(fake["csv"])))
    assert [r["stand_in"] for r in rows] == ["fake phone, benchmark_model stand-in"]
    cells = json.loads(fake["compare"])["cells"]
    assert cells and all(c["stand_in"] == labels and "[stand-in:" in c["label"] for c in cells)
    assert json.loads(fake["compare"])["candidate"]["devices"]["android:FAKE1"]["stand_in"] == ["fake phone"]
    assert "[stand-in: fake phone, benchmark_model stand-in]" in fake["compare_md"]
    db = Store(store)
    job = db.load_run(fake["run"]).jobs[0]
    assert job.result.stand_in == labels  # the typed field, the device's labels merged in when stored
    assert db.load_run(fake["run"]).devices["android:FAKE1"]["stand_in"] == ["fake phone"]
    import sqlalchemy as sa

    from harness.store import jobs

    with db.engine.connect() as conn:
        column = dict(conn.execute(sa.select(jobs.c.run_id, jobs.c.stand_in_json)).all())
    assert json.loads(column[fake["run"]]) == labels

    real = out["REAL1"]  # a real phone and tool: no label anywhere
    assert json.loads(real["json"])["stand_in"] == {}
    assert "android:REAL1 (SM-S918B, Adreno (TM) 740) — litert-cpu" in " ".join(real["terminal"].split())
    for name, text in real.items():
        assert "stand-in" not in text.lower().replace("stand_in", ""), name
    assert column[real["run"]] is None and db.load_run(real["run"]).jobs[0].result.stand_in == []
