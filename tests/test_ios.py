"""iOS devices end to end against the pymobiledevice3 fake (tests/fakes/ios_fake.py): the real CLI,
harness.devices.ios, the emulated agent app, the store and the report; the fault matrix; and the
schema compatibility of the Swift agent's Codable types with harness.protocol.

What no test here can run: the Swift code itself (no Swift toolchain on this machine: its XCTests
run on a Mac, `swift test` in device_agents/ios), Core ML, and a real iPhone.
"""
from __future__ import annotations

import enum
import hashlib
import inspect
import json
import math
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from harness.cli import main
from harness.devices import ios
from harness.devices.base import DeviceContext
from harness.devices.ios import (
    AGENT_MARK, DEFAULT_BUNDLE_ID, JOBS_DIR, IOSConfigError, JobFailure, check_runtime, compute_units_of,
    device_spec, ipa_info, settings_for, tree_sha256, tree_size,
)
from harness.protocol import JobResult, JobSpec, RuntimeOptions, parse_result, parse_spec
from harness.store import Store

pytest.importorskip("pymobiledevice3")  # the fake raises pymobiledevice3's own exceptions

try:
    from tests.fakes import ios_fake
except ModuleNotFoundError:  # pytest's default import mode puts tests/, not the repo root, on sys.path
    from fakes import ios_fake  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "suites" / "smoke.yaml"
