"""Runtime `litert-cpu` of the e2e workload: the 20-step loop with the three .tflite components run by
ai-edge-litert, the scheduler and guidance in torch.

One module-scoped artifact cache: the first job converts the tiny config's text encoder, UNet and
VAE decoder (~1-2 min on a loaded 2-core machine); every later job and the CLI run find them there.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.protocol import CheckPolicy, JobSpec, MeasurePolicy, ModelRef, RuntimeOptions
from harness.variants import ladder_flags
from harness.workloads.common import InputError

REPO = Path(__file__).resolve().parents[1]
VARIANT = "+winograd"  # every flag (GPU-clean forms in the UNet and decoder artifacts); conv3x3 is n/a on .tflite
STEPS = 3
NAMES = ("text_encoder", "unet", "decoder")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """HARNESS_CACHE at one fresh cache for the whole module."""
    path = tmp_path_factory.mktemp("litert-e2e-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(path))
        yield path


def _spec(out: Path, job_id: str = "j", *, dtype: str = "fp32", tolerance: float = 1e-3,
          artifact: str | None = None, runtime: str = "litert-cpu", **workload_args) -> JobSpec:
    return JobSpec(job_id=job_id, run_id="r", device="host", workload="e2e", model=ModelRef(name="tiny"),
                   variant=VARIANT, flags=ladder_flags(VARIANT).to_dict(),
                   options=RuntimeOptions(runtime=runtime, dtype=dtype, threads=1),
                   measure=MeasurePolicy(warmup_runs=0, iterations=2), check=CheckPolicy(rel_tolerance=tolerance),
                   artifact=artifact, workload_args={"steps": STEPS, "output_dir": str(out), **workload_args})


def _run(spec: JobSpec) -> dict:
    from harness.workloads.e2e import run

    result: dict = {"extra": {}}
    run(spec, result)  # the workload entry point the host agent calls, dispatching on the runtime
    return result


@pytest.fixture(scope="module")
def first_job(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("first")
    return out, _run(_spec(out, "first"))


def test_first_job_builds_the_artifacts_and_times_the_loop(first_job):
    from PIL import Image

    out, res = first_job
    assert "error" not in res, res.get("error")
    comp = res["components_ms"]
    assert comp["method"] == "measured" and comp["steps"] == STEPS and comp["unet_evals"] == STEPS
    assert len(res["samples_ms"]) == 2 and comp["total_ms"] == res["samples_ms"] and res["warmup_ms"] == []
    for key in ("text_encoder_ms", "decoder_ms", "prepare_ms", "postprocess_ms", "gap_ms"):
        assert len(comp[key]) == 2, key
    for i in range(2):
        assert len(comp["unet_ms"][i]) == len(comp["scheduler_ms"][i]) == STEPS
        parts = (comp["text_encoder_ms"][i] + sum(comp["unet_ms"][i]) + sum(comp["scheduler_ms"][i])
                 + comp["decoder_ms"][i] + comp["prepare_ms"][i] + comp["postprocess_ms"][i])
        assert parts + comp["gap_ms"][i] == pytest.approx(comp["total_ms"][i])
        assert 0 <= comp["gap_ms"][i] < 1.0 + 0.01 * comp["total_ms"][i], comp
        assert min(comp["unet_ms"][i]) > 0 and comp["text_encoder_ms"][i] > 0 and comp["decoder_ms"][i] > 0
    assert res["execution"]["timing_method"] == "perf_counter" and res["first_run_ms"] > 0 and res["init_ms"] > 0

    extra, ex = res["extra"], res["execution"]
    assert ex["runtime"] == "litert-cpu" and ex["na_flags"] == ["conv3x3"] and ex["accelerator"] == "cpu"
    assert extra["cpu_threads"] == 1 and extra["torch_threads"] == 1
    arts = extra["artifacts"]
    assert [arts[n]["component"] for n in NAMES] == ["text_encoder", "unet", "vae_decoder"]
    for name in NAMES:
        art = arts[name]
        assert art["cached"] is False and art["source"] == "ensure_artifact", art
        assert Path(art["path"]).is_file() and Path(art["path"]).suffix == ".tflite"
        assert art["reference"]["rel_error"] < 1e-3  # the export's own check (fp32 weights)
        assert extra["check_components"][name]["rel_error"] < 1e-3  # the job's check on the first step's inputs
    assert len({arts[n]["sha256"] for n in NAMES}) == 3
    assert res["check"].passed and res["check"].rel_error < 1e-3

    # Weights: the three artifacts' fp32 weights, each stored once.
    from harness.models.pipeline import build_text_encoder, build_vae_decoder, count_parameters
    from harness.models.unet import build_unet

    params = {"text_encoder": count_parameters(build_text_encoder("tiny")), "unet": count_parameters(build_unet("tiny")),
              "decoder": count_parameters(build_vae_decoder("tiny"))}
    mem = res["memory"]
    assert mem.weight_bytes == sum(extra["weight_bytes"].values())
    for name in NAMES:
        assert abs(extra["weight_bytes"][name] - 4 * params[name]) / (4 * params[name]) < 0.02, name
    assert mem.tensor_bytes_planned == sum(extra["planned_tensor_bytes"].values()) > 0
    assert mem.peak_rss_bytes > mem.weight_bytes

    image = Path(extra["image_path"])
    assert image == out / "image.png"
    with Image.open(image) as im:
        assert im.size == (128, 128) and im.mode == "RGB"


def test_litert_loop_makes_the_torch_loops_image(first_job):
    """The same loop on the same seed: the fp32 .tflite components give the torch pipeline's picture."""
    import torch
    from PIL import Image

    from harness.models.pipeline import build_pipeline

    out, res = first_job
    torch.manual_seed(0)
    pipe = build_pipeline("tiny", seed=0)
    extra = res["extra"]
    rgb, times = pipe.generate(extra["prompt"], STEPS, extra["guidance_scale"], extra["seed"], 128, 128)
    with Image.open(extra["image_path"]) as im:
        litert = np.asarray(im)
    assert rgb.std() > 0
    assert np.abs(litert.astype(int) - rgb.astype(int)).max() <= 2


