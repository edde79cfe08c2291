"""Runtimes `litert-cpu` and `litert-gpu` of the unet_iteration workload: the variant's .tflite artifact
(the file a phone gets) run on the host through ai-edge-litert: on the CPU with its Interpreter
(XNNPACK), or on LiteRT's GPU accelerator (ML Drift over WebGPU/Vulkan) with CompiledModel
(`harness.runtimes.litert_gpu`).

The artifact is the job's `artifact` path when the controller exported it (`harness run` does, for
host jobs), else it is built or fetched here through `harness.export.ensure_artifact` (same cache).
Its weight dtype is the job's dtype (fp16: fp16 weights, as phones get by default; fp32).

What it reports:
- samples: wall time (perf_counter) of `interpreter.invoke()` with the inputs already set;
- check: the interpreter's output against the plain PyTorch UNet on the same inputs;
- memory: weight bytes and planned tensor bytes from the artifact's own graph (the same greedy-by-
  size planner as the torch runtime); the measured figure is the growth of the process's anonymous
  resident memory (RssAnon) across allocate_tensors() and the first invoke: the interpreter's arena
  plus what XNNPACK packs (its own copy of the weights) and scratch, so an upper bound on tensor
  memory, named `rss_anon_delta_litert_allocate_first_invoke`;
- execution.na_flags: the flags this format cannot express (e.g. conv3x3 on .tflite): the report shows
  n/a for that step on this runtime.

litert-gpu first compiles the file in a child process (`probe`: an engine crash fails the row with its
reason, never the agent) and records extra.gpu: the adapter (name, backend, type; a CPU emulation such
as SwiftShader is `software: true` and the row's unit says so), the driver, precision, whether the
graph ran wholly on the GPU, and the ops the engine refused (type, reason, nodes, torch modules). A
graph that is not wholly on the GPU fails the row (kind `delegation`) unless
`options.extra.allow_cpu_fallback: true`, which runs it split and marks the unit "partial" with the
op counts (execution.unit_used; execution.delegation is full only on is_fully_accelerated()). Timing:
wall time of CompiledModel.run in benchmark mode (it returns when the GPU has finished;
`harness.runtimes.litert_gpu.compile_model`). Memory:
planned tensors and weights from the file as on the CPU; memory.gpu_bytes is the process's GPU memory
from NVML after the timed runs (NVIDIA; elsewhere None, extra.gpu.memory_method says why); the
RssAnon growth is kept in extra (SwiftShader's "GPU memory" is host memory: it is in it).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness.protocol import JobSpec, MemoryFigures
from harness.workloads.common import InputError, Timer, emit, execution, measure_loop, record_check

RSS_METHOD = "rss_anon_delta_litert_allocate_first_invoke"


def rss_anon_bytes() -> int | None:
    """Anonymous resident memory of this process (Linux /proc/self/status RssAnon): excludes the
    memory-mapped model file, whose pages count in RSS once touched."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001
        return None


def _artifact_for(spec: JobSpec, flags, dtype: str, component: str = "unet") -> tuple[Path, dict[str, Any]]:
    """(path, facts) of the job's .tflite of `component`: the given path (the job's `artifact` is
    the UNet's), or ensure_artifact through the cache."""
    import json

    from harness.export import ExportError, ensure_artifact

    if spec.artifact and component == "unet":
        path = Path(spec.artifact)
        if not path.is_file():
            raise InputError(f"the job's artifact {spec.artifact!r} is not a file; run `harness export` again "
                             "or leave the artifact out to build it")
        facts: dict[str, Any] = {"path": str(path), "source": "job"}
        meta_path = path.parent / "meta.json"
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                facts.update(key=path.parent.name, sha256=meta.get("sha256"), size_bytes=meta.get("size_bytes"),
                             reference=meta.get("reference"), cached=True)
            except ValueError:
                pass
        return path, facts
    try:
        prefix = "export" if component == "unet" else f"export_{component}"
        art = ensure_artifact(spec.model, flags, "tflite", dtype=dtype,
                              progress=lambda phase, done, total: emit(f"{prefix}_{phase}", done, total),
                              variant=spec.variant, component=component)
    except ExportError as exc:
        if exc.kind == "input":
            raise InputError(str(exc)) from None
        raise
    facts = {"path": str(art.path), "source": "ensure_artifact", "key": art.key, "sha256": art.sha256,
             "size_bytes": art.size_bytes, "cached": art.cached, "reference": art.meta.get("reference")}
    if not art.cached and art.meta.get("rebuilt_because"):  # this call replaced a corrupted entry
        facts["rebuilt_because"] = art.meta["rebuilt_because"]
    return art.path, facts


