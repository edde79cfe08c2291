"""`harness inspect ARTIFACT`: what an artifact holds, read from the artifact itself.

- weight MB by element type (tflite: constant buffers, Buffer.Size() for weights stored after the
  flatbuffer; Core ML: the const values of the MIL program, and the int8 data and scales that
  constexpr ops dequantize at load time): int8 weight-only artifacts show their int8 bytes;
- an op histogram grouped into the paper's categories (GroupNorm, GELU, softmax/attention, 3x3
  convolution, other), composite ops named, with the op list of each composite's decomposition;
- planned tensor MB: the artifact's own activations (sizes and op order from the file) laid out by
  `harness.memory.plan_greedy_by_size`, the skeleton's planner (TFLite GPU's greedy-by-size);
- for a .tflite, "GPU: fully accelerated (<adapter>)" or the ops LiteRT's GPU accelerator refuses
  (each with its nodes and torch modules), from compiling the file in a child process
  (`harness.runtimes.litert_gpu.probe`; SwiftShader where there is no GPU, labelled a CPU emulation).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.export.graph import CATEGORIES, CATEGORY_LABELS, Graph

MB = float(1 << 20)


def detect_format(path: Path) -> str:
    if path.is_dir() and (path / "Manifest.json").is_file():
        return "coreml"
    if path.is_file() and path.suffix == ".tflite":
        return "tflite"
    if path.is_file():
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head[4:8] == b"TFL3":
            return "tflite"
    raise ValueError(f"{str(path)!r} is neither a .tflite file nor an .mlpackage directory; give the path "
                     "of an artifact (`harness export` prints them)")


def load_graph(path: str | Path) -> Graph:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no artifact at {str(path)!r}")
    fmt = detect_format(path)
    if fmt == "tflite":
        from harness.export.tflite import read_graph
    else:
        from harness.export.coreml import read_graph
    return read_graph(path)


def gpu_facts(path: Path, graph: Graph) -> dict[str, Any]:
    """What compiling `path` on LiteRT's GPU accelerator showed (inspect's `gpu`)."""
    from harness.runtimes.litert_gpu import explain, probe

    report = probe(path)
    return {"fully_accelerated": report.fully_accelerated, "summary": report.summary(),
            "adapter": report.adapter.label() if report.adapter else None,
            "software": bool(report.adapter and report.adapter.software), "crashed": report.crashed,
            "error": report.error, "ops_on_gpu": report.ops_on_gpu, "ops_on_cpu": report.ops_on_cpu,
            "rejected": explain(report, graph), "checked": report.adapter is not None or report.crashed}


def inspect_artifact(path: str | Path, gpu: bool = False) -> dict[str, Any]:
    """The inspect report as data (what `harness inspect --json` prints); `gpu`: compile a .tflite on
    the GPU accelerator too."""
    path = Path(path).expanduser()
    graph = load_graph(path)
    plan = graph.plan()
    meta_path = path.parent / "meta.json"
    meta = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
    return {
        "path": str(path),
        "format": graph.fmt,
        "ops": len(graph.ops),
        "weight_bytes": graph.weight_bytes,
        "weight_bytes_by_dtype": graph.weight_bytes_by_dtype,
        "categories": graph.category_histogram(),
        "composites": graph.composites(),
        "decompositions": graph.decompositions,
        "planned_tensor_bytes": plan.total_bytes,
        "peak_live_tensor_bytes": plan.peak_live_bytes,
        "naive_tensor_bytes": plan.naive_bytes,
        "planned_tensors": len(plan.offsets),
        "flags": meta.get("flags"),
        "reference": meta.get("reference"),
        "model": meta.get("model"),
        "component": meta.get("component") or _component_from_name(path.name),
        "dtype": meta.get("dtype"),
        "gpu": gpu_facts(path, graph) if gpu and graph.fmt == "tflite" else None,
    }


def _component_from_name(name: str) -> str | None:
    from harness.export.mapping import COMPONENTS

    return next((c for c in COMPONENTS if name.startswith(c + "-")), None)


def _hist(h: dict[str, int], limit: int = 8) -> str:
    items = list(h.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items) - limit} more op types)"
    return text


def format_report(report: dict[str, Any]) -> str:
    """The inspect report as text."""
    lines = [f"{report['path']}  ({report['format']}, {report['ops']} ops in the main graph)"]
    if report.get("model") or report.get("flags"):
        flags = report.get("flags") or {}
        what = f"  component {report['component']}" if report.get("component") else ""
        dtype = f"  {report['dtype']} weights" if report.get("dtype") else ""
        lines.append(f"model {report.get('model')}{what}{dtype}  flags " + ", ".join(f"{k}={v}" for k, v in flags.items()))
    ref = report.get("reference") or {}
    if ref.get("rel_error") is not None:
        lines.append(f"reference check: max abs error {ref['max_abs_error']:.3g}, relative {ref['rel_error']:.3g}")
    elif ref.get("torch_program_rel_error") is not None:
        lines.append(f"reference check: spec {'ok' if ref.get('spec_ok') else 'FAILED'}; converted torch program "
                     f"relative error {ref['torch_program_rel_error']:.3g}")
    lines.append("")
    lines.append(f"weights: {report['weight_bytes'] / MB:.2f} MB")
    for dtype, n in report["weight_bytes_by_dtype"].items():
        lines.append(f"  {dtype:<10} {n / MB:10.2f} MB")
    lines.append("")
    lines.append("ops by category:")
    for cat in CATEGORIES:
        hist = report["categories"].get(cat, {})
        lines.append(f"  {CATEGORY_LABELS[cat]:<18} {sum(hist.values()):5d}  {_hist(hist)}")
    comps = report.get("composites") or {}
    lines.append("")
    lines.append("composite ops: " + (", ".join(f"{k} x{v}" for k, v in comps.items()) if comps else "none"))
    for name, hist in (report.get("decompositions") or {}).items():
        lines.append(f"  {name} decomposes to: {_hist(hist, 12)}")
    lines.append("")
    lines.append(f"planned tensor memory: {report['planned_tensor_bytes'] / MB:.2f} MB "
                 f"(greedy by size over {report['planned_tensors']} activations; peak live "
                 f"{report['peak_live_tensor_bytes'] / MB:.2f} MB, no reuse {report['naive_tensor_bytes'] / MB:.2f} MB)")
    gpu = report.get("gpu")
    if gpu:
        lines.append("")
        if gpu["fully_accelerated"]:
            note = "; a CPU emulation of a GPU" if gpu["software"] else ""
            lines.append(f"GPU: fully accelerated ({gpu['adapter']}{note})")
        elif not gpu["checked"]:
            lines.append(f"GPU: not checked: {gpu['error'] or 'no Vulkan adapter'}")
        else:
            lines.append(f"GPU: {gpu['summary']}")
            lines.extend(f"  {line}" for line in gpu["rejected"])
    return "\n".join(lines)