E2E_SMOKE = REPO / "suites" / "e2e_smoke.yaml"
DATA = REPO / "tests" / "data" / "ios"
SWIFT = REPO / "device_agents" / "ios"
UDID = "00008120-001A2B3C4D5E6F70"
LADDER = ["baseline", "+opt_softmax", "+sgn_gelu", "+flash_attention", "+winograd"]
FAKE_ENV = {"HARNESS_IOS_SERVICES": "tests.fakes.ios_fake:FakeServices"}


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def mlpackage(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real .mlpackage with a UNet's inputs (sample, timestep, encoder_hidden_states), built with
    coremltools' MIL builder (no torch conversion; cached in pytest's cache dir when enabled)."""
    cache = getattr(pytestconfig, "cache", None)
    folder = Path(cache.mkdir("ios_mlpackage")) if cache is not None else tmp_path_factory.mktemp("mlpackage")
    out = folder / "tiny_unet.mlpackage"
    if not (out / "Manifest.json").is_file():
        import coremltools as ct
        import numpy as np
        from coremltools.converters.mil import Builder as mb

        weight = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)

        @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4, 8, 8)), mb.TensorSpec(shape=(2,)),
                                 mb.TensorSpec(shape=(2, 8, 8))], opset_version=ct.target.iOS17)
        def prog(sample, timestep, encoder_hidden_states):
            x = mb.conv(x=sample, weight=weight, pad_type="same")
            c = mb.add(x=mb.reduce_mean(x=encoder_hidden_states, axes=[1, 2], keep_dims=False), y=timestep)
            return mb.add(x=x, y=mb.reshape(x=c, shape=[2, 1, 1, 1]), name="noise_pred")

        model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17)
        tmp = folder / "tiny_unet.tmp.mlpackage"
        model.save(str(tmp))
        os.replace(tmp, out)
    return out


@pytest.fixture()
def ipa(tmp_path: Path) -> Path:
    return ios_fake.make_ipa(tmp_path / "HarnessAgent.ipa")


def _world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, devices: list[dict], **kw) -> Path:
    path = ios_fake.write_world(tmp_path / "world.json", tmp_path / "phones", {"local": devices}, **kw)
    for key, value in {**FAKE_ENV, ios_fake.WORLD_ENV: str(path)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("USBMUXD_SOCKET_ADDRESS", raising=False)
    return path


def _farm(path: Path, **ios) -> Path:
    # A generous heartbeat timeout: a loaded CI machine can stall the emulated app for seconds.
    settings = {"poll_s": 0.05, "heartbeat_s": 0.1, "heartbeat_timeout_s": 60.0, "launch_timeout_s": 30.0}
    settings.update(ios)
    path.write_text(json.dumps({"ios": settings}))  # JSON is YAML
    return path


def _container(tmp_path: Path, udid: str = UDID) -> Path:
    return tmp_path / "phones" / udid / "containers" / DEFAULT_BUNDLE_ID


def _jobs_by_variant(store_url: str, run_id: str | None = None):
    store = Store(store_url)
    run = store.load_run(run_id or store.list_runs()[0]["id"])
    return run, {j.variant: j for j in run.jobs}


# ------------------------------------------------------------------------------------ the service boundary

# What the harness.devices.ios package calls on each object of the service layer.
BOUNDARY = {
    "InstallationProxyService": ["__init__", "get_apps", "install_from_local"],
    "HouseArrestService": ["__init__", "create", "push", "get_file_contents", "set_file_contents", "exists",
                           "makedirs", "rm"],
    "MobileImageMounterService": ["__init__", "is_image_mounted"],
    "DvtProvider": ["__init__"],
    "ProcessControl": ["__init__", "launch", "kill", "process_identifier_for_bundle_identifier"],
}
FUNCTIONS = ["list_devices", "create_using_usbmux", "get_tunneld_device_by_udid", "image_type_for_device"]


def _params(fn) -> list[tuple]:
    """(name, kind, default) of each parameter, self/cls left out; annotations ignored."""
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name not in ("self", "cls")]


def _is_async(fn) -> bool:
    return inspect.iscoroutinefunction(inspect.unwrap(fn))  # pymobiledevice3's decorators hide it


def test_fake_has_the_signatures_of_the_installed_pymobiledevice3() -> None:
    from pymobiledevice3.lockdown import UsbmuxLockdownClient

    from harness.devices.ios import Pmd3Services

    real = Pmd3Services()
    assert real.version.startswith("11."), real.version
    # autopair exists and the harness turns it off (no trust dialog ever waits on a run)
    assert "autopair" in inspect.signature(real.create_using_usbmux).parameters
    src = "\n".join(p.read_text() for p in sorted((REPO / "harness" / "devices" / "ios").glob("*.py")))
    assert src.count("autopair=False") >= 2 and "autopair=True" not in src
    for name in FUNCTIONS:
        fake = getattr(ios_fake.FakeServices, name)
        assert _params(getattr(real, name)) == _params(fake), name
        assert _is_async(getattr(real, name)) == _is_async(fake), name
    for cls_name, methods in BOUNDARY.items():
        real_cls, fake_cls = getattr(real, cls_name), getattr(ios_fake.FakeServices, cls_name)
        for method in methods:
            r, f = getattr(real_cls, method), getattr(fake_cls, method)
            assert _params(r) == _params(f), f"{cls_name}.{method}"
            assert _is_async(r) == _is_async(f), f"{cls_name}.{method}"
    for method in ("get_developer_mode_status", "get_value", "close"):
        assert _params(getattr(UsbmuxLockdownClient, method)) == _params(getattr(ios_fake.FakeLockdown, method))
    for prop in ("product_version", "display_name", "chip_id", "hardware_model", "has_developer_mode"):
        assert isinstance(inspect.getattr_static(UsbmuxLockdownClient, prop), property), prop
    # every attribute the ios package reaches through the adapter exists on both sides
    used = set(re.findall(r"\bpmd\.([A-Za-z_]+)", src))
    assert used >= set(FUNCTIONS) | set(BOUNDARY)
    for name in used:
        assert hasattr(real, name) and hasattr(ios_fake.FakeServices, name), name
    # ...and every exception it catches is pymobiledevice3's
    for name in set(re.findall(r"\bexc\.([A-Z][A-Za-z0-9]+)", src)):
        assert isinstance(getattr(real.exc, name), type), name


# ------------------------------------------------------------------------------------ discovery

def test_devices_lists_every_state_with_its_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    dev = ios_fake.device
    _world(tmp_path, monkeypatch, [
        dev(UDID), dev("UNPAIRED1", paired=False), dev("DEVOFF1", developer_mode=False), dev("LOCKED1", locked=True),
        dev("NODDI1", ddi=False), dev("IOS17A", version="17.5", product_type="iPhone16,2", build="21F90")],
        tunneld=False)
    farm = _farm(tmp_path / "farm.yaml", usbmux=["local", "127.0.0.1:9"])
    assert main(["devices", "--json", "--farm", str(farm)]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    ready = rows[f"ios:{UDID}"]
    assert (ready["state"], ready["name"], ready["model"], ready["soc"], ready["gpu"], ready["os_version"]) == (
        "ready", "iPhone 14 Pro Max", "iPhone15,3", "Apple A16 Bionic", "Apple A16 GPU", "iOS 16.6 (20G75)")
    assert ready["extra"]["udid"] == UDID and ready["extra"]["paired"] is True
    assert ready["extra"]["agent_installed"] is False and ready["extra"]["chip_id"] == "0x8120"
    expect = {"UNPAIRED1": ("unpaired", "lockdown pair"), "DEVOFF1": ("developer-mode-off", "Developer Mode"),
              "LOCKED1": ("locked", "unlock it"), "NODDI1": ("no-developer-image", "mounter auto-mount"),
              "IOS17A": ("no-tunnel", "remote tunneld")}
    for udid, (state, words) in expect.items():
        assert rows[f"ios:{udid}"]["state"] == state and words in rows[f"ios:{udid}"]["hint"], rows[f"ios:{udid}"]
    assert rows["ios@127.0.0.1:9"]["state"] == "no-usbmuxd" and "USBMUXD_SOCKET_ADDRESS" in rows["ios@127.0.0.1:9"]["hint"]
    # --format json is the same document as --json; the table fits 80 columns (issue 20): every id and state whole
    # on its row's line, and what to do as a numbered note under the table, each hint whole
    assert main(["devices", "--format", "json", "--farm", str(farm)]) == 0
    assert {r["id"]: r for r in json.loads(capsys.readouterr().out)} == rows
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["devices", "--farm", str(farm)]) == 0
    out = capsys.readouterr().out
    lines, flat = out.splitlines(), " ".join(out.split())
    assert max(len(line) for line in lines) <= 80, out
    devices = [r for r in rows.values() if not r["note"]]
    for n, r in enumerate([r for r in devices if r["hint"]], 1):
        assert " ".join(f"{n}. {r['id']} ({r['state']}): {r['hint']}".split()) in flat, r["id"]
        assert any(r["id"] in line and f" {r['state']} " in line and f"│ {n} │" in re.sub(r" +", " ", line)
                   for line in lines), r["id"]  # the row refers to its note
    for r in devices:
        assert any(r["id"] in line and f" {r['state']} " in line for line in lines), r["id"]
    assert " ".join(f"note: {rows['ios@127.0.0.1:9']['hint']}".split()) in flat
    # a device that is not ready, or not there, stops a run before any job (exit 2, with the fix)
    store = f"sqlite:///{tmp_path}/x.db"
    assert main(["run", str(SMOKE), "--device", "ios:UNPAIRED1", "--farm", str(farm), "--store", store]) == 2
    assert "lockdown pair" in capsys.readouterr().err
    assert main(["run", str(SMOKE), "--device", "ios:NOPE", "--farm", str(farm), "--store", store]) == 2
    assert "not found" in capsys.readouterr().err
    # with tunneld running, the iOS 17 phone is ready and reached through its tunnel
    _world(tmp_path, monkeypatch, [dev("IOS17A", version="17.5", product_type="iPhone16,2", build="21F90")])
    assert main(["devices", "--json"]) == 0
    row = {r["id"]: r for r in json.loads(capsys.readouterr().out)}["ios:IOS17A"]
    assert row["state"] == "ready" and row["soc"] == "Apple A17 Pro" and row["extra"]["tunnel"] == "127.0.0.1:49151"


def test_without_usbmuxd_the_real_services_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    if Path("/var/run/usbmuxd").exists():
        pytest.skip("this machine runs usbmuxd")
    from harness.devices.ios import IOSKind

    monkeypatch.delenv("HARNESS_IOS_SERVICES", raising=False)
    monkeypatch.delenv("USBMUXD_SOCKET_ADDRESS", raising=False)
    rows = IOSKind().discover(DeviceContext())
    assert [(r.id, r.state) for r in rows] == [("ios@local", "no-usbmuxd")] and "apt install usbmuxd" in rows[0].hint


# ------------------------------------------------------------------------------------ end to end

def test_smoke_suite_install_push_launch_poll_pull_store_report(tmp_path: Path, mlpackage: Path, ipa: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    world = _world(tmp_path, monkeypatch, [ios_fake.device(UDID)])
    farm = _farm(tmp_path / "farm.yaml")
    store_url = f"sqlite:///{tmp_path}/r.db"
    args = ["run", str(SMOKE), "--device", f"ios:{UDID}", "--ios-agent", str(ipa), "--farm", str(farm),
            "--store", store_url, "--set", f"options.extra.mlpackage={mlpackage}"]
    # 1) the real command line, in a subprocess
    env = {**os.environ, **FAKE_ENV, ios_fake.WORLD_ENV: str(world), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "harness", *args, "--report", str(tmp_path / "r1.html")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the Table-1 view of the phone, labelled: the pymobiledevice3 stand-in and the emulated app say what they are
    assert (f"ios:{UDID} (iPhone15,3, Apple A16 GPU) [stand-in: iOS API stand-in, iOS agent stand-in (no Core ML)]"
            in " ".join(proc.stderr.split()))
    assert f"ios:{UDID}" in (tmp_path / "r1.html").read_text()

    container = _container(tmp_path)
    sha = tree_sha256(mlpackage)
    assert json.loads((tmp_path / "phones" / UDID / "installed.json").read_text())[DEFAULT_BUNDLE_ID]["CFBundleVersion"] == "1"
    assert (container / AGENT_MARK.lstrip("/")).read_text() == hashlib.sha256(ipa.read_bytes()).hexdigest()
    model_dir = container / "Documents" / "models" / f"{sha[:16]}.mlpackage"
    assert (model_dir / "Manifest.json").is_file() and tree_sha256(model_dir) == sha
    assert (container / "Documents" / "models" / f"{sha[:16]}.mlpackage.sha256").read_text() == sha
    assert list((container / JOBS_DIR.lstrip("/")).iterdir()) == []  # every job's files were removed
    assert len(list((container / "Library" / "Caches" / "compiled").iterdir())) == 1  # compiled once, by hash

    run, jobs = _jobs_by_variant(store_url)
    assert run.status == "completed" and list(jobs) == LADDER
    for i, variant in enumerate(LADDER):
        res = jobs[variant].result
        assert res.status == "ok", res.error
        assert len(res.samples_ms) == 5 and len(res.warmup_ms) == 1 and all(s > 0 for s in res.samples_ms)
        assert "mach_absolute_time" in res.timing_method and res.init_ms is not None
        assert res.stand_in == ["iOS API stand-in", "iOS agent stand-in (no Core ML)"]  # the device's, then the app's
        assert res.memory.weight_bytes == (mlpackage / "Data/com.apple.CoreML/weights/weight.bin").stat().st_size
        ios = res.extra["ios"]
        assert ios["push"]["bytes_pushed"] == 0  # prepare() pushed the package before the first job
        assert ios["models"]["unet"]["sha256"] == sha and ios["compute_units"] == "cpuAndGPU"
        assert ios["wait"]["end"] == "done"
        assert res.extra["compiled"]["unet"]["cached"] is (i > 0)  # the app compiled on the first job only
        assert res.extra["inputs"]["unet"] == [{"name": "encoder_hidden_states", "shape": [2, 8, 8]},
                                               {"name": "sample", "shape": [2, 4, 8, 8]},
                                               {"name": "timestep", "shape": [2]}]
        workdir = next((tmp_path / "results" / "runs" / run.id).glob(f"{i:03d}-*"))
        pushed = parse_spec((workdir / "device" / "job.json").read_text())  # what the phone read
        assert pushed.options.runtime == "coreml" and pushed.options.compute_units == "cpuAndGPU"
        assert pushed.artifact == f"Documents/models/{sha[:16]}.mlpackage"
        assert parse_result((workdir / "device" / "result.json").read_text()).job_id == res.job_id
        assert json.loads((workdir / "device" / "status.json").read_text())["seq"] >= 1  # the app's heartbeat
    assert jobs["baseline"].result.extra["ios"]["agent"]["installed"] is True

    # 2) again, in process: the agent and the package are on the phone already
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--no-report", "--set", "options.compute_units=all"]) == 0
    run2 = Store(store_url).list_runs()[0]["id"]
    _, jobs2 = _jobs_by_variant(store_url, run2)
    for variant in LADDER:
        ios = jobs2[variant].result.extra["ios"]
        assert ios["push"]["bytes_pushed_total"] == 0 and ios["agent"]["installed"] is False
        assert ios["compute_units"] == "all"
    print(f"\nbytes pushed: first run {tree_size(mlpackage)}, second run 0")


def test_fault_matrix(tmp_path: Path, mlpackage: Path, ipa: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One smoke run, one fault per job: launch refused (locked), app hangs, app crashes, malformed
    result.json, the phone drops while result.json is pulled (retried)."""
    faults = [{"kind": k, "times": 1} for k in ("launch_locked", "hang", "crash", "malformed", "disconnect_on_pull")]
    faults[-1]["skip"] = 1  # not while the malformed job's result.json is read: the next job's
    _world(tmp_path, monkeypatch, [ios_fake.device(UDID, faults=faults)])
    farm = _farm(tmp_path / "farm.yaml", heartbeat_timeout_s=5.0, launch_timeout_s=5.0)  # the hang must time out
    store_url = f"sqlite:///{tmp_path}/f.db"
    monkeypatch.chdir(tmp_path)
    rc = main(["run", str(SMOKE), "--device", f"ios:{UDID}", "--ios-agent", str(ipa), "--farm", str(farm),
               "--store", store_url, "--set", f"options.extra.mlpackage={mlpackage}", "--no-report"])
    assert rc == 1  # jobs failed; everything was stored
    run, jobs = _jobs_by_variant(store_url)
    assert run.status == "completed"
    outcome = {v: (j.result.status, j.result.error.kind if j.result.error else None) for v, j in jobs.items()}
    assert outcome == {"baseline": ("failed", "device"), "+opt_softmax": ("failed", "timeout"),
                       "+sgn_gelu": ("failed", "crash"), "+flash_attention": ("failed", "parse"),
                       "+winograd": ("ok", None)}
    assert "unlock" in jobs["baseline"].result.error.message
    hang = jobs["+opt_softmax"].result
    assert "heartbeat" in hang.error.message and hang.extra["ios"]["wait"]["end"] == "timeout"
    killed = (tmp_path / "phones" / UDID / "killed.log").read_text().split()
    assert killed[1] == hang.job_id  # the hung app was killed
    assert "ended without a result" in jobs["+sgn_gelu"].result.error.message
    assert jobs["+sgn_gelu"].result.error.detail.endswith("Fatal error: Unexpectedly found nil while unwrapping an "
                                                           "Optional value")  # the app's stderr.txt
    assert '"status": ' in jobs["+flash_attention"].result.error.detail  # the garbage is kept for the reader
    assert jobs["+winograd"].attempts == 2  # the drop was retried and the retry succeeded
    used = ios_fake.World(tmp_path / "world.json").find(UDID).faults_used()
    assert used == {f["kind"]: 1 for f in faults}
    assert list((_container(tmp_path) / JOBS_DIR.lstrip("/")).iterdir()) == []


