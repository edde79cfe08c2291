"""The conversion subprocess: `python -m harness.export.worker REQUEST_JSON RESULT_JSON`.

One conversion per process (a full SD 1.4 UNet takes 13-18 GiB while converting; the controller
stays small and a converter crash stays here). The request names the model config (or the model
reference of a factory model), the component, flags (already effective for the format), format,
dtype, output path and tolerance; the worker converts, checks the
artifact against the PyTorch reference, reads its graph back and writes a result JSON:
{"ok": true, "meta": {...}} or {"ok": false, "error": {"kind": convert|check|gpu|input, "message", "detail"}}.

A .tflite is also compiled on LiteRT's GPU accelerator (`gpu_check`, beside the reference check):
one the engine does not take wholly (refused ops, or a crash) fails with kind `gpu`, naming each
refused op, its nodes and the torch modules they came from. A graph whose every op was accepted but
which the adapter could not build (a buffer beyond SwiftShader's limits, at SD 1.4 size) is recorded
in meta.gpu and not failed: that is the adapter's limit, not the graph's. $HARNESS_EXPORT_GPU_CHECK: `auto` (default: check where a Vulkan
adapter is found, SwiftShader included; without one meta.gpu says it was not checked), `on` (no
adapter fails the export), `off`.
Progress goes to stdout as `@@progress PHASE DONE TOTAL` lines; everything else goes to stderr.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any


_PROGRESS = sys.stdout


def emit(phase: str, done: int, total: int) -> None:
    print(f"@@progress {phase} {done} {total}", file=_PROGRESS, flush=True)


def graph_summary(graph) -> dict[str, Any]:
    """What meta.json keeps about the artifact's graph (for reports without re-reading it)."""
    plan = graph.plan()
    return {
        "op_count": len(graph.ops),
        "op_histogram": graph.op_histogram(),
        "categories": {c: sum(h.values()) for c, h in graph.category_histogram().items()},
        "category_ops": graph.category_histogram(),
        "composites": graph.composites(),
        "decompositions": graph.decompositions,
        "weight_bytes": graph.weight_bytes,
        "weight_bytes_by_dtype": graph.weight_bytes_by_dtype,
        "planned_tensor_bytes": plan.total_bytes,
        "peak_live_tensor_bytes": plan.peak_live_bytes,
    }


def gpu_check(path: Path, graph) -> tuple[dict[str, Any], str | None]:
    """(meta.gpu, an error message or None): compile the .tflite on the GPU accelerator (a child
    process) and judge it by $HARNESS_EXPORT_GPU_CHECK (module docstring)."""
    mode = os.environ.get("HARNESS_EXPORT_GPU_CHECK", "auto").strip().lower() or "auto"
    if mode not in ("auto", "on", "off"):
        return {}, f"HARNESS_EXPORT_GPU_CHECK={mode!r}: use auto, on or off"
    if mode == "off":
        return {"checked": False, "why": "HARNESS_EXPORT_GPU_CHECK=off"}, None
    from harness.runtimes.litert_gpu import explain, probe

    t0 = time.perf_counter()
    report = probe(path)
    facts: dict[str, Any] = {
        "checked": report.adapter is not None, "fully_accelerated": report.fully_accelerated,
        "adapter": report.adapter.label() if report.adapter else None, "driver": report.driver,
        "software": bool(report.adapter and report.adapter.software), "ops_on_gpu": report.ops_on_gpu,
        "ops_on_cpu": report.ops_on_cpu, "seconds": round(time.perf_counter() - t0, 2),
    }
    if report.adapter is None and not report.crashed:
        facts["why"] = report.error or "no Vulkan adapter"
        if mode == "on":
            return facts, f"the GPU check could not run: {facts['why']}"
        return facts, None
    if report.fully_accelerated:
        return facts, None
    lines = explain(report, graph)
    facts["rejected"] = lines
    facts["error"] = report.error
    if not report.crashed and not any(r.reason for r in report.rejected) and not report.ops_on_cpu:
        # The engine took every op but could not build the graph on this adapter (e.g. a buffer over
        # SwiftShader's limits): not a property of the graph; recorded, and the export stands.
        facts["why"] = ("every op was accepted, but the engine could not build the graph on this adapter: "
                        f"{report.error or 'see the log'}; run it on a GPU (harness inspect) to confirm")
        facts["log_tail"] = report.log_tail[-2000:]
        return facts, None
    return facts, ("the artifact does not run wholly on LiteRT's GPU accelerator: " + report.summary()
                   + "".join(f"\n  {line}" for line in lines))


