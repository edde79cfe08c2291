"""What `harness export`, `harness inspect` and `harness run` (for runtimes that need an artifact) do;
harness/commands/ (export, inspect) and harness/session.py (run) call these."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from harness.export import (
    COMPONENTS, DTYPES, FORMATS, Artifact, ExportError, PlannedArtifact, ensure_artifact, plan_artifacts,
)
from harness.export.mapping import UnknownFormatError
from harness.runtimes import RUNTIMES

MB = float(1 << 20)


def host_artifact_format(runtime: str) -> str | None:
    """The artifact format a host job of `runtime` runs (None: it builds its model itself); phones
    resolve theirs in their device's prepare."""
    rt = RUNTIMES.get(runtime)
    return rt.artifact if rt is not None and "host" in rt.devices else None


def formats_from_arg(value: str | None, runtime: str) -> list[str]:
    """--format tflite|coreml|all; by default the suite runtime's format (the registry's; tflite for
    runtimes that build their model themselves)."""
    if value is None:
        rt = RUNTIMES.get(runtime)
        return [rt.artifact] if rt is not None and rt.artifact else ["tflite"]
    if value == "all":
        return list(FORMATS)
    if value not in FORMATS:
        raise UnknownFormatError(f"unknown artifact format {value!r}; known formats: {', '.join(FORMATS)}, all")
    return [value]


def suite_components(suite: Any) -> tuple[str, ...]:
    """What a suite's workload runs: every component for `workload: e2e`, else the UNet."""
    return COMPONENTS if getattr(suite, "workload", None) == "e2e" else ("unet",)


def artifact_dtype(dtype: str | None, suite_dtype: str) -> str:
    """--dtype, else the suite's dtype when an artifact can have it (fp16/fp32/int8), else fp16."""
    if dtype:
        return dtype
    return suite_dtype if suite_dtype in DTYPES else "fp16"


class _Bar:
    """A rich progress bar over the artifacts being built, with the conversion phase."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), transient=False, console=_console())
        self.task = self.bar.add_task("exporting", total=total)
        self.label = ""

    def __enter__(self) -> "_Bar":
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def start(self, label: str) -> None:
        self.label = label
        self.bar.update(self.task, description=label)

    def phase(self, phase: str, done: int, total: int) -> None:
        self.bar.update(self.task, description=f"{self.label}: {phase}")

    def finish(self, line: str) -> None:
        self.bar.console.print(line, soft_wrap=True, markup=False, highlight=False)
        self.bar.advance(self.task)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _ref_error(art: Artifact) -> float | None:
    """The artifact's relative error against the reference (.mlpackage: of the converted torch program)."""
    ref = art.meta.get("reference") or {}
    return ref["rel_error"] if ref.get("rel_error") is not None else ref.get("torch_program_rel_error")


def _rows_text(planned: PlannedArtifact) -> str:
    parts = []
    na = planned.na()
    for name, _ in planned.variants:
        parts.append(f"{name} (n/a: {', '.join(na[name])})" if name in na else name)
    return ", ".join(parts)


def _what(p: PlannedArtifact) -> str:
    return p.fmt if p.component == "unet" else f"{p.component} {p.fmt}"


def export_suite(suite: Any, formats: list[str], dtype: str | None, cache_dir: Path | None,
                 components: tuple[str, ...] | None = None, output: str = "table") -> int:
    """Build every artifact the suite's variants need in `formats` (the UNet; for `workload: e2e` also
    the text encoder and the VAE decoder), for every sweep combination (`Suite.combinations`; `dtype`
    None: each combination's own dtype through `artifact_dtype`); print what was built, what was
    cached, and which rows share an artifact (on stderr), then the artifacts on stdout: output "table",
    each artifact's path, whole, one per line (in the table's order; failed ones have none); "json", one
    JSON list of artifact records (`artifact_record`). Returns the exit code (1 if a variant failed)."""
    combos = suite.combinations() if hasattr(suite, "combinations") else [({}, suite)]
    records: list[dict[str, Any]] = []
    if len(combos) > 1 or combos[0][0]:
        codes = []
        for axes, combo in combos:
            label = ", ".join(f"{k}={v}" for k, v in axes.items())
            _console().print(f"sweep combination {label}", soft_wrap=True, markup=False, highlight=False)
            try:
                codes.append(_export_one(combo, formats, artifact_dtype(dtype, combo.options.dtype), cache_dir,
                                         components, records, dict(axes)))
            except ExportError as exc:  # this combination cannot be exported (e.g. its model); the others go on
                _console().print(f"FAILED sweep combination {label}: {exc}", soft_wrap=True, markup=False,
                                 highlight=False)
                records.append({"combination": dict(axes), "status": "failed", "error": str(exc), "path": None})
                codes.append(1)
        code = max(codes)
    else:
        code = _export_one(suite, formats, artifact_dtype(dtype, suite.options.dtype), cache_dir, components,
                           records)
    sys.stderr.flush()  # the table first, then what scripts read
    if output == "json":
        print(json.dumps(records, indent=2, default=str))
    else:
        for rec in records:
            if rec["path"]:
                print(rec["path"])
    sys.stdout.flush()
    return code


