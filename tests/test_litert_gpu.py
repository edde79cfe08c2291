"""Runtimes `litert-gpu` and `litert-cpu` on the host and GPU-clean export, through LiteRT's GPU
accelerator on SwiftShader (Debian's chromium; .ci/run installs it): a `unet_config` model with every
SD block type (CrossAttnDownBlock2D, DownBlock2D, the cross-attention mid block, UpBlock2D,
CrossAttnUpBlock2D) at unusual widths exports wholly GPU-clean for every ladder row, runs wholly on the
GPU engine through `harness run` and agrees with the PyTorch reference; the same artifacts run on the
CPU engine; a graph the GPU does not take wholly fails its row, or runs split and is marked partial
when allowed; an engine crash is a failed row with its reason. (fp16 and int8 artifacts are checked on
the engine by the export tests: every export compiles its .tflite on it.)"""
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
          "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "layers_per_block": 1, "sample_size": 8,
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
        "options": {"runtime": "litert-gpu", "dtype": "fp32"},
        "measure": {"warmup_runs": 0, "iterations": 2, "max_seconds": 30},
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
        assert res.execution.unit_used == "gpu (CPU emulation)" and res.execution.delegation.state == "full"
        assert res.stand_in == ["SwiftShader: GPU emulated on the CPU"]  # a stand-in for a GPU (harness.standin)
        assert res.check.passed and res.check.rel_error < 0.05
        assert len(res.samples_ms) == 2 and res.timing_method == "perf_counter_compiled_model_run"
        assert res.memory.tensor_bytes_planned > 0 and res.memory.weight_bytes > 0
        assert res.memory.gpu_bytes is None and "emulates the GPU in host memory" in gpu["memory_method"]
        assert res.extra["composites"] == {}
    na = {j.variant: j.result.execution.na_flags for j in run.jobs}
    assert na["+winograd"] == ["conv3x3"]
    # the flash row's tiled attention: far less planned tensor memory than the baseline's score matrices
    planned = {j.variant: j.result.memory.tensor_bytes_planned for j in run.jobs}
    assert planned["+flash_attention"] < planned["+opt_softmax"]
    # the terminal report names the unit and says what a CPU emulation's figures are
    assert "CPU emulation" in proc.stdout + proc.stderr
    html = (work["tmp"] / "report.html").read_text()
    assert "gpu (CPU emulation)" in html and "its latency and memory are not a GPU" in html
    assert "[stand-in: SwiftShader: GPU emulated on the CPU]" in html  # the table's title


def test_every_exported_artifact_says_fully_accelerated(work):
    arts = sorted(a for a in (work["tmp"] / "cache" / "artifacts").glob("*/*.tflite")
                  if json.loads((a.parent / "meta.json").read_text())["model"] == "config:sd_blocks")
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
          tolerance: float = 0.05, model: ModelRef | None = None) -> JobSpec:
    return JobSpec(job_id="j", run_id="r", device="host", model=model or ModelRef(unet_config=str(config)),
                   variant=variant,
                   flags=ladder_flags(variant).to_dict(),
                   options=RuntimeOptions(runtime="litert-gpu", dtype=dtype, extra=extra or {}),
                   measure=MeasurePolicy(warmup_runs=0, iterations=2), check=CheckPolicy(rel_tolerance=tolerance),
                   artifact=artifact)


def _run(spec: JobSpec) -> dict:
    from harness.workloads.unet_iteration import run

    result: dict = {"extra": {}}
    run(spec, result)
    return result