def test_e2e_smoke_runs_the_native_loop_contract(tmp_path: Path, mlpackage: Path, ipa: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.models.configs import get_model_config
    from harness.models.pipeline import random_token_ids

    _world(tmp_path, monkeypatch, [ios_fake.device(UDID)])
    farm = _farm(tmp_path / "farm.yaml")
    store_url = f"sqlite:///{tmp_path}/e.db"
    monkeypatch.chdir(tmp_path)
    base = ["run", str(E2E_SMOKE), "--device", f"ios:{UDID}", "--ios-agent", str(ipa), "--farm", str(farm),
            "--store", store_url, "--no-report", "--set", "iterations=1", "--set", "measure.warmup_runs=0"]
    # only the UNet: harness.export builds no text encoder / decoder package, and the jobs say so
    assert main([*base, "--set", f"options.extra.mlpackage={mlpackage}"]) == 1
    _, jobs = _jobs_by_variant(store_url)
    assert all(j.result.error.kind == "input" and "mlpackages" in j.result.error.message for j in jobs.values())
    components = [f"options.extra.mlpackages.{c}={mlpackage}" for c in ("text_encoder", "unet", "vae_decoder")]
    base = [a for a in base if a != "--no-report"] + ["--report", str(tmp_path / "e2e.html")]
    assert main([*base, *[x for c in components for x in ("--set", c)]]) == 0
    assert f"ios:{UDID}" in (tmp_path / "e2e.html").read_text()  # the e2e report renders the phone's rows
    run, jobs = _jobs_by_variant(store_url, Store(store_url).list_runs()[0]["id"])
    res = jobs["baseline"].result
    assert res.status == "ok" and res.components_ms["steps"] == 20
    assert len(res.components_ms["unet_ms"]) == 1 and len(res.components_ms["unet_ms"][0]) == 20
    assert set(res.components_ms) >= {"text_encoder_ms", "scheduler_ms", "decoder_ms", "prepare_ms",
                                      "postprocess_ms", "total_ms", "gap_ms", "unet_evals"}
    workdir = next((tmp_path / "results" / "runs" / run.id).glob("000-*"))
    pushed = parse_spec((workdir / "device" / "job.json").read_text())
    assert set(pushed.options.extra["models"]) == {"text_encoder", "unet", "vae_decoder"}
    expected = random_token_ids(get_model_config("tiny"), pushed.workload_args["prompt"], pushed.workload_args["seed"])
    assert pushed.options.extra["token_ids"] == expected.tolist()


# ------------------------------------------------------------------------------------ settings and helpers

def test_settings_precedence_and_validation(tmp_path: Path, ipa: Path) -> None:
    farm = {"ios": {"usbmux": ["local", "farm-host:27015"], "tunneld": "farm-host:49151", "agent": "agent.ipa",
                    "poll_s": 0.5},
            "devices": {UDID: {"heartbeat_timeout_s": 90, "benchmark_model": "ignored (android key)"}}}
    ctx = DeviceContext(farm=farm, farm_path=tmp_path / "farm.yaml")
    s = settings_for(ctx, UDID)
    assert s.usbmux == (None, "farm-host:27015") and s.tunneld == "farm-host:49151"
    assert s.agent == str(tmp_path / "agent.ipa") and s.poll_s == 0.5 and s.heartbeat_timeout_s == 90
    assert settings_for(ctx).heartbeat_timeout_s == 30.0
    ctx.ios_agent = str(ipa)
    assert settings_for(ctx, UDID).agent == str(ipa)  # --ios-agent wins
    for bad, words in [({"ios": {"pol_s": 1}}, "unknown key"), ({"ios": {"usbmux": ["a b"]}}, "HOST:PORT"),
                       ({"ios": {"poll_s": -1}}, "must be > 0"), ({"ios": {"tunneld": "x"}}, "HOST:PORT")]:
        with pytest.raises(IOSConfigError, match=words):
            settings_for(DeviceContext(farm=bad))
    assert ipa_info(ipa)["CFBundleIdentifier"] == DEFAULT_BUNDLE_ID
    (tmp_path / "bad.ipa").write_bytes(b"not a zip")
    with pytest.raises(IOSConfigError, match="cannot read the agent IPA"):
        ipa_info(tmp_path / "bad.ipa")


def test_device_spec_and_runtime_mapping(mlpackage: Path) -> None:
    spec = JobSpec(job_id="j", run_id="r", device="ios:X", variant="baseline",
                   options=RuntimeOptions(extra={"mlpackage": "/host/x.mlpackage", "foo": 1}))
    d = device_spec(spec, {"unet": "Documents/models/ab.mlpackage"}, 0.5)
    assert (d.options.runtime, d.options.compute_units, d.artifact) == ("coreml", "cpuAndGPU", "Documents/models/ab.mlpackage")
    assert d.options.extra == {"foo": 1, "models": {"unet": "Documents/models/ab.mlpackage"}, "heartbeat_s": 0.5}
    assert compute_units_of(spec.model_copy(update={"options": RuntimeOptions(compute_units="all")})) == "all"
    for options, words in [(RuntimeOptions(compute_units="gpu"), "not Core ML's"),
                           (RuntimeOptions(runtime="litert-gpu"), "does not run on ios devices")]:
        with pytest.raises(JobFailure, match=words):
            s = spec.model_copy(update={"options": options})
            check_runtime(s)
            compute_units_of(s)
    # the package hash: independent of file order on disk, sensitive to content and names
    h = tree_sha256(mlpackage)
    assert h == tree_sha256(mlpackage) and len(h) == 64


# ------------------------------------------------------------------------------------ schema compatibility

def _swift_structs() -> dict[str, dict[str, str]]:
    """struct name -> {property: Swift type} of the Codable structs in Protocol.swift."""
    src = (SWIFT / "Sources" / "HarnessAgentCore" / "Protocol.swift").read_text()
    out: dict[str, dict[str, str]] = {}
    for m in re.finditer(r"public struct (\w+): Codable, Equatable \{(.*?)\n\}", src, re.S):
        out[m[1]] = {f: t.strip() for f, t in re.findall(r"^    public var (\w+): ([^=\n]+?)\s*(?:=.*)?$", m[2], re.M)}
    return out


def _swift_type(annotation) -> str:
    """The Swift type a pydantic field's annotation must have in Protocol.swift."""
    from pydantic import BaseModel

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return _swift_type(inner[0]) + "?"
    if origin is typing.Literal:
        return {str: "String", int: "Int"}[type(args[0])]
    if origin is dict:
        value = args[1]
        return "[String: " + ("JSONValue" if value is typing.Any else _swift_type(value)) + "]"
    if origin is list:
        return f"[{_swift_type(args[0])}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    if isinstance(annotation, type) and issubclass(annotation, enum.StrEnum):
        return "String"  # JobError.kind (ErrorKind): its value on the wire
    return {str: "String", int: "Int", float: "Double", bool: "Bool"}[annotation]


def test_swift_codable_types_match_the_protocol() -> None:
    from harness import protocol

    swift = _swift_structs()
    models = [protocol.ModelRef, protocol.RuntimeOptions, protocol.MeasurePolicy, protocol.CheckPolicy,
              protocol.JobSpec, protocol.MemoryFigures, protocol.ReferenceCheck, protocol.JobError, protocol.JobResult]
    assert set(swift) == {m.__name__ for m in models}
    for model in models:
        expected = {name: _swift_type(f.annotation) for name, f in model.model_fields.items()}
        if model is protocol.JobResult:  # the agent speaks version 1: timing_method on top, no execution record
            expected.pop("execution")
            expected["timing_method"] = "String?"
        assert swift[model.__name__] == expected, model.__name__
    version = int(re.search(r"public let schemaVersion = (\d+)",
                            (SWIFT / "Sources/HarnessAgentCore/Protocol.swift").read_text())[1])
    assert version == ios.AGENT_SCHEMA_VERSION == 1 and version in protocol.SUPPORTED_VERSIONS


def test_result_fixture_is_the_swift_output_and_parses() -> None:
    sys.path.insert(0, str(DATA))
    from make_fixtures import apple_json

    text = (DATA / "result.json").read_text()
    assert text == apple_json(json.loads(text))  # in JSONEncoder's own form (sorted keys, "key" : value)
    res = parse_result(text)
    assert isinstance(res, JobResult) and res.status == "ok" and res.timing_method == "mach_absolute_time"
    assert res.stand_in == []  # the app on a real iPhone is no stand-in
    assert res.memory.peak_rss_bytes == 2_310_144_000 and res.device_state_after["thermal_state"] == "fair"
    # the values ProtocolTests.swift builds are the fixture's
    swift = (SWIFT / "Tests" / "HarnessAgentCoreTests" / "ProtocolTests.swift").read_text()
    doc = json.loads(text)
    for key in ("samples_ms", "warmup_ms"):
        values = re.search(rf"r\.{key} = \[([^\]]*)\]", swift)[1]
        assert [float(v) for v in values.split(",")] == doc[key], key
    for key in ("init_ms", "first_run_ms", "started_at", "ended_at"):
        assert float(re.search(rf"r\.{key} = ([\d_.]+)", swift)[1].replace("_", "")) == doc[key], key
    assert f'JobResult(job_id: "{doc["job_id"]}")' in swift and f'r.timing_method = "{doc["timing_method"]}"' in swift
    for key, value in doc["versions"].items():
        assert f'"{key}": "{value}"' in swift


def test_fixtures_are_what_make_fixtures_writes_now() -> None:
    sys.path.insert(0, str(DATA))
    import make_fixtures

    for name, text in make_fixtures.render().items():
        stored = (DATA / name).read_text()
        if name == "scheduler_reference.json":
            _assert_close(json.loads(stored), json.loads(text), name)
        else:
            assert stored == text, f"{name} is stale: run python tests/data/ios/make_fixtures.py"
    for name in ("job.json", "job_e2e.json"):
        spec = parse_spec((DATA / name).read_text())
        swift = _swift_structs()["JobSpec"]
        assert set(json.loads((DATA / name).read_text())) == set(swift)  # every key has a Swift property
        assert spec.options.runtime == "coreml"


def _assert_close(a, b, where: str) -> None:
    # fp32 scheduler arithmetic: the same code gives values up to 2.9e-6 apart (8e-5 relative, on values near
    # 0) on an AMD EPYC and on the Xeon the fixture was written on (SIMD paths differ); a stale fixture or a
    # changed scheduler differs by far more.
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# The schedulers of Scheduler.swift, line for line (Double scalars, Float latents), replayed here
# against diffusers' reference: the Swift code itself runs in SchedulerTests.swift on a Mac.

def _swift_train_sigmas() -> list[float]:
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    product, out = 1.0, []
    for i in range(1000):
        root = lo + (hi - lo) * i / 999
        product *= 1.0 - root * root
        out.append(math.sqrt((1.0 - product) / product))
    return out


def _swift_dpm(steps: int, sigmas_t: list[float]):
    import numpy as np

    f32 = np.float32
    timesteps = [999.0 if i == steps else float(round(i * (999.0 / steps))) for i in range(steps, 0, -1)]
    sigmas = [sigmas_t[int(t)] for t in timesteps] + [0.0]
    state = {"i": 0, "prev": None}

    def alpha_sigma(s):
        a = 1.0 / math.sqrt(s * s + 1.0)
        return a, s * a

    def step(eps, x):
        i = state["i"]
        a_s0, s_s0 = alpha_sigma(sigmas[i])
        a_t, s_t = alpha_sigma(sigmas[i + 1])
        x0 = [f32((float(x[k]) - s_s0 * float(eps[k])) / a_s0) for k in range(len(x))]
        lam_t = math.log(a_t) - (math.log(s_t) if s_t > 0 else -math.inf)
        lam_s0 = math.log(a_s0) - math.log(s_s0)
        h = lam_t - lam_s0
        ratio, coef = s_t / s_s0, a_t * (math.exp(-h) - 1.0)
        if state["prev"] is not None and i != len(timesteps) - 1:
            a_s1, s_s1 = alpha_sigma(sigmas[i - 1])
            r0 = (lam_s0 - (math.log(a_s1) - math.log(s_s1))) / h
            out = [f32(ratio * float(x[k]) - coef * float(x0[k]) - 0.5 * coef * (float(x0[k]) - float(state["prev"][k])) / r0)
                   for k in range(len(x))]
        else:
            out = [f32(ratio * float(x[k]) - coef * float(x0[k])) for k in range(len(x))]
        state["prev"], state["i"] = x0, i + 1
        return out

    return timesteps, sigmas, 1.0, (lambda x, i: list(x)), step


def _swift_euler(steps: int, sigmas_t: list[float]):
    import numpy as np

    f32 = np.float32

    def interp(t):
        if t >= 999:
            return sigmas_t[-1]
        i = math.floor(t)
        return sigmas_t[i] + (sigmas_t[i + 1] - sigmas_t[i]) * (t - i)

    timesteps = [999.0 if i == steps - 1 else 999.0 * i / (steps - 1) for i in range(steps - 1, -1, -1)]
    sigmas = [interp(t) for t in timesteps] + [0.0]
    state = {"i": 0}

    def scale(x, i):
        s = f32(1.0 / math.sqrt(sigmas[i] ** 2 + 1.0))
        return [f32(v) * s for v in x]

    def step(eps, x):
        dt = f32(sigmas[state["i"] + 1] - sigmas[state["i"]])
        state["i"] += 1
        return [f32(x[k]) + f32(eps[k]) * dt for k in range(len(x))]

    return timesteps, sigmas, max(sigmas), scale, step


@pytest.mark.parametrize("name", ["dpmsolver++", "euler"])
def test_swift_scheduler_algorithm_matches_diffusers(name: str) -> None:
    ref = json.loads((DATA / "scheduler_reference.json").read_text())
    run = ref["schedulers"][name]
    timesteps, sigmas, init, scale, step = (_swift_dpm if name == "dpmsolver++" else _swift_euler)(
        ref["steps"], _swift_train_sigmas())
    assert all(abs(a - b) < 1e-3 for a, b in zip(timesteps, run["timesteps"]))
    assert all(abs(a - b) <= 1e-4 * (abs(b) + 1e-3) for a, b in zip(sigmas, run["sigmas"]))
    assert abs(init - run["init_noise_sigma"]) <= 1e-4 * run["init_noise_sigma"]
    x = [v * init for v in run["noise"]]
    close = lambda a, b: abs(a - b) <= 2e-3 * (abs(b) + 1e-3)  # noqa: E731 - SchedulerTests.swift's tolerance
    for i in range(ref["steps"]):
        assert all(close(float(a), b) for a, b in zip(scale(x, i), run["scaled_inputs"][i])), (name, i)
        x = step(run["model_outputs"][i], x)
        assert all(close(float(a), b) for a, b in zip(x, run["samples"][i])), (name, i)
    # and the swift source has the constants this mirror uses
    src = (SWIFT / "Sources" / "HarnessAgentCore" / "Scheduler.swift").read_text()
    assert "betaStart: Double = 0.00085, betaEnd: Double = 0.012, trainSteps: Int = 1000" in src
    assert ".rounded(.toNearestOrEven)" in src and "0.5 * coef * d1" in src


@pytest.mark.slow
def test_real_coreml_export_pushed_and_run_by_the_host_agent_app(tmp_path: Path, ipa: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The path without options.extra.mlpackage: harness.export converts the tiny UNet to an .mlpackage,
    the device pushes it, and the emulated app runs the host agent's run() on the job (real numbers)."""
    import yaml

    _world(tmp_path, monkeypatch, [ios_fake.device(UDID)], app="host")
    suite = tmp_path / "one.yaml"
    suite.write_text(yaml.safe_dump({"name": "one", "model": "tiny", "variants": [{"name": "baseline", "flags": {}}],
                                     "options": {"dtype": "fp32"}, "measure": {"iterations": 1, "warmup_runs": 0}}))
    store_url = f"sqlite:///{tmp_path}/s.db"
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(suite), "--device", f"ios:{UDID}", "--ios-agent", str(ipa), "--farm",
                 str(_farm(tmp_path / "farm.yaml", heartbeat_timeout_s=600)), "--store", store_url, "--no-report",
                 "--cache", str(tmp_path / "cache")]) == 0
    _, jobs = _jobs_by_variant(store_url)
    res = jobs["baseline"].result
    assert res.status == "ok" and "host agent" in res.extra["emulated"] and len(res.samples_ms) == 1
    unet = res.extra["ios"]["models"]["unet"]
    assert unet["source"] == "export"
    assert (_container(tmp_path) / unet["device_path"] / "Manifest.json").is_file()