def artifact_record(p: PlannedArtifact, got: Artifact | ExportError, dtype: str, axes: dict[str, Any]) -> dict[str, Any]:
    """One artifact as `harness export --format json` prints it (sizes in bytes, the path whole)."""
    rec: dict[str, Any] = {"combination": axes, "format": p.fmt, "component": p.component, "dtype": dtype,
                           "rows": [name for name, _ in p.variants], "na_flags": p.na()}
    if isinstance(got, ExportError):
        return {**rec, "status": "failed", "error": str(got), "path": None}
    return {**rec, "status": "cached" if p.cached is not None else "built", "path": str(got.path),
            "sha256": got.sha256, "size_bytes": got.size_bytes,
            "weight_bytes": got.meta.get("weight_bytes"), "planned_tensor_bytes": got.meta.get("planned_tensor_bytes"),
            "reference_rel_error": _ref_error(got), "gpu": _gpu_cell(got)}


def _export_one(suite: Any, formats: list[str], dtype: str, cache_dir: Path | None,
                components: tuple[str, ...] | None = None, records: list[dict[str, Any]] | None = None,
                axes: dict[str, Any] | None = None) -> int:
    model = suite.model
    variants = suite.variant_list()
    components = components or suite_components(suite)
    planned = plan_artifacts(model, variants, formats, dtype, cache_dir, components)
    todo = [p for p in planned if p.cached is None]
    console = _console()
    shared = [p for p in planned if len(p.variants) > 1]
    for p in shared:
        why = " (the flags do not apply to it)" if p.component == "text_encoder" else ""
        console.print(f"{_what(p)}: rows {_rows_text(p)} are the same artifact under the mapping{why}; built once",
                      soft_wrap=True, markup=False, highlight=False)
    results: dict[int, Artifact | ExportError] = {}
    if not todo:
        console.print(f"nothing to build: all {len(planned)} artifact(s) for {len(variants)} variant(s) are in the "
                      f"cache ({', '.join(formats)}, {dtype} weights)", soft_wrap=True, markup=False, highlight=False)
    else:
        console.print(f"building {len(todo)} of {len(planned)} artifact(s) ({', '.join(formats)}, "
                      f"{', '.join(components)}, {dtype} weights, model {model.name}); conversions run one at a time",
                      soft_wrap=True, markup=False, highlight=False)
        with _Bar(len(todo)) as bar:
            for p in todo:
                name, flags = p.variants[0]
                bar.start(f"{name} -> {_what(p)}")
                try:
                    art = ensure_artifact(model, flags, p.fmt, dtype, cache_dir, bar.phase, variant=name,
                                          component=p.component)
                    results[id(p)] = art
                    err = _ref_error(art)
                    bar.finish(f"built {name} ({_what(p)}): {art.size_bytes / MB:.1f} MB, "
                               f"{art.meta.get('convert_seconds', 0):.0f} s, reference error {err:.3g}"
                               if err is not None else f"built {name} ({_what(p)})")
                except ExportError as exc:
                    results[id(p)] = exc
                    bar.finish(f"FAILED {name} ({_what(p)}): {exc}")
    # The table fits the console (80 columns piped): no path in it (paths are printed whole, on stdout, in the
    # table's order), a failure's message as a numbered note under it, the least needed columns dropped first.
    heads = ["artifact", "rows", "status", "MB", "weights MB", "tensor MB", "ref. error", "GPU"]
    cells: list[list[str]] = []
    failures: list[str] = []
    for p in planned:
        got = results.get(id(p), p.cached)
        assert got is not None
        if records is not None:
            records.append(artifact_record(p, got, dtype, axes or {}))
        if isinstance(got, ExportError):
            failures.append(f"{_what(p)} {_rows_text(p)}: {got}")
            cells.append([_what(p), _rows_text(p), f"FAILED ({len(failures)})", "", "", "", "", ""])
            continue
        err = _ref_error(got)
        cells.append([_what(p), _rows_text(p), "cached" if p.cached is not None else "built",
                      f"{got.size_bytes / MB:.1f}", f"{got.meta.get('weight_bytes', 0) / MB:.1f}",
                      f"{got.meta.get('planned_tensor_bytes', 0) / MB:.1f}", "" if err is None else f"{err:.2g}",
                      _gpu_cell(got)])
    from harness.report.fit import fit_table

    table, dropped = fit_table(console, f"Artifacts: {model.name}, {dtype} weights", heads, cells,
                               ("weights MB", "tensor MB", "ref. error", "MB", "GPU"), left=("rows", "status", "GPU"))
    console.print(table)
    say = dict(markup=False, highlight=False)
    console.print("MB: the file; weights MB: its weights; tensor MB: planned intermediate tensors (greedy-by-size); "
                  "ref. error: max relative error against the PyTorch reference"
                  + (f". Not shown at this width: {', '.join(dropped)} (--format json has every column)"
                     if dropped else ""), **say)
    for n, text in enumerate(failures, 1):
        console.print(f"({n}) FAILED {text}", **say)
    if len(planned) > len(failures):
        console.print(f"The paths of the {len(planned) - len(failures)} artifact(s) are on stdout, whole, one per "
                      "line, in the table's order.", **say)
    return 1 if failures else 0


