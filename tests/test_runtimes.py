"""The runtime registry (harness.runtimes) and LiteRT's GPU accelerator on the host
(harness.runtimes.litert_gpu): log parsing on captured logs, the compile probe on SwiftShader, and
the engine crash a composite causes, reported instead of killing the harness."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.runtimes import RUNTIMES, LiteRtGpuOptions, UnknownRuntimeError, get_runtime, runtimes_of
from harness.runtimes.litert_gpu import (
    driver_candidates, driver_env, parse_engine_log, probe, swiftshader_icd,
)
from harness.suite import SuiteError, load_suite

REPO = Path(__file__).resolve().parents[1]
LOGS = REPO / "tests" / "data" / "litert_gpu"


# ------------------------------------------------------------------------------------ registry

def test_unknown_runtime_names_the_known_ones():
    with pytest.raises(UnknownRuntimeError, match="known runtimes: torch, litert-cpu, litert-gpu"):
        get_runtime("litert-gpuu")


def test_where_each_runtime_runs_and_what_torch_means_on_a_phone():
    assert get_runtime("litert-gpu").artifact == "tflite" and get_runtime("coreml").artifact == "coreml"
    assert get_runtime("torch").artifact is None
    assert get_runtime("torch").on("android") == "litert-gpu" and get_runtime("torch").on("ios") == "coreml"
    assert get_runtime("litert-gpu").on("host") == "litert-gpu"
    with pytest.raises(UnknownRuntimeError, match=r"does not run on host devices \(it runs on: ios\)"):
        get_runtime("coreml").on("host")
    assert runtimes_of("android") == ("litert-cpu", "litert-gpu", "litert-nnapi", "litert-delegate")
    assert set(runtimes_of("host")) == {"torch", "litert-cpu", "litert-gpu"}
    assert all(r.name == n for n, r in RUNTIMES.items())


def test_runtime_options_are_typed_and_errors_name_the_key():
    opts = get_runtime("litert-gpu").parse_options({"allow_cpu_fallback": True, "gpu_backend": "cl"})
    assert isinstance(opts, LiteRtGpuOptions) and opts.allow_cpu_fallback and opts.precision == "auto"
    with pytest.raises(ValueError, match=r"options.extra.precision: .*'fp8'"):
        get_runtime("litert-gpu").parse_options({"precision": "fp8"})


def _suite(tmp_path: Path, options: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nmodel: tiny\noptions:\n{options}\n")
    return path


def test_an_unknown_runtime_fails_at_suite_load_with_its_line(tmp_path):
    path = _suite(tmp_path, "  dtype: fp16\n  runtime: litert-gpuu")
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    assert f"{path}:5: options.runtime: unknown runtime 'litert-gpuu'; known runtimes:" in str(err.value)
    with pytest.raises(SuiteError, match=r"--set runtime=litert-gpuu: options.runtime: unknown runtime"):
        load_suite(_suite(tmp_path, "  dtype: fp16"), ["runtime=litert-gpuu"])


def test_a_bad_runtime_option_fails_at_suite_load(tmp_path):
    with pytest.raises(SuiteError, match=r"options.extra.allow_cpu_fallback: Input should be a valid boolean"):
        load_suite(_suite(tmp_path, "  runtime: litert-gpu\n  extra: {allow_cpu_fallback: maybe}"))
    # keys the runtime does not own are left to the device that reads them (benchmark_model flags)
    assert load_suite(_suite(tmp_path, "  runtime: litert-gpu\n  extra: {gpu_backend: cl}")).options.runtime == \
        "litert-gpu"


def test_run_refuses_a_runtime_the_device_cannot_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(REPO / "suites" / "smoke.yaml"),
                           "--set", "runtime=coreml", "--store", f"sqlite:///{tmp_path}/s.db", "--no-report"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "runtime 'coreml' does not run on host devices (it runs on: ios)" in proc.stderr


# ------------------------------------------------------------------------------------ engine log

def test_log_of_a_graph_the_gpu_refuses():
    log = parse_engine_log((LOGS / "broadcast_to_refused.log").read_text())
    assert log.adapter.name == "SwiftShader Device (Subzero)" and log.adapter.backend == "Vulkan"
    assert log.adapter.type == "CPU / Software" and log.adapter.software
    assert [(r.op, r.reason) for r in log.rejected] == [("BROADCAST_TO", "Operation is not supported."),
                                                        ("DEQUANTIZE", "")]
    assert (log.ops_on_gpu, log.ops_on_cpu) == (3194, 285) and not log.no_adapter


def test_log_of_other_refusals_and_of_no_adapter():
    emb = parse_engine_log((LOGS / "embedding_lookup_fp16_refused.log").read_text())
    assert ("EMBEDDING_LOOKUP", "Empty quantization params.") in [(r.op, r.reason) for r in emb.rejected]
    assert (emb.ops_on_gpu, emb.ops_on_cpu) == (1, 3)
    fc = parse_engine_log((LOGS / "int8_fully_connected_failed.log").read_text())
    assert any("Shape mismatch" in e for e in fc.errors) and not fc.rejected
    none = parse_engine_log((LOGS / "no_adapter_lavapipe.log").read_text())
    assert none.no_adapter and none.adapter is None
    ok = parse_engine_log((LOGS / "fully_accelerated_swiftshader.log").read_text())
    assert ok.adapter.software and not ok.rejected and ok.ops_on_cpu is None
    split = parse_engine_log((LOGS / "partial_gpu_cpu.log").read_text())
    assert (split.ops_on_gpu, split.ops_on_cpu) == (3194, 285)


def test_driver_choices(monkeypatch):
    from harness.runtimes import litert_gpu

    monkeypatch.setattr(litert_gpu, "_AUTO_CHOICE", {})
    monkeypatch.delenv("VK_ICD_FILENAMES", raising=False)
    monkeypatch.delenv("VK_DRIVER_FILES", raising=False)
    monkeypatch.setattr(litert_gpu, "swiftshader_icd", lambda: "/x/vk_swiftshader_icd.json")
    monkeypatch.setattr(litert_gpu, "gpu_device_nodes", lambda: True)
    assert driver_candidates("auto") == ["system", "swiftshader"]
    monkeypatch.setattr(litert_gpu, "gpu_device_nodes", lambda: False)  # no GPU shown: SwiftShader first
    assert driver_candidates("auto") == ["swiftshader", "system"]
    litert_gpu._AUTO_CHOICE["auto"] = "swiftshader"  # what a probe that found SwiftShader leaves
    assert driver_candidates("auto") == ["swiftshader"]
    litert_gpu._AUTO_CHOICE.clear()
    assert driver_env("system") == {"VK_ICD_FILENAMES": None, "VK_DRIVER_FILES": None}
    monkeypatch.setenv("VK_ICD_FILENAMES", "/x.json")
    assert driver_candidates("auto") == ["environment"] and driver_env("environment") == {}
    with pytest.raises(ValueError, match="the Vulkan ICD file '/nope.json' was not found"):
        driver_env("/nope.json")


# ------------------------------------------------------------------------------------ the engine

needs_swiftshader = pytest.mark.skipif(swiftshader_icd() is None,
                                       reason="SwiftShader (Debian's chromium) is not installed; .ci/run installs it")


def _convert(module, inputs, path: Path) -> Path:
    import litert_torch

    litert_torch.convert(module.eval(), inputs).export(str(path))
    return path


@pytest.fixture(scope="module")
def small_graphs(tmp_path_factory):
    """Linear + GELU (GPU-clean), an expand feeding a reshape (BROADCAST_TO), one odml.rms_norm composite."""
    import torch
    from litert_torch.hlfb import StableHLOCompositeBuilder
    from torch import nn

    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("gpu")

    class Clean(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16, 32)

        def forward(self, x):
            return torch.nn.functional.gelu(self.lin(x))

    class Broadcast(nn.Module):
        def forward(self, x, t):
            return x + t.expand(2).reshape(2, 1)

    class Composite(nn.Module):
        def forward(self, x):
            b = StableHLOCompositeBuilder("odml.rms_norm", {"epsilon": 1e-5})
            w = torch.ones(x.shape[-1])
            x, w = b.mark_inputs(x, w)
            return b.mark_outputs(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w)

    with torch.no_grad():
        return {
            "clean": _convert(Clean(), (torch.randn(2, 8, 16),), tmp / "clean.tflite"),
            "broadcast": _convert(Broadcast(), (torch.randn(2, 4), torch.tensor(3.0)), tmp / "bcast.tflite"),
            "composite": _convert(Composite(), (torch.randn(1, 4, 16),), tmp / "comp.tflite"),
        }


@needs_swiftshader
def test_a_clean_graph_is_fully_accelerated_on_swiftshader(small_graphs):
    report = probe(small_graphs["clean"])
    assert report.fully_accelerated and report.compiled and not report.crashed
    assert report.adapter.software and "SwiftShader" in report.adapter.name
    assert report.summary().startswith("fully accelerated (SwiftShader")


@needs_swiftshader
def test_a_refused_op_is_named_with_its_node(small_graphs):
    from harness.export.tflite import read_graph
    from harness.runtimes.litert_gpu import explain

    report = probe(small_graphs["broadcast"])
    assert not report.compiled and not report.fully_accelerated and not report.crashed
    assert [r.op for r in report.rejected if r.reason] == ["BROADCAST_TO"]
    lines = explain(report, read_graph(small_graphs["broadcast"]))
    assert lines[0].startswith("BROADCAST_TO x1: Operation is not supported. - node ")
    split = probe(small_graphs["broadcast"], allow_cpu=True)
    assert split.compiled and not split.fully_accelerated and split.ops_on_cpu >= 1


@needs_swiftshader
def test_a_composite_crashes_the_engine_and_the_probe_says_so(small_graphs):
    from harness.export.tflite import read_graph
    from harness.runtimes.litert_gpu import explain

    report = probe(small_graphs["composite"])
    assert report.crashed and report.signal == 11 and not report.compiled
    assert "crashed (signal 11)" in report.summary()
    assert any("crashes on every STABLEHLO_COMPOSITE" in line for line in explain(report, read_graph(
        small_graphs["composite"])))


@needs_swiftshader
def test_the_composite_reproducer_script():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_composite_repro.py")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "without the composite: fully accelerated" in proc.stdout
    assert "with the odml.rms_norm composite: the GPU engine crashed (signal 11)" in proc.stdout


def test_no_vulkan_adapter_is_reported_not_raised(small_graphs, monkeypatch, tmp_path):
    """A driver file that offers no adapter: the probe says so (the job then fails as a device problem)."""
    icd = tmp_path / "none.json"
    icd.write_text('{"file_format_version": "1.0.0", "ICD": {"library_path": "/nonexistent/libvk.so", '
                   '"api_version": "1.3.0"}}')
    report = probe(small_graphs["clean"], driver=str(icd))
    assert not report.compiled and not report.fully_accelerated and report.adapter is None
    assert "no Vulkan adapter" in report.error


def test_inspect_prints_the_gpu_line(small_graphs):
    proc = subprocess.run([sys.executable, "-m", "harness", "inspect", str(small_graphs["broadcast"])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    if swiftshader_icd() is None and shutil.which("vulkaninfo") is None:
        assert "GPU: not checked" in proc.stdout
    else:
        assert "GPU: not fully accelerated on " in proc.stdout and "BROADCAST_TO x1" in proc.stdout