def build_target(request: dict[str, Any]):
    """What the converter builds from: the request's ModelConfig, or the ModelRef of a factory model
    (its module and input shapes come from the factory)."""
    from harness.models.configs import ModelConfig
    from harness.protocol import ModelRef

    if request["model"].get("factory"):
        return ModelRef(**request["model"])
    return ModelConfig(**request["config"])


def run(request: dict[str, Any]) -> dict[str, Any]:
    from harness.variants import Flags

    cfg = build_target(request)
    component = request.get("component", "unet")
    flags = Flags.from_dict(request["flags"])
    fmt, dtype = request["format"], request["dtype"]
    out_path = Path(request["out_path"])
    weights, seed = request["model"].get("weights"), int(request["model"].get("seed", 0))
    module = {"tflite": "harness.export.tflite", "coreml": "harness.export.coreml"}[fmt]
    import importlib

    conv = importlib.import_module(module)
    t0 = time.perf_counter()
    try:
        facts = conv.convert(cfg, weights, seed, flags, dtype, out_path, emit, component=component)
    except Exception as exc:  # noqa: BLE001 - the converter's message is the result
        return {"ok": False, "error": {"kind": "convert", "message": f"{type(exc).__name__}: {exc}",
                                       "detail": traceback.format_exc()[-6000:]}}
    convert_s = time.perf_counter() - t0
    emit("check", 0, 1)
    t1 = time.perf_counter()
    try:
        check = conv.reference_check(out_path, cfg, weights, seed, flags, facts, component=component)
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "error": {"kind": "check",
                                       "message": f"the reference check could not run: {type(exc).__name__}: {exc}",
                                       "detail": traceback.format_exc()[-6000:]}}
    check_s = time.perf_counter() - t1
    tolerance = float(request["rel_tolerance"])
    check["rel_tolerance"] = tolerance
    rel = check.get("rel_error")
    errors = [e for e in (rel, check.get("torch_program_rel_error")) if e is not None]
    check["passed"] = bool(check.get("spec_ok", True)) and all(e <= tolerance for e in errors)
    emit("inspect", 0, 1)
    graph = conv.read_graph(out_path)
    summary = graph_summary(graph)
    meta = {**facts, **summary, "reference": check, "convert_seconds": round(convert_s, 2),
            "check_seconds": round(check_s, 2)}
    if fmt == "tflite":
        emit("gpu_check", 0, 1)
        meta["gpu"], gpu_error = gpu_check(out_path, graph)
        if gpu_error:
            return {"ok": False, "meta": meta, "error": {"kind": "gpu", "message": gpu_error}}
    if not check["passed"]:
        why = check.get("spec_problems") or (
            f"max abs error {check['max_abs_error']:.3g}, relative {rel:.3g} > tolerance {tolerance:g}"
            if rel is not None else
            f"the converted torch program differs by {check['torch_program_rel_error']:.3g} (relative) "
            f"> tolerance {tolerance:g}")
        return {"ok": False, "meta": meta,
                "error": {"kind": "check", "message": f"the artifact disagrees with the PyTorch reference: {why}"}}
    return {"ok": True, "meta": meta}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text())
    # Library chatter (converters print to stdout, from Python and C++) goes to stderr: the
    # original stdout carries progress lines only.
    global _PROGRESS
    sys.stdout.flush()
    _PROGRESS = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        result = run(request)
    except Exception as exc:  # noqa: BLE001
        result = {"ok": False, "error": {"kind": "input", "message": f"{type(exc).__name__}: {exc}",
                                         "detail": traceback.format_exc()[-6000:]}}
    tmp = Path(argv[1]).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