def _gpu_cell(art: Artifact) -> str:
    """What the export's GPU check found (meta.json `gpu`; .mlpackage: no check)."""
    gpu = art.meta.get("gpu")
    if not gpu:
        return "-" if art.fmt != "tflite" else "not checked"
    if not gpu.get("checked"):
        return "not checked"
    emulated = " (CPU emulation)" if gpu.get("software") else ""
    if gpu.get("fully_accelerated"):
        return "fully" + emulated
    return ("accepted, not built" if gpu.get("why") else "NO") + emulated


def inspect_command(path: Path, as_json: bool, gpu: bool = True) -> int:
    from harness.export.inspect import format_report, inspect_artifact

    report = inspect_artifact(path, gpu=gpu)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_report(report))
    return 0


def prepare_run_artifacts(plan: Any, cache_dir: Path | None) -> None:
    """Export, through the cache, what the plan's host jobs need (litert-cpu / litert-gpu: .tflite; for an
    `e2e` job the text encoder and the VAE decoder too), with a progress bar, and point each job at
    its UNet artifact (an e2e job finds the other two in the same cache). A variant that fails to
    export is reported here and fails as its own job (the host agent tries again and records the
    converter's message)."""
    from harness.variants import Flags

    jobs = [j for j in plan.jobs if j.device == "host" and host_artifact_format(j.spec.options.runtime)
            and not j.spec.artifact]
    if not jobs:
        return
    console = _console()

    def components(job: Any) -> tuple[str, ...]:
        return COMPONENTS if job.spec.workload == "e2e" else ("unet",)

    with _Bar(sum(len(components(j)) for j in jobs)) as bar:
        for job in jobs:
            fmt = host_artifact_format(job.spec.options.runtime)
            dtype = job.spec.options.dtype
            if dtype not in DTYPES:  # e.g. bf16: the job's own check names the problem
                bar.start(f"artifact {job.variant} -> {fmt}")
                bar.finish(f"{job.variant}: no {fmt} artifact for dtype {dtype}; the job will say so")
                bar.bar.advance(bar.task, len(components(job)) - 1)
                continue
            for component in components(job):
                what = fmt if component == "unet" else f"{component} {fmt}"
                bar.start(f"artifact {job.variant} -> {what}")
                try:
                    art = ensure_artifact(job.spec.model, Flags.from_dict(job.spec.flags), fmt, dtype, cache_dir,
                                          bar.phase, variant=job.variant, component=component)
                except ExportError as exc:
                    bar.finish(f"export FAILED for {job.variant} ({what}): {exc}")
                    continue
                if component == "unet":
                    job.spec.artifact = str(art.path)
                na = ("; the flags do not apply to it" if component == "text_encoder" else
                      "; n/a: " + ", ".join(art.na_flags) if art.na_flags else "")
                bar.finish(f"{job.variant}: {what} artifact {'cached' if art.cached else 'built'} "
                           f"({art.size_bytes / MB:.1f} MB){na}")
    console.print(f"artifacts ready for {len(jobs)} host job(s)", soft_wrap=True, markup=False, highlight=False)
