"""Runtime `litert-cpu` of the unet_iteration workload: the variant's .tflite artifact (the file a
phone gets) run on the host CPU through ai-edge-litert's Interpreter (XNNPACK).

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
- extra.na_flags: the flags this format cannot express (e.g. conv3x3 on .tflite): the report shows
  n/a for that step on this runtime.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness.protocol import JobSpec, MemoryFigures
from harness.workloads.common import InputError, Timer, emit, measure_loop, record_check

RUNTIME = "litert-cpu"
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


def run_litert_cpu(spec: JobSpec, result: dict[str, Any]) -> None:
    import numpy as np

    from harness.export import ExportError, ReferenceMismatchError
    from harness.export.mapping import na_flags
    from harness.export.tflite import load_interpreter, read_graph, signature_io
    from harness.models.unet import WeightsError, example_inputs
    from harness.variants import Flags

    try:
        flags = Flags.from_dict(spec.flags)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    from harness.export import DTYPES

    dtype = spec.options.dtype
    if dtype not in DTYPES:
        raise InputError(f"runtime litert-cpu runs .tflite artifacts with fp16, fp32 or int8 weights, not {dtype!r}; "
                         "use --set dtype=fp16 (what phones get), fp32 or int8")
    if dtype == "int8":  # int8 weights: the int8 reference-check tolerance (harness.models.quantize)
        from harness.workloads.unet_iteration import int8_check_spec

        spec = int8_check_spec(spec)
    if spec.options.accelerator in ("cuda", "gpu"):
        raise InputError("runtime litert-cpu runs on the CPU; use --set accelerator=auto (or cpu)")
    result["extra"]["na_flags"] = na_flags(flags, "tflite")
    result["extra"]["runtime"] = RUNTIME

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

    inputs = example_inputs(spec.model, spec.model.seed)  # a name, config or factory model
    arrays = [t.numpy() for t in inputs]

    emit("load", 0, 1)
    threads = spec.options.threads if spec.options.threads > 0 else None
    rss_before = rss_anon_bytes()
    t0 = time.perf_counter_ns()
    interpreter = load_interpreter(path, num_threads=threads)
    interpreter.allocate_tensors()
    result["init_ms"] = (time.perf_counter_ns() - t0) / 1e6
    rss_allocated = rss_anon_bytes()
    sig_inputs, sig_outputs = signature_io(interpreter)
    if len(sig_inputs) != len(arrays):
        raise InputError(f"the artifact {path} takes {len(sig_inputs)} inputs, the workload has {len(arrays)}; "
                         "rebuild it with `harness export`")
    for desc, arr in zip(sig_inputs, arrays):
        interpreter.set_tensor(desc["index"], np.asarray(arr, dtype=desc["dtype"]).reshape(desc["shape"]))
    out_index = sig_outputs[0]["index"]

    def step() -> None:
        interpreter.invoke()

    timer = Timer("cpu")
    result["timing_method"] = "perf_counter"
    emit("first_run", 0, 1)
    result["first_run_ms"] = timer(step)[0]
    rss_after = rss_anon_bytes()
    output = interpreter.get_tensor(out_index).astype(np.float32)

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
                            f"variant {spec.variant!r} (litert-cpu, {dtype} weights) disagrees with the PyTorch "
                            "reference", hint="raise check.rel_tolerance for fp16 weights",
                            finite=bool(np.isfinite(output).all())):
            return

    warmup, samples = measure_loop(step, timer, spec)
    result["warmup_ms"], result["samples_ms"] = warmup, samples

    emit("memory", 0, 1)
    plan = graph.plan()
    mem = MemoryFigures(weight_bytes=graph.weight_bytes, tensor_bytes_planned=plan.total_bytes)
    if rss_before is not None and rss_after is not None:
        mem.tensor_bytes_measured = max(0, rss_after - rss_before)
        mem.tensor_measure_method = RSS_METHOD
        result["extra"]["rss_anon_delta_allocate_bytes"] = max(0, (rss_allocated or rss_before) - rss_before)
    result["memory"] = mem
    result["extra"]["weight_bytes_by_dtype"] = graph.weight_bytes_by_dtype
    result["extra"]["peak_live_tensor_bytes"] = plan.peak_live_bytes
    result["extra"]["cpu_threads"] = threads or "default"
    try:
        from importlib.metadata import version

        result["extra"]["ai_edge_litert"] = version("ai-edge-litert")
    except Exception:  # noqa: BLE001
        pass
    emit("memory", 1, 1)