def test_second_job_finds_the_artifacts_in_the_cache(first_job, tmp_path):
    _, first = first_job
    res = _run(_spec(tmp_path, "second"))
    assert "error" not in res, res.get("error")
    for name in NAMES:
        art = res["extra"]["artifacts"][name]
        assert art["cached"] is True and art["path"] == first["extra"]["artifacts"][name]["path"]
        assert "rebuilt_because" not in art
    assert len(res["components_ms"]["unet_ms"][0]) == STEPS
    assert res["extra"]["artifact_ms"] < 60_000  # lookups and hashes, no conversion


def test_the_loop_on_the_gpu_engine(first_job, tmp_path):
    """runtime litert-gpu: the same three files, each probed and compiled on LiteRT's GPU accelerator
    (SwiftShader here), checked against PyTorch on the first step's inputs, then the loop timed."""
    from harness.runtimes.litert_gpu import swiftshader_icd

    if swiftshader_icd() is None:
        pytest.skip("SwiftShader (Debian's chromium) is not installed; .ci/run installs it")
    res = _run(_spec(tmp_path, "gpu", runtime="litert-gpu"))
    assert "error" not in res, res.get("error")
    extra, ex = res["extra"], res["execution"]
    assert ex["runtime"] == "litert-gpu" and ex["accelerator"] == "gpu" and ex["unit_used"] == "gpu (CPU emulation)"
    assert ex["delegation"] == {"state": "full", "delegated_nodes": None, "total_nodes": None,
                                "evidence": "is_fully_accelerated()"}
    assert res["stand_in"] == ["SwiftShader: GPU emulated on the CPU"]  # labelled a stand-in (harness.standin)
    assert set(extra["gpu_components"]) == set(NAMES)
    assert all(g["fully_accelerated"] and g["software"] for g in extra["gpu_components"].values())
    assert extra["gpu"] == extra["gpu_components"]["unet"] and "memory_method" in extra["gpu"]
    assert res["check"].passed and max(c["rel_error"] for c in extra["check_components"].values()) < 1e-3
    assert len(res["components_ms"]["unet_ms"][0]) == STEPS and min(res["components_ms"]["unet_ms"][0]) > 0
    assert all(extra["artifacts"][n]["cached"] for n in NAMES)  # the CPU job's files, nothing converted
    assert Path(extra["image_path"]).is_file()


