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
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without install

from harness.protocol import (  # noqa: E402
    JobResult, JobSpec, MemoryFigures, ReferenceCheck, parse_spec, write_json_atomic,
)


class InputError(ValueError):
    """A job that cannot run as specified (bad weights dir, unknown runtime): not worth a retry."""


def emit(phase: str, done: int, total: int) -> None:
    print(f"@@progress {phase} {done} {total}", flush=True)


def cache_dir() -> Path:
    root = Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness")
    root.mkdir(parents=True, exist_ok=True)
    return root


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


def versions() -> dict[str, str]:
    import diffusers
    import torch

    import harness

    return {"python": platform.python_version(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "harness": harness.__version__}


# ------------------------------------------------------------------------------------ timing

class Timer:
    """Times one call: wall clock on the CPU, CUDA events on a GPU (what the GPU executed)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.method = "cuda_events" if self.cuda else "perf_counter"

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.cuda:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end), out
        t0 = time.perf_counter_ns()
        out = fn()
        return (time.perf_counter_ns() - t0) / 1e6, out


def measure_loop(fn: Callable[[], Any], timer: Timer, spec: JobSpec) -> tuple[list[float], list[float]]:
    """Warmup runs, then timed runs until `iterations` and `min_seconds` are both met (or max_seconds)."""
    m = spec.measure
    warmup = []
    for i in range(m.warmup_runs):
        emit("warmup", i, m.warmup_runs)
        warmup.append(timer(fn)[0])
    samples: list[float] = []
    total_s = 0.0
    while (len(samples) < m.iterations or total_s < m.min_seconds) and (total_s < m.max_seconds or not samples):
        emit("timed", len(samples), m.iterations)
        ms = timer(fn)[0]
        samples.append(ms)
        total_s += ms / 1000
    emit("timed", len(samples), len(samples))
    return warmup, samples


# ------------------------------------------------------------------------------------ op categories

def op_category(module: Any) -> str | None:
    """The paper's op category of a module, or None for 'other' (not timed separately)."""
    from diffusers.models.attention_processor import Attention

    if isinstance(module, Attention):
        return "attention"
    name = type(module).__name__.lower()
    if "groupnorm" in name:
        return "groupnorm"
    if "geglu" in name or "gelu" in name:
        return "gelu"
    if getattr(module, "kernel_size", None) in ((3, 3), 3):
        return "conv3x3"
    return None


def op_times(model: Any, fn: Callable[[], Any], device: str) -> dict[str, float]:
    """One extra iteration with forward hooks timing each category's modules (ms per iteration).
    'other' is the rest of the iteration. Hooks add a little overhead; these are for breakdowns."""
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    totals: dict[str, float] = {}
    starts: dict[int, int] = {}
    handles = []

    def pre(mod, _args):
        sync()
        starts[id(mod)] = time.perf_counter_ns()

    def post(cat):
        def hook(mod, _args, _out):
            sync()
            totals[cat] = totals.get(cat, 0.0) + (time.perf_counter_ns() - starts.pop(id(mod))) / 1e6
        return hook

    for mod in model.modules():
        cat = op_category(mod)
        if cat:
            handles.append(mod.register_forward_pre_hook(pre))
            handles.append(mod.register_forward_hook(post(cat)))
    try:
        sync()
        t0 = time.perf_counter_ns()
        fn()
        sync()
        total = (time.perf_counter_ns() - t0) / 1e6
    finally:
        for h in handles:
            h.remove()
    totals["other"] = max(0.0, total - sum(totals.values()))
    return {k: round(v, 4) for k, v in totals.items()}


# ------------------------------------------------------------------------------------ workloads

def pick_device(spec: JobSpec) -> str:
    import torch

    acc = spec.options.accelerator
    if acc in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise InputError("accelerator=cuda was asked for but this host has no CUDA device; "
                             "use --set accelerator=cpu (or auto)")
        return "cuda"
    if acc == "auto" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def reference_output(spec: JobSpec, device: str, inputs) -> "Any":
    """The plain PyTorch (unpatched diffusers) output on these inputs, cached on disk by its key."""
    import hashlib
    import json

    import torch

    from harness.models.unet import build_unet

    weights_id = None
    if spec.model.weights:
        w = Path(spec.model.weights).expanduser()
        weights_id = [str(w.resolve()), max((p.stat().st_mtime for p in w.rglob("*") if p.is_file()), default=0)]
    key = hashlib.sha256(json.dumps([spec.model.name, weights_id, spec.model.seed, spec.options.dtype,
                                     device, torch.__version__]).encode()).hexdigest()[:24]
    path = cache_dir() / "reference" / f"unet-{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location=device)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt
            path.unlink(missing_ok=True)
    ref = build_unet(spec.model.name, spec.model.weights, spec.model.seed, spec.options.dtype).to(device)
    with torch.no_grad():
        out = ref(*inputs[:2], encoder_hidden_states=inputs[2], return_dict=False)[0]
    del ref
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(out.cpu(), tmp)
    os.replace(tmp, path)
    return out


def run_unet_iteration(spec: JobSpec, result: dict[str, Any]) -> None:
    import torch

    from harness import memory
    from harness.models.patch import apply_flags
    from harness.models.unet import WeightsError, build_unet, example_inputs
    from harness.variants import Flags

    if spec.options.runtime != "torch":
        raise InputError(f"runtime {spec.options.runtime!r} is not available on the host agent yet; "
                         "known runtimes: torch")
    if spec.options.threads > 0:
        torch.set_num_threads(spec.options.threads)
    device = pick_device(spec)
    try:
        flags = Flags.from_dict(spec.flags)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    torch.set_grad_enabled(False)
    inputs = example_inputs(spec.model.name, spec.model.seed, spec.options.dtype, device)

    reference = None
    if spec.check.enabled:
        emit("reference", 0, 1)
        try:
            reference = reference_output(spec, device, inputs)
        except WeightsError as exc:
            raise InputError(str(exc)) from exc

    emit("build", 0, 1)
    t0 = time.perf_counter_ns()
    try:
        unet = build_unet(spec.model.name, spec.model.weights, spec.model.seed, spec.options.dtype)
    except WeightsError as exc:
        raise InputError(str(exc)) from exc
    replaced = apply_flags(unet, flags)
    unet = unet.to(device)
    if device == "cuda":
        unet = unet.to(memory_format=torch.channels_last)
        torch.cuda.synchronize()
    result["init_ms"] = (time.perf_counter_ns() - t0) / 1e6
    result["extra"]["replaced"] = replaced
    result["extra"]["accelerator"] = device
    if device == "cuda":
        result["extra"]["gpu_name"] = torch.cuda.get_device_name(0)
    else:
        result["extra"]["cpu_threads"] = torch.get_num_threads()

    def step():
        return unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2], return_dict=False)[0]

    timer = Timer(device)
    result["timing_method"] = timer.method
    emit("first_run", 0, 1)
    first_ms, out = timer(step)
    result["first_run_ms"] = first_ms
    if reference is not None:
        ref = reference.to(out.device, torch.float32)
        max_abs = (out.float() - ref).abs().max().item()
        rel = max_abs / max(ref.abs().max().item(), 1e-12)
        check = ReferenceCheck(max_abs_error=max_abs, rel_error=rel, rel_tolerance=spec.check.rel_tolerance,
                               passed=bool(rel <= spec.check.rel_tolerance))
        result["check"] = check
        if not check.passed:
            result["error"] = {"kind": "reference_mismatch",
                               "message": f"variant {spec.variant!r} disagrees with the PyTorch reference: "
                                          f"max abs error {max_abs:.3g}, relative {rel:.3g} > tolerance "
                                          f"{spec.check.rel_tolerance:g}; the kernel is wrong, or raise "
                                          "check.rel_tolerance for a lower-precision dtype"}
            return
        del reference, ref
    del out

    warmup, samples = measure_loop(step, timer, spec)
    result["warmup_ms"], result["samples_ms"] = warmup, samples

    emit("memory", 0, 3)
    mem = MemoryFigures(weight_bytes=memory.weight_bytes(unet))
    mem.tensor_bytes_measured, mem.tensor_measure_method = memory.measure_peak_tensor_bytes(
        step, device=device)
    emit("memory", 1, 3)
    mem.tensor_bytes_planned = memory.planned_tensor_bytes(step)
    emit("memory", 2, 3)
    result["op_times_ms"] = op_times(unet, step, device)
    emit("memory", 3, 3)
    if device == "cuda":
        mem.gpu_bytes = torch.cuda.max_memory_allocated()
    result["memory"] = mem


WORKLOADS: dict[str, Callable[[JobSpec, dict[str, Any]], None]] = {
    "unet_iteration": run_unet_iteration,
}


def run(spec: JobSpec) -> JobResult:
    result: dict[str, Any] = {"job_id": spec.job_id, "status": "ok", "started_at": time.time(), "extra": {}}
    result["device_state_before"] = host_state()
    try:
        if spec.workload not in WORKLOADS:
            raise InputError(f"workload {spec.workload!r} is not available on the host agent; "
                             f"known workloads: {', '.join(WORKLOADS)}")
        WORKLOADS[spec.workload](spec, result)
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
    write_json_atomic(result_path, run(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
