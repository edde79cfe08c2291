"""Runtime `litert-gpu` on the host and GPU-clean export, through LiteRT's GPU accelerator on
SwiftShader (Debian's chromium; .ci/run installs it): a `unet_config` model with every SD block type
(CrossAttnDownBlock2D, DownBlock2D, the cross-attention mid block, UpBlock2D, CrossAttnUpBlock2D) at
unusual widths exports wholly GPU-clean for every ladder row (fp16, and int8 for the all-optimizations
row), runs wholly on the GPU engine through `harness run`, and agrees with the PyTorch reference; a
graph the GPU does not take wholly fails its row, or runs split and is marked partial when allowed;
an engine crash is a failed row with its reason."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.models.configs import TINY_UNET
from harness.protocol import CheckPolicy, JobSpec, MeasurePolicy, ModelRef, RuntimeOptions
from harness.runtimes.litert_gpu import swiftshader_icd
from harness.store import Store
from harness.variants import ladder_flags

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(swiftshader_icd() is None,
                                reason="SwiftShader (Debian's chromium) is not installed; .ci/run installs it")

# The SD UNet's block types at one level each, the cross-attention mid block, widths SD never uses.
CONFIG = {**TINY_UNET, "block_out_channels": [40, 48], "norm_num_groups": 8, "attention_head_dim": 2,
          "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1, "sample_size": 16,
          "mid_block_type": "UNetMidBlock2DCrossAttn", "cross_attention_dim": 24}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A unet_config model, a cache and a store for the module; the ladder run once through the CLI."""
    tmp = tmp_path_factory.mktemp("litert-gpu")
    config = tmp / "sd_blocks.json"
    config.write_text(json.dumps(CONFIG))
    suite = tmp / "gpu.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "gpu", "model": {"unet_config": str(config)}, "variants": "ladder",
        "options": {"runtime": "litert-gpu", "dtype": "fp16"},
        "measure": {"warmup_runs": 1, "iterations": 3, "max_seconds": 30},
        "check": {"rel_tolerance": 0.05}, "devices": ["host"]}))
    env = {"HARNESS_CACHE": str(tmp / "cache")}
    store = f"sqlite:///{tmp}/gpu.db"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--store", store,
                           "--report", str(tmp / "report.html")],
                          capture_output=True, text=True, cwd=tmp, env={**_env(), **env}, timeout=1800)
    return {"tmp": tmp, "config": config, "env": env, "store": store, "proc": proc}


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_every_ladder_row_runs_wholly_on_the_gpu_engine_and_agrees(work):
    proc = work["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = Store(work["store"])
    run = db.load_run(db.resolve_run())
    assert [j.variant for j in run.jobs] == ["baseline", "+opt_softmax", "+sgn_gelu", "+flash_attention", "+winograd"]
    for job in run.jobs:
        res = job.result
        assert job.status == "ok", res.error
        gpu = res.extra["gpu"]
        assert gpu["fully_accelerated"] is True and gpu["software"] is True and gpu["driver"]
        assert "SwiftShader" in gpu["adapter_label"] and gpu["rejected"] == []
        assert res.extra["unit"] == "gpu (CPU emulation)"
        assert res.check.passed and res.check.rel_error < 0.05
        assert len(res.samples_ms) >= 3 and res.timing_method == "perf_counter_compiled_model_run"
        assert res.memory.tensor_bytes_planned > 0 and res.memory.weight_bytes > 0
        assert res.memory.gpu_bytes is None and "emulates the GPU in host memory" in gpu["memory_method"]
        assert res.extra["composites"] == {}
    na = {j.variant: j.result.extra["na_flags"] for j in run.jobs}
    assert na["+winograd"] == ["conv3x3"]
    # the flash row's tiled attention: far less planned tensor memory than the baseline's score matrices
    planned = {j.variant: j.result.memory.tensor_bytes_planned for j in run.jobs}
    assert planned["+flash_attention"] < planned["+opt_softmax"]
    # the terminal report names the unit and says what a CPU emulation's figures are
    assert "CPU emulation" in proc.stdout + proc.stderr
    html = (work["tmp"] / "report.html").read_text()
    assert "gpu (CPU emulation)" in html and "its latency and memory are not a GPU" in html


def test_every_exported_artifact_says_fully_accelerated(work):
    arts = sorted((work["tmp"] / "cache" / "artifacts").glob("*/*.tflite"))
    assert len(arts) == 4  # + Winograd shares the + FlashAttention artifact
    for art in arts:
        meta = json.loads((art.parent / "meta.json").read_text())
        assert meta["gpu"]["fully_accelerated"] is True and meta["gpu"]["checked"] is True
        assert meta["composites"] == {}
        proc = subprocess.run([sys.executable, "-m", "harness", "inspect", str(art)], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "GPU: fully accelerated (SwiftShader Device" in proc.stdout, proc.stdout


def _spec(config: Path, variant: str, dtype: str = "fp16", artifact: str | None = None, extra=None,
          tolerance: float = 0.05) -> JobSpec:
    return JobSpec(job_id="j", run_id="r", device="host", model=ModelRef(unet_config=str(config)), variant=variant,
                   flags=ladder_flags(variant).to_dict(),
                   options=RuntimeOptions(runtime="litert-gpu", dtype=dtype, extra=extra or {}),
                   measure=MeasurePolicy(warmup_runs=0, iterations=2), check=CheckPolicy(rel_tolerance=tolerance),
                   artifact=artifact)


def _run(spec: JobSpec) -> dict:
    from harness.workloads.unet_iteration import run

    result: dict = {"extra": {}}
    run(spec, result)
    return result


def test_int8_weights_run_wholly_on_the_gpu(work, monkeypatch):
    """int8 artifacts write Linear as 1x1 convolutions: ML Drift's int8 FULLY_CONNECTED fails to build."""
    monkeypatch.setenv("HARNESS_CACHE", work["env"]["HARNESS_CACHE"])
    res = _run(_spec(work["config"], "+flash_attention", dtype="int8", tolerance=0.1))
    assert "error" not in res, res.get("error")
    assert res["extra"]["gpu"]["fully_accelerated"] and res["check"].passed
    assert res["extra"]["weight_bytes_by_dtype"].get("int8", 0) > res["memory"].weight_bytes / 2


@pytest.fixture(scope="module")
def unclean(work):
    """The baseline of the same model exported as before the GPU-clean forms: diffusers' expand of the
    scalar timestep stays, a BROADCAST_TO the GPU engine refuses."""
    import litert_torch
    import torch

    from harness.export.rewrite import UNetForExport, example_inputs, export_model
    from harness.models.loaders import config_model_config
    from harness.variants import Flags

    cfg = config_model_config(ModelRef(unet_config=str(work["config"])))
    model = export_model(cfg, None, 0, Flags(), "tflite")

    class Expanding(UNetForExport):
        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]

    path = work["tmp"] / "unclean.tflite"
    with torch.no_grad():
        litert_torch.convert(Expanding(model.unet).eval(), example_inputs(cfg, 0)).export(str(path))
    return path


def test_a_graph_the_gpu_refuses_fails_its_row_naming_the_op_and_module(work, unclean):
    res = _run(_spec(work["config"], "baseline", dtype="fp32", artifact=str(unclean), tolerance=1e-3))
    err = res["error"]
    assert err["kind"] == "delegation", err
    assert "BROADCAST_TO x1: Operation is not supported. - node" in err["message"]
    assert "UNet2DConditionModel(unet)" in err["message"] and "allow_cpu_fallback: true" in err["message"]
    assert res["extra"]["gpu"]["fully_accelerated"] is False and "samples_ms" not in res


def test_allowed_cpu_fallback_runs_split_and_is_marked_partial(work, unclean):
    res = _run(_spec(work["config"], "baseline", dtype="fp32", artifact=str(unclean), tolerance=1e-3,
                     extra={"allow_cpu_fallback": True}))
    assert "error" not in res, res.get("error")
    gpu = res["extra"]["gpu"]
    assert gpu["fully_accelerated"] is False and gpu["ops_on_cpu"] >= 1 and gpu["ops_on_gpu"] > gpu["ops_on_cpu"]
    assert "(partial: " in res["extra"]["unit"] and f"{gpu['ops_on_cpu']} on the CPU" in res["extra"]["unit"]
    assert res["check"].passed and len(res["samples_ms"]) == 2


def test_an_engine_crash_is_a_failed_row_with_its_reason(work, tmp_path):
    """A .tflite with an odml composite (what litert-torch emits with its composites on): the engine
    segfaults while compiling it, in the probe's process; the row fails saying why."""
    import litert_torch
    import torch
    from litert_torch.hlfb import StableHLOCompositeBuilder

    class Composite(torch.nn.Module):
        def forward(self, x):
            b = StableHLOCompositeBuilder("odml.rms_norm", {"epsilon": 1e-5})
            x, w = b.mark_inputs(x, torch.ones(x.shape[-1]))
            return b.mark_outputs(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w)

    path = tmp_path / "composite.tflite"
    with torch.no_grad():
        litert_torch.convert(Composite().eval(), (torch.randn(1, 4, 16),)).export(str(path))
    res = _run(_spec(work["config"], "baseline", artifact=str(path)))
    assert res["error"]["kind"] == "crash"
    assert "crashed (signal 11)" in res["error"]["message"]
    assert "crashes on every STABLEHLO_COMPOSITE" in res["error"]["message"]