@pytest.mark.device
def test_real_iphone_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real iPhone: `HARNESS_IOS_AGENT=build/ios/HarnessAgent.ipa pytest -m device tests/test_ios.py`
    (HARNESS_IOS_UDID picks one phone, else every ready one), on a host with usbmuxd (and tunneld for
    iOS 17+). Exports the tiny UNet to Core ML, installs the agent, runs the smoke ladder on the GPU."""
    ipa = os.environ.get("HARNESS_IOS_AGENT")
    if not ipa:
        pytest.skip("set HARNESS_IOS_AGENT to the agent IPA built on a Mac (make ios-agent)")
    monkeypatch.delenv("HARNESS_IOS_SERVICES", raising=False)
    monkeypatch.chdir(tmp_path)
    udid = os.environ.get("HARNESS_IOS_UDID")
    store_url = f"sqlite:///{tmp_path}/real.db"
    assert main(["run", str(SMOKE), "--device", f"ios:{udid}" if udid else "ios", "--ios-agent", ipa,
                 "--store", store_url, "--set", "iterations=3", "--set", "dtype=fp16"]) == 0
    _, jobs = _jobs_by_variant(store_url)
    for job in jobs.values():
        res = job.result
        assert res.timing_method == "mach_absolute_time" and len(res.samples_ms) >= 3
        assert res.memory.peak_rss_bytes and res.device_state_before["thermal_state"] in (
            "nominal", "fair", "serious", "critical")
        assert res.execution.unit_used == "coreml:cpuAndGPU"