def check_litert_job(spec: JobSpec, dtype: str) -> Any:
    """The job's LiteRT runtime options (LiteRtGpuOptions for litert-gpu, else None), or InputError
    naming what does not fit the runtime."""
    from harness.export import DTYPES
    from harness.runtimes import get_runtime

    runtime = spec.options.runtime
    if dtype not in DTYPES:
        raise InputError(f"runtime {runtime} runs .tflite artifacts with {', '.join(DTYPES)} weights, not {dtype!r}; "
                         "use --set dtype=fp16 (what phones get), fp32 or int8")
    if runtime == "litert-cpu" and spec.options.accelerator in ("cuda", "gpu"):
        raise InputError("runtime litert-cpu runs on the CPU; use --set accelerator=auto (or cpu)")
    if runtime == "litert-gpu":
        if spec.options.accelerator in ("cuda", "cpu"):
            raise InputError(f"runtime litert-gpu runs on LiteRT's GPU accelerator, not accelerator="
                             f"{spec.options.accelerator}; use --set accelerator=auto (or gpu)")
        try:
            return get_runtime(runtime).parse_options(spec.options.extra)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    return None


def gpu_unit(report: Any) -> str:
    """The unit a litert-gpu run used, as reports show it."""
    unit = "gpu"
    if report.adapter is not None and report.adapter.software:  # the adapter's name is in extra.gpu
        unit = "gpu (CPU emulation)"
    if not report.fully_accelerated:
        split = (f"{report.ops_on_gpu} ops on the GPU, {report.ops_on_cpu} on the CPU"
                 if report.ops_on_cpu is not None else "part of the graph on the CPU")
        unit += f" (partial: {split})"
    return unit


def gpu_delegation(reports: list[Any]) -> dict[str, Any]:
    """The Delegation (harness.protocol) of litert-gpu runs: full when the engine said every file is
    fully accelerated (CompiledModel.is_fully_accelerated()), else partial with the op counts of its log."""
    full = all(r.fully_accelerated for r in reports)
    on = [r.ops_on_gpu for r in reports]
    off = [r.ops_on_cpu for r in reports]
    counted = not full and all(isinstance(x, int) for x in on + off)
    return {"state": "full" if full else "partial", "delegated_nodes": sum(on) if counted else None,
            "total_nodes": sum(on) + sum(off) if counted else None,
            "evidence": "is_fully_accelerated()" + ("" if full else " false; the engine log's GPU/CPU op split")}


def mark_emulation(result: dict[str, Any], reports: list[Any]) -> None:
    """A run on a software adapter (SwiftShader) is a stand-in for a GPU: say so in the result (harness.standin)."""
    from harness import standin

    software = any(r is not None and r.adapter is not None and r.adapter.software for r in reports)
    result["stand_in"] = standin.merge(result.get("stand_in"), standin.from_gpu_adapter(software))


