"""harness.standin: each source of a stand-in label, on captured text, both ways (a stand-in is labelled, a
real phone, tool or GPU never is), and the label through the store into the report of a host run.

The end-to-end runs: tests/test_android.py::test_stand_ins_are_labelled_in_every_output_and_a_real_phone_never
(fake phone and benchmark_model stand-in vs a phone and tool that say nothing) and tests/test_ios.py's smoke run.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from harness import standin
from harness.devices.android.parse_device import parse_getprop
from harness.protocol import Execution, JobResult
from harness.runtimes.litert_gpu import ProbeReport, parse_engine_log
from harness.store import Store
from harness.workloads.litert import mark_emulation
from tests.fakes.adb_server import DEFAULT_PROPS

DATA = Path(__file__).resolve().parent / "data"


def test_android_properties_a_real_phone_is_no_stand_in_a_fake_or_an_emulator_is() -> None:
    real = parse_getprop((DATA / "android" / "getprop.txt").read_text())  # a Galaxy S23 Ultra's getprop
    assert real["ro.product.model"] and standin.from_android_props(real) == []
    assert standin.from_android_props(DEFAULT_PROPS) == ["fake phone"]  # the fake adb server's phones
    assert standin.from_android_props({**real, "ro.harness.stand_in": "1"}) == ["fake phone"]
    assert standin.from_android_props({**real, "ro.harness.stand_in": "0"}) == []
    assert standin.from_android_props({**real, "ro.kernel.qemu": "1"}) == ["Android emulator"]
    assert standin.from_android_props({**real, "ro.hardware": "ranchu"}) == ["Android emulator"]


def test_tool_output_only_a_stand_in_line_labels_it() -> None:
    for path in sorted((DATA / "android").glob("benchmark_model_*.txt")):  # the real tool's formats
        assert standin.from_output(path.read_text()) == [], path.name
    text = ("INFO: STARTING!\nINFO: harness-stand-in: benchmark_model stand-in\nINFO: Graph: [x.tflite]\n"
            "harness-stand-in: benchmark_model stand-in  \n")
    assert standin.from_output(text) == ["benchmark_model stand-in"]  # once, whatever the prefix
    assert standin.from_output(None) == []


def test_ios_lockdown_values_and_the_agent_result() -> None:
    real = {"UniqueDeviceID": "00008120-001A2B3C4D5E6F70", "ProductType": "iPhone15,3", "ProductVersion": "18.1",
            "DeviceClass": "iPhone", "BuildVersion": "22B83", "DeviceName": "iPhone"}
    assert standin.from_ios_lockdown(real) == []
    assert standin.from_ios_lockdown({**real, "HarnessStandIn": "iOS API stand-in"}) == ["iOS API stand-in"]
    assert standin.from_ios_lockdown({**real, "HarnessStandIn": True}) == ["iOS API stand-in"]


def test_swiftshader_is_a_stand_in_for_a_gpu_and_a_hardware_adapter_is_not() -> None:
    log = parse_engine_log((DATA / "litert_gpu" / "fully_accelerated_swiftshader.log").read_text())
    assert log.adapter is not None and log.adapter.software
    result: dict = {}
    mark_emulation(result, [ProbeReport(path="x", adapter=log.adapter)])
    assert result["stand_in"] == [standin.EMULATED_GPU]
    hardware = parse_engine_log("I0000 environment.cc:532] Selected adapter: NVIDIA H100 80GB HBM3, arch=hopper, "
                                "vendor=nvidia, backend=Vulkan, adapterType=Discrete GPU").adapter
    assert hardware is not None and not hardware.software
    result = {}
    mark_emulation(result, [ProbeReport(path="x", adapter=hardware)])
    assert result["stand_in"] == []


def test_label_and_merge() -> None:
    assert standin.label([]) == "" and standin.label(None) == "" and standin.marked("x", []) == "x"
    assert standin.label(["fake phone", "benchmark_model stand-in"]) == "[stand-in: fake phone, benchmark_model stand-in]"
    assert standin.merge(["a"], None, ["b", "a", " "]) == ["a", "b"]


def _host_run(store: Store, run_id: str, device: dict, result_stand_in: list[str]) -> None:
    store.create_run(run_id, "smoke", {"name": "smoke", "model": {"name": "tiny", "weights": None}})
    store.record_device(run_id, device)
    res = JobResult(job_id="j", status="ok", samples_ms=[10.0, 11.0, 12.0], execution=Execution(timing_method="perf_counter"),
                    stand_in=result_stand_in)
    store.record_job(run_id, job_key="k", job_index=0, device_id=device["id"], workload="unet_iteration",
                     model="tiny", variant="baseline", variant_index=0, flags={}, options={"runtime": "litert-gpu"},
                     options_hash="h", result=res)
    store.finish_run(run_id, "completed")


@pytest.mark.parametrize("fmt", ["md", "csv", "html"])
def test_a_swiftshader_row_and_a_real_row_in_the_reports(tmp_path: Path, fmt: str) -> None:
    from harness.report.render import render

    store = Store(f"sqlite:///{tmp_path}/s.db")
    host = {"id": "host", "kind": "host", "model": "Xeon", "gpu": "none (CPU only)", "stand_in": []}
    _host_run(store, "emulated", host, [standin.EMULATED_GPU])
    _host_run(store, "real", {**host, "gpu": "NVIDIA H100"}, [])
    emulated = render(store.load_run("emulated"), fmt)
    real = render(store.load_run("real"), fmt)
    assert "stand-in" not in real.replace("stand_in", "")
    if fmt == "csv":
        assert [r["stand_in"] for r in csv.DictReader(io.StringIO(emulated))] == [standin.EMULATED_GPU]
        assert [r["stand_in"] for r in csv.DictReader(io.StringIO(real))] == [""]
    else:
        assert f"host (Xeon) [stand-in: {standin.EMULATED_GPU}]" in emulated
        assert "their latency and memory are not a phone" in emulated


def test_an_old_store_gets_the_column(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    Store(f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:  # a store made before the column existed
        conn.execute("ALTER TABLE jobs DROP COLUMN stand_in_json")
    store = Store(f"sqlite:///{db}")
    _host_run(store, "r", {"id": "android:X", "kind": "android", "stand_in": ["fake phone"]}, ["tool stand-in"])
    with sqlite3.connect(db) as conn:
        (value,) = conn.execute("SELECT stand_in_json FROM jobs").fetchone()
    assert json.loads(value) == ["fake phone", "tool stand-in"]  # the device's labels merged in when stored
    assert store.load_run("r").jobs[0].result.stand_in == ["fake phone", "tool stand-in"]