def test_reference_mismatch_names_the_component(first_job, tmp_path):
    res = _run(_spec(tmp_path, "strict", tolerance=1e-12))
    err = res["error"]
    checks = res["extra"]["check_components"]
    worst = max(checks, key=lambda n: checks[n]["rel_error"])
    assert err["kind"] == "reference_mismatch"
    assert f"the {worst} artifact" in err["message"] and "'+winograd'" in err["message"]
    assert not res["check"].passed and "samples_ms" not in res and "components_ms" not in res


def test_bad_jobs_fail_clearly(first_job, tmp_path):
    with pytest.raises(InputError, match="fp16, fp32, int8 weights, not 'bf16'"):
        _run(_spec(tmp_path, dtype="bf16"))
    with pytest.raises(InputError, match="fixed-shape .tflite artifacts built for 128x128"):
        _run(_spec(tmp_path, height=64))
    missing = Path(first_job[1]["extra"]["artifacts"]["unet"]["path"]).with_name("missing.tflite")
    with pytest.raises(InputError, match="missing.tflite' is not a file"):
        _run(_spec(tmp_path, artifact=str(missing)))


def test_cli_runs_e2e_smoke_on_litert_cpu(first_job, cache, tmp_path):
    """`harness run suites/e2e_smoke.yaml --set runtime=litert-cpu` (one row, one image): the controller
    finds the three artifacts in the cache, the agent runs the 20-step loop on them, the e2e report
    shows the row as litert-cpu."""
    from harness.report.e2e import e2e_table
    from harness.report.render import render
    from harness.store import Store

    url = f"sqlite:///{tmp_path / 'x.db'}"
    cmd = [sys.executable, "-m", "harness", "run", str(REPO / "suites" / "e2e_smoke.yaml"), "--store", url,
           "--cache", str(cache), "--set", "runtime=litert-cpu", "--set", f"variants=[{VARIANT}]",
           "--set", "iterations=1", "--set", "warmup_runs=0", "--set", "threads=1", "--no-report"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for what in ("text_encoder tflite", "tflite", "vae_decoder tflite"):
        assert f"{VARIANT}: {what} artifact cached" in proc.stderr
    run = Store(url).load_run(proc.stdout.strip().splitlines()[-1])
    (job,) = run.jobs
    res = job.result
    assert res.status == "ok", res.error
    comp = res.components_ms
    assert comp["steps"] == comp["unet_evals"] == 20 and len(comp["unet_ms"]) == 1 and len(comp["unet_ms"][0]) == 20
    assert comp["total_ms"] == res.samples_ms and 0 <= comp["gap_ms"][0] < 1.0 + 0.01 * comp["total_ms"][0]
    assert res.extra["artifacts"]["unet"]["source"] == "job"  # the controller's file
    assert all(res.extra["artifacts"][n]["cached"] for n in NAMES)
    assert res.memory.peak_rss_bytes > 0 and Path(res.extra["image_path"]).is_file()
    assert Path(res.extra["image_path"]).parent.parent.parent == tmp_path / "results" / "runs"

    df = e2e_table(run)
    assert list(df["runtime"]) == ["litert-cpu"] and list(df["method"]) == ["measured"]
    assert df["peak_kind"].iloc[0] == "RSS" and df["total_s"].iloc[0] == pytest.approx(res.samples_ms[0] / 1000)
    md = render(run, "md")
    assert "## End-to-end generation" in md and "litert-cpu, fp32, cpu, dpmsolver++" in md


def test_corrupted_component_artifact_is_rebuilt(first_job, tmp_path):
    path = Path(first_job[1]["extra"]["artifacts"]["text_encoder"]["path"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    res = _run(_spec(tmp_path, "rebuilt"))
    assert "error" not in res, res.get("error")
    arts = res["extra"]["artifacts"]
    assert arts["text_encoder"]["cached"] is False and "corrupted" in arts["text_encoder"]["rebuilt_because"]
    assert arts["text_encoder"]["sha256"] == first_job[1]["extra"]["artifacts"]["text_encoder"]["sha256"]
    assert arts["unet"]["cached"] and arts["decoder"]["cached"]
    assert res["check"].passed