def prepare_gpu(spec: JobSpec, path: Path, graph: Any, options: Any, result: dict[str, Any],
                what: str = "") -> Any:
    """Probe `path` on the GPU accelerator and record what it showed (extra.gpu, or extra.gpu_components
    [what] for one of several files). Returns the report, or None after putting the row's error into
    `result` (engine crash, no adapter, a graph not wholly on the GPU without allow_cpu_fallback)."""
    from harness.runtimes.litert_gpu import explain, probe

    emit("gpu_compile", 0, 1)
    report = probe(path, allow_cpu=options.allow_cpu_fallback, precision=options.precision,
                   driver=options.vulkan_driver)
    emit("gpu_compile", 1, 1)
    facts = {
        "adapter": report.adapter.__dict__ if report.adapter else None,
        "adapter_label": report.adapter.label() if report.adapter else None,
        "software": bool(report.adapter and report.adapter.software),
        "driver": report.driver, "precision": report.precision, "allow_cpu_fallback": report.allow_cpu,
        "fully_accelerated": report.fully_accelerated, "ops_on_gpu": report.ops_on_gpu,
        "ops_on_cpu": report.ops_on_cpu, "rejected": explain(report, graph), "tried_drivers": report.tried,
    }
    if what:
        result["extra"].setdefault("gpu_components", {})[what] = facts
    else:
        result["extra"]["gpu"] = facts
    subject = f"the {what} artifact {path.name}" if what else path.name
    if report.crashed:
        result["error"] = {"kind": "crash", "message": f"{subject}: {report.summary()}"
                           + "".join(f"; {line}" for line in facts["rejected"]), "detail": report.log_tail}
        return None
    if not report.compiled:
        refused = "; ".join(facts["rejected"])
        hint = ("; or set options.extra.allow_cpu_fallback: true to run it split (the row is then marked "
                "partial)" if refused else "")
        result["error"] = {"kind": "delegation" if refused else "device",
                           "message": f"{subject}: {report.summary()}"
                           + (f" ({report.error})" if report.error and not refused else "")
                           + (f". Refused: {refused}" if refused else "") + hint,
                           "detail": report.log_tail}
        return None
    return report


