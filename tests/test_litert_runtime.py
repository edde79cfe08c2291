"""Runtime `litert-cpu`: the variant's .tflite through ai-edge-litert in the host agent.

The CLI test converts the tiny config (the smoke suite's model) once; the in-process tests use the
small "nano" config of tests/test_export.py and its artifact cache.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.protocol import CheckPolicy, JobSpec, MeasurePolicy, ModelRef, RuntimeOptions
from harness.variants import ladder_flags

REPO = Path(__file__).resolve().parents[1]


def harness(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _stored(url: str, run_id: str):
    from harness.store import Store

    return Store(url).load_run(run_id)


@pytest.mark.slow
def test_run_smoke_suite_on_litert_cpu(tmp_path):
    """`harness run suites/smoke.yaml --set runtime=litert-cpu`: the artifact is exported through the
    cache before the job, the job runs it, and the result says that conv3x3 is n/a on .tflite. (Slow: a
    tiny-UNet conversion; tests/test_litert_gpu.py runs the same command path on its own model.)"""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    proc = harness("run", "suites/smoke.yaml", "--set", "runtime=litert-cpu", "--set", "variants=[+winograd]",
                   "--store", url, "--cache", str(tmp_path / "cache"), "--no-report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "+winograd: tflite artifact built" in proc.stderr and "n/a: conv3x3" in proc.stderr
    run = _stored(url, proc.stdout.strip().splitlines()[-1])
    (job,) = run.jobs
    res = job.result
    assert res.status == "ok" and res.timing_method == "perf_counter"
    assert len(res.samples_ms) == 5 and all(ms > 0 for ms in res.samples_ms)  # smoke: 5 iterations
    assert res.check is not None and res.check.passed and res.check.rel_error < 1e-3  # fp32 weights
    assert res.execution.na_flags == ["conv3x3"] and res.execution.runtime == "litert-cpu"
    assert res.extra["composites"] == {}  # GPU-clean forms: no composites (harness.export.rewrite)
    art = res.extra["artifact"]
    assert art["source"] == "job" and Path(art["path"]).is_file() and str(tmp_path / "cache") in art["path"]
    mem = res.memory
    from harness.models.unet import build_unet, count_parameters

    params = count_parameters(build_unet("tiny"))
    assert abs(mem.weight_bytes - 4 * params) / (4 * params) < 0.02  # fp32 weights, each stored once
    assert 0 < mem.tensor_bytes_planned < res.extra["peak_live_tensor_bytes"] * 2
    assert mem.tensor_measure_method == "rss_anon_delta_litert_allocate_first_invoke"
    assert mem.tensor_bytes_measured is not None


@pytest.mark.slow
def test_run_smoke_ladder_on_litert_cpu(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    proc = harness("run", "suites/smoke.yaml", "--set", "runtime=litert-cpu", "--store", url,
                   "--cache", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _stored(url, proc.stdout.strip().splitlines()[-1])
    by_variant = {j.variant: j.result for j in run.jobs}
    assert all(r.status == "ok" for r in by_variant.values())
    assert [v for v, r in by_variant.items() if r.execution.na_flags] == ["+winograd"]
    assert by_variant["+winograd"].extra["artifact"]["path"] == by_variant["+flash_attention"].extra["artifact"]["path"]
    assert by_variant["baseline"].extra["composites"] == {}


# ------------------------------------------------------------------------------------ in-process

@pytest.fixture()
def nano_env(monkeypatch, tmp_path_factory):
    """The nano config registered, HARNESS_CACHE at the export tests' shared cache."""
    from harness.models.configs import MODELS
    from tests.test_export import NANO

    monkeypatch.setitem(MODELS, "nano", NANO)
    path = tmp_path_factory.getbasetemp() / "export-cache"
    path.mkdir(exist_ok=True)
    monkeypatch.setenv("HARNESS_CACHE", str(path))
    return path


def _spec(variant: str, dtype: str = "fp16", tolerance: float = 5e-2, artifact: str | None = None) -> JobSpec:
    return JobSpec(job_id="j", run_id="r", device="host", model=ModelRef(name="nano"), variant=variant,
                   flags=ladder_flags(variant).to_dict(), options=RuntimeOptions(runtime="litert-cpu", dtype=dtype),
                   measure=MeasurePolicy(warmup_runs=1, iterations=3), check=CheckPolicy(rel_tolerance=tolerance),
                   artifact=artifact)


def test_litert_cpu_runs_the_artifact_and_reports_na(nano_env):
    from harness.workloads.litert import run_litert

    result = {"extra": {}}
    run_litert(_spec("+winograd"), result)
    assert "error" not in result, result.get("error")
    assert len(result["samples_ms"]) == 3 and len(result["warmup_ms"]) == 1 and result["first_run_ms"] > 0
    assert result["execution"]["na_flags"] == ["conv3x3"]
    assert result["extra"]["artifact"]["source"] == "ensure_artifact"
    assert result["check"].passed and 0 < result["check"].rel_error < 5e-2
    mem = result["memory"]
    assert mem.weight_bytes == sum(result["extra"]["weight_bytes_by_dtype"].values())
    assert result["extra"]["weight_bytes_by_dtype"]["float16"] > 0.9 * mem.weight_bytes
    assert mem.tensor_bytes_planned > 0

    # The same file given as the job's artifact (what `harness run` passes to the agent).
    again = {"extra": {}}
    run_litert(_spec("+flash_attention", artifact=result["extra"]["artifact"]["path"]), again)
    assert "error" not in again and again["execution"]["na_flags"] == []
    assert again["extra"]["artifact"]["source"] == "job"
    assert again["memory"].tensor_bytes_planned == mem.tensor_bytes_planned


def test_litert_cpu_reference_mismatch_and_bad_dtype(nano_env):
    from harness.workloads.common import InputError
    from harness.workloads.litert import run_litert

    result = {"extra": {}}
    path = None
    run_litert(_spec("+flash_attention", tolerance=5e-2), result)
    path = result["extra"]["artifact"]["path"]
    strict = {"extra": {}}
    run_litert(_spec("+flash_attention", tolerance=1e-9, artifact=path), strict)
    assert strict["error"]["kind"] == "reference_mismatch" and "'+flash_attention'" in strict["error"]["message"]
    assert not strict["check"].passed and "samples_ms" not in strict
    with pytest.raises(InputError, match="fp16, fp32, int8 weights, not 'bf16'"):
        run_litert(_spec("baseline", dtype="bf16"), {"extra": {}})
    # int8 goes through to the exporter (ensure_artifact(..., dtype="int8")): its answer, not the runtime's.
    int8 = {"extra": {}}
    try:
        run_litert(_spec("baseline", dtype="int8"), int8)
    except InputError as exc:
        assert "int8" in str(exc) and "litert-cpu runs" not in str(exc)
    else:
        assert int8["extra"]["weights_dtype"] == "int8" and int8["check"].rel_tolerance >= 5e-2
    with pytest.raises(InputError, match="is not a file"):
        run_litert(_spec("baseline", artifact=str(Path(path).with_name("missing.tflite"))), {"extra": {}})
