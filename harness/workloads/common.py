"""What every host workload shares: progress lines, the job's timer and measurement loop,
per-category op times, the accelerator choice and the cache directory."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from harness.protocol import JobSpec


class InputError(ValueError):
    """A job that cannot run as specified (bad weights dir, unknown runtime): not worth a retry."""


def execution(result: dict[str, Any]) -> dict[str, Any]:
    """The result's execution record (harness.protocol.Execution, as a dict the workload fills)."""
    return result.setdefault("execution", {})


def emit(phase: str, done: int, total: int) -> None:
    print(f"@@progress {phase} {done} {total}", flush=True)


def cache_dir() -> Path:
    root = Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness")
    root.mkdir(parents=True, exist_ok=True)
    return root


def random_weights_dir() -> Path:
    """Where built models keep their seeded random weights (harness.models.unet.seeded_unet)."""
    return cache_dir() / "weights"


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


def cuda_graph_replay_ms(fn: Callable[[], Any], iterations: int, warmup: int = 3) -> tuple[list[float], Any]:
    """Capture fn() once in a CUDA graph (after two warm-up calls on a side stream) and time `iterations`
    replays, each between its own pair of CUDA events: what the GPU executes, without the host's
    launch overhead. Returns (samples in ms, the graph's output tensor(s))."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    for i in range(warmup):
        emit("graph_warmup", i, warmup)
        graph.replay()
    torch.cuda.synchronize()
    samples: list[float] = []
    for i in range(iterations):
        emit("graph_timed", i, iterations)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    emit("graph_timed", iterations, iterations)
    out = out.clone() if isinstance(out, torch.Tensor) else out  # outlives the graph's memory pool
    del graph
    return samples, out


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




def record_check(result: dict[str, Any], spec: JobSpec, max_abs: float, rel: float, subject: str,
                 hint: str = "the kernel is wrong, or raise check.rel_tolerance for a lower-precision dtype",
                 finite: bool = True) -> bool:
    """Put the reference check into `result` (and a reference_mismatch error when it fails); the one
    place every workload and runtime judges a variant against its reference."""
    from harness.protocol import ReferenceCheck

    tol = spec.check.rel_tolerance
    check = ReferenceCheck(max_abs_error=max_abs, rel_error=rel, rel_tolerance=tol, passed=bool(finite and rel <= tol))
    result["check"] = check
    if not check.passed:
        result["error"] = {"kind": "reference_mismatch",
                           "message": f"{subject}: max abs error {max_abs:.3g}, relative {rel:.3g} > tolerance "
                                      f"{tol:g}; {hint}"}
    return check.passed