def run_litert(spec: JobSpec, result: dict[str, Any]) -> None:
    import numpy as np

    from harness.export import ExportError, ReferenceMismatchError
    from harness.export.mapping import na_flags
    from harness.export.tflite import read_graph
    from harness.models.unet import WeightsError, example_inputs
    from harness.runtimes.litert import open_model
    from harness.variants import Flags

    runtime = spec.options.runtime
    try:
        flags = Flags.from_dict(spec.flags)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    dtype = spec.options.dtype
    gpu_options = check_litert_job(spec, dtype)
    if dtype == "int8":  # int8 weights: the int8 reference-check tolerance (harness.models.quantize)
        from harness.workloads.unet_iteration import int8_check_spec

        spec = int8_check_spec(spec)
    execution(result).update(runtime=runtime, na_flags=na_flags(flags, "tflite"), unit_asked=spec.options.accelerator)

    emit("artifact", 0, 1)
    try:
        path, facts = _artifact_for(spec, flags, dtype)
    except ReferenceMismatchError as exc:
        result["error"] = {"kind": "reference_mismatch", "message": str(exc)}
        return
    except ExportError as exc:
        result["error"] = {"kind": "export", "message": f"export failed: {exc}", "detail": exc.detail}
        return
    result["extra"]["artifact"] = facts
    graph = read_graph(path)
    result["extra"]["weights_dtype"] = dtype
    result["extra"]["composites"] = graph.composites()
    result["extra"]["op_count"] = len(graph.ops)

    report = None
    if runtime == "litert-gpu":
        report = prepare_gpu(spec, path, graph, gpu_options, result)
        if report is None:
            return
        execution(result).update(accelerator="gpu", unit_used=gpu_unit(report), delegation=gpu_delegation([report]))
        mark_emulation(result, [report])
    else:
        execution(result).update(accelerator="cpu", unit_used="cpu")

    inputs = example_inputs(spec.model, spec.model.seed)  # a name, config or factory model
    arrays = [t.numpy() for t in inputs]

    emit("load", 0, 1)
    threads = spec.options.threads if spec.options.threads > 0 else None
    rss_before = rss_anon_bytes()
    t0 = time.perf_counter_ns()
    model = open_model(path, runtime, threads=threads, gpu=report,
                       allow_cpu=bool(gpu_options and gpu_options.allow_cpu_fallback),
                       precision=gpu_options.precision if gpu_options else "auto")
    result["init_ms"] = (time.perf_counter_ns() - t0) / 1e6
    rss_allocated = rss_anon_bytes()
    if len(model.inputs) != len(arrays):
        raise InputError(f"the artifact {path} takes {len(model.inputs)} inputs, the workload has {len(arrays)}; "
                         "rebuild it with `harness export`")
    model.set_inputs(arrays)

    timer = Timer("cpu")
    execution(result)["timing_method"] = "perf_counter" if runtime == "litert-cpu" else "perf_counter_compiled_model_run"
    emit("first_run", 0, 1)
    result["first_run_ms"] = timer(model.run)[0]
    rss_after = rss_anon_bytes()
    output = np.asarray(model.output(), dtype=np.float32)

    if spec.check.enabled:
        emit("reference", 0, 1)
        from harness.workloads.unet_iteration import reference_output

        ref_spec = spec.model_copy(update={"options": spec.options.model_copy(update={"dtype": "fp32"})})
        try:
            # ReLU attention is a different function: its reference is the model with ReLU attention.
            reference = reference_output(ref_spec, "cpu", inputs,
                                         attention="relu" if flags.attention == "relu" else "standard")
            reference = reference.float().numpy()
        except WeightsError as exc:
            raise InputError(str(exc)) from exc
        max_abs = float(np.max(np.abs(output - reference)))
        rel = max_abs / max(float(np.max(np.abs(reference))), 1e-12)
        if not record_check(result, spec, max_abs, rel,
                            f"variant {spec.variant!r} ({runtime}, {dtype} weights) disagrees with the PyTorch "
                            "reference", hint="raise check.rel_tolerance for fp16 weights or GPU fp16 math",
                            finite=bool(np.isfinite(output).all())):
            return

    warmup, samples = measure_loop(model.run, timer, spec)
    result["warmup_ms"], result["samples_ms"] = warmup, samples

    emit("memory", 0, 1)
    plan = graph.plan()
    mem = MemoryFigures(weight_bytes=graph.weight_bytes, tensor_bytes_planned=plan.total_bytes)
    if rss_before is not None and rss_after is not None:
        delta = max(0, rss_after - rss_before)
        if runtime == "litert-cpu":
            mem.tensor_bytes_measured = delta
            mem.tensor_measure_method = RSS_METHOD
            result["extra"]["rss_anon_delta_allocate_bytes"] = max(0, (rss_allocated or rss_before) - rss_before)
        else:
            result["extra"]["rss_anon_delta_compile_first_run_bytes"] = delta
    if runtime == "litert-gpu":
        from harness.runtimes.litert_gpu import gpu_memory_bytes

        mem.gpu_bytes, method = gpu_memory_bytes()
        if mem.gpu_bytes is None and report.adapter is not None and report.adapter.software:
            method = (f"not measured: {report.adapter.name} emulates the GPU in host memory (it is in the "
                      "process's RSS, extra.rss_anon_delta_compile_first_run_bytes)")
        result["extra"]["gpu"]["memory_method"] = method
    result["memory"] = mem
    result["extra"]["weight_bytes_by_dtype"] = graph.weight_bytes_by_dtype
    result["extra"]["peak_live_tensor_bytes"] = plan.peak_live_bytes
    if runtime == "litert-cpu":
        result["extra"]["cpu_threads"] = threads or "default"
    try:
        from importlib.metadata import version

        result["extra"]["ai_edge_litert"] = version("ai-edge-litert")
    except Exception:  # noqa: BLE001
        pass
    emit("memory", 1, 1)

