"""Host device agent: reads one JobSpec (job.json), runs it, writes one JobResult (result.json).

Usage: python agent.py JOB_JSON RESULT_JSON

Runs in a fresh process per job (memory per job, a crash contained). Times with a monotonic clock
(time.perf_counter_ns) on the CPU and with CUDA events on a GPU. Prints `@@progress PHASE DONE TOTAL`
lines on stdout for the controller's progress bar; everything else goes to stderr.
"""
from __future__ import annotations

import os
import platform
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

_CHECKOUT = Path(__file__).resolve().parents[2]
if (_CHECKOUT / "harness" / "__init__.py").is_file():  # run from a checkout without install (a wheel: harness is installed)
    sys.path.insert(0, str(_CHECKOUT))

from harness.protocol import JobResult, JobSpec, MemoryFigures, parse_spec, write_json_atomic  # noqa: E402
from harness.workloads import get_workload  # noqa: E402
from harness.workloads.common import InputError  # noqa: E402


def host_state() -> dict[str, Any]:
    import psutil

    state: dict[str, Any] = {"load_avg_1m": os.getloadavg()[0],
                             "mem_available_bytes": psutil.virtual_memory().available}
    freq = psutil.cpu_freq()
    if freq:
        state["cpu_freq_mhz"] = round(freq.current)
    try:
        temps = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        temps = {}
    readings = [t.current for entries in temps.values() for t in entries if t.current]
    if readings:
        state["max_temp_c"] = max(readings)
    return state


# Installed packages whose versions a result records when present (the report's environment section).
LIBRARIES = ("numpy", "ai-edge-litert", "litert-torch", "coremltools", "triton")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import diffusers
    import torch

    import harness

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "diffusers": diffusers.__version__, "harness": harness.__version__,
           "torch_threads": str(torch.get_num_threads())}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
    from harness.allocator import describe

    out["cpu_allocator"] = describe()
    return out


def run(spec: JobSpec) -> JobResult:
    result: dict[str, Any] = {"job_id": spec.job_id, "status": "ok", "started_at": time.time(), "extra": {}}
    result["device_state_before"] = host_state()
    try:
        get_workload(spec.workload)(spec, result)
        if result.get("error"):
            result["status"] = "failed"
    except InputError as exc:
        result.update(status="failed", error={"kind": "input", "message": str(exc)})
    except MemoryError as exc:
        result.update(status="failed", error={"kind": "crash", "message": f"out of memory: {exc}",
                                              "detail": traceback.format_exc()[-4000:]})
    except Exception as exc:  # noqa: BLE001 - every failure becomes a result
        result.update(status="failed", error={"kind": "crash", "message": f"{type(exc).__name__}: {exc}",
                                              "detail": traceback.format_exc()[-4000:]})
    result["device_state_after"] = host_state()
    mem = result.setdefault("memory", MemoryFigures())
    mem.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        result["versions"] = versions()
    except Exception:  # noqa: BLE001
        result["versions"] = {"python": platform.python_version()}
    result["ended_at"] = time.time()
    return JobResult.model_validate(result)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    job_path, result_path = argv
    try:
        spec = parse_spec(Path(job_path).read_text())
    except Exception as exc:  # noqa: BLE001
        print(f"cannot read the job spec {job_path}: {exc}", file=sys.stderr)
        return 2
    os.environ["HARNESS_JOB_DIR"] = str(Path(result_path).resolve().parent)  # where files beside the result go
    write_json_atomic(result_path, run(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