def test_litert_cpu_runs_the_same_artifacts_through_the_cli(work):
    """`harness run ... --set runtime=litert-cpu`: the controller finds the artifact in the cache, the job
    runs it on the CPU interpreter, and says that conv3x3 is n/a on .tflite."""
    from harness.models.loaders import config_model_config
    from harness.models.unet import build_unet, count_parameters

    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(work["tmp"] / "gpu.yaml"), "--store",
                           work["store"], "--set", "runtime=litert-cpu", "--set", "variants=[+winograd]", "--no-report"],
                          capture_output=True, text=True, cwd=work["tmp"], env={**_env(), **work["env"]}, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "+winograd: tflite artifact cached" in proc.stderr and "n/a: conv3x3" in proc.stderr
    run = Store(work["store"]).load_run(proc.stdout.strip().splitlines()[-1])
    (job,) = run.jobs
    res = job.result
    assert res.status == "ok" and res.timing_method == "perf_counter" and len(res.samples_ms) == 2
    assert res.check.passed and res.check.rel_error < 1e-3  # fp32 weights on the CPU
    assert res.execution.na_flags == ["conv3x3"] and res.execution.runtime == "litert-cpu" and res.extra["composites"] == {}
    assert res.extra["artifact"]["source"] == "job" and str(work["tmp"] / "cache") in res.extra["artifact"]["path"]
    params = count_parameters(build_unet(config_model_config(ModelRef(unet_config=str(work["config"])))))
    assert abs(res.memory.weight_bytes - 4 * params) / (4 * params) < 0.02  # fp32 weights, each stored once
    assert res.memory.tensor_measure_method == "rss_anon_delta_litert_allocate_first_invoke"
    assert res.memory.tensor_bytes_measured is not None and res.memory.gpu_bytes is None


@pytest.fixture(scope="module")
def unclean(work):
    """A tiny UNet-shaped factory model whose scalar timestep is expanded (a BROADCAST_TO the GPU engine
    refuses; tests/fakes/broadcast_unet.py), exported with the GPU check off (it would refuse it)."""
    import os

    from harness.export import ensure_artifact
    from harness.variants import Flags

    model = ModelRef(factory="tests.fakes.broadcast_unet:build")
    old = os.environ.get("HARNESS_EXPORT_GPU_CHECK")
    os.environ["HARNESS_EXPORT_GPU_CHECK"] = "off"
    try:
        art = ensure_artifact(model, Flags(), "tflite", "fp32", work["tmp"] / "cache")
    finally:
        if old is None:
            os.environ.pop("HARNESS_EXPORT_GPU_CHECK", None)
        else:
            os.environ["HARNESS_EXPORT_GPU_CHECK"] = old
    assert art.meta["gpu"] == {"checked": False, "why": "HARNESS_EXPORT_GPU_CHECK=off"}
    return model, art.path


def test_a_graph_the_gpu_refuses_fails_its_row_naming_the_op_and_module(work, unclean):
    model, path = unclean
    res = _run(_spec(work["config"], "baseline", dtype="fp32", artifact=str(path), tolerance=1e-3, model=model))
    err = res["error"]
    assert err["kind"] == "delegation", err
    assert "BROADCAST_TO x1: Operation is not supported. - node" in err["message"]
    assert "BroadcastUNet(unet)" in err["message"] and "allow_cpu_fallback: true" in err["message"]
    assert res["extra"]["gpu"]["fully_accelerated"] is False and "samples_ms" not in res


def test_allowed_cpu_fallback_runs_split_and_is_marked_partial(work, unclean):
    model, path = unclean
    res = _run(_spec(work["config"], "baseline", dtype="fp32", artifact=str(path), tolerance=1e-3,
                     extra={"allow_cpu_fallback": True}, model=model))
    assert "error" not in res, res.get("error")
    gpu = res["extra"]["gpu"]
    assert gpu["fully_accelerated"] is False and gpu["ops_on_cpu"] >= 1 and gpu["ops_on_gpu"] > gpu["ops_on_cpu"]
    ex = res["execution"]
    assert "(partial: " in ex["unit_used"] and f"{gpu['ops_on_cpu']} on the CPU" in ex["unit_used"]
    assert ex["delegation"]["state"] == "partial" and ex["delegation"]["delegated_nodes"] == gpu["ops_on_gpu"]
    assert ex["delegation"]["total_nodes"] == gpu["ops_on_gpu"] + gpu["ops_on_cpu"]
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
