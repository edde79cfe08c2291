"""JobSpec and JobResult: the versioned JSON every device agent reads and writes.

An agent reads one JobSpec and writes one JobResult. Raw samples are the record; every summary
is derived from them later (`harness.stats`). Bump SCHEMA_VERSION on any incompatible change;
readers accept every version listed in SUPPORTED_VERSIONS, and an older JobResult is upgraded as it is
parsed (`upgrade_result`), so readers see only the current version.

Version 2 (this one): the facts reports need (runtime, compute unit asked and used, accelerator,
delegation, timing method, the tool's own latency summary, flags not applicable) are a typed
`Execution` record (JobResult.execution) instead of keys of the untyped `extra`, which keeps only
diagnostics; JobError.kind is an `ErrorKind`. The JobSpec is the same in both versions.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)


class ProtocolError(ValueError):
    """A JobSpec or JobResult document that does not parse."""


# Credentials in text that is printed, logged or stored: the password of a URL's user:password@, and
# the value of password=/token=/secret=/api_key= (and : forms). harness.store.safe_url uses the same.
_URL_PASSWORD = re.compile(r"(//[^/\s:@]*:)[^/\s@]*@")
_SECRET_VALUE = re.compile(r"(?i)\b((?:pass(?:word|wd)|token|secret|api[_-]?key|access[_-]?key)\s*[=:]\s*)"
                           r"(?!\*\*\*)[^\s,;'\"&]+")


def mask_credentials(text: str) -> str:
    """`text` with every credential it shows replaced by ***."""
    return _SECRET_VALUE.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


# A failure's detail (the tail of the device's stderr): what is stored, printed and reported.
DETAIL_MAX_LINES = 20
DETAIL_MAX_CHARS = 2048
_CUT_MARK = "[... earlier lines cut]"


def error_tail(text: str | None, max_lines: int = DETAIL_MAX_LINES, max_chars: int = DETAIL_MAX_CHARS) -> str | None:
    """The last `max_lines` lines of `text`, at most `max_chars` characters, credentials masked (None when
    nothing is left). A cut tail starts with a mark line; applying it again changes nothing."""
    if text is None:
        return None
    text = text.replace("\r\n", "\n")
    was_cut = text.startswith(_CUT_MARK + "\n")
    if was_cut:
        text = text[len(_CUT_MARK) + 1:]
    lines = mask_credentials(text).rstrip("\n").splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return None
    cut = was_cut or len(lines) > max_lines
    lines = lines[-max_lines:]
    body = "\n".join(lines)
    budget = max_chars - len(_CUT_MARK) - 1
    if len(body) > max_chars or (cut and len(body) > budget):
        body, cut = body[-budget:], True
        if "\n" in body:
            body = body.split("\n", 1)[1]  # no half line at the top
    return f"{_CUT_MARK}\n{body}" if cut else body


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Strict):
    """Which network to build: exactly one of a built-in config `name`, a diffusers UNet `unet_config`
    JSON file, or a Python `factory` ("package.module:function"; contract in harness.models.loaders);
    plus optional local weights (built-in/config models) and the seed.

    For a config or factory model, `name` is filled with a label ("config:<file stem>",
    "factory:<module:function>") so every consumer that names the model still has a string.
    """

    name: str = "sd14"
    unet_config: str | None = None  # path of a diffusers UNet2DConditionModel config.json
    factory: str | None = None  # "package.module:function" returning the module and its input shapes
    weights: str | None = None  # local diffusers checkpoint directory
    seed: int = 0  # seeds random weights and inputs

    @property
    def kind(self) -> str:
        """builtin | unet_config | factory."""
        return "unet_config" if self.unet_config else "factory" if self.factory else "builtin"

    def derived_name(self) -> str:
        if self.unet_config:
            return f"config:{Path(self.unet_config).stem}"
        if self.factory:
            return f"factory:{self.factory}"
        return self.name

    @model_validator(mode="after")
    def _exactly_one(self) -> "ModelRef":
        if self.unet_config and self.factory:
            raise ValueError("model gives both unet_config and factory; give exactly one of name, "
                             "unet_config, factory")
        if self.kind != "builtin":
            label = self.derived_name()
            if "name" in self.model_fields_set and self.name != label:
                raise ValueError(f"model gives both name {self.name!r} and {self.kind}; give exactly one of "
                                 "name (a built-in model), unet_config, factory")
            self.name = label
            if self.factory and self.weights:
                raise ValueError("model.weights applies to built-in and unet_config models; a factory "
                                 "loads its own weights, so drop model.weights")
        return self


class RuntimeOptions(_Strict):
    runtime: str = "torch"  # torch | litert-cpu | litert-gpu | coreml
    # int8: weight-only (int8 weights, per-output-channel scales; compute fp32 on CPU, fp16 on CUDA;
    # on litert/Core ML runtimes the artifact's weight dtype). harness.models.quantize.
    dtype: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    threads: int = Field(0, ge=0)  # 0: the runtime's default
    accelerator: Literal["auto", "cpu", "cuda", "gpu"] = "auto"
    compute_units: str | None = None  # Core ML: cpuAndGPU | all | cpuOnly | cpuAndNeuralEngine
    extra: dict[str, Any] = Field(default_factory=dict)  # runtime-specific knobs (benchmark_model flags)


class MeasurePolicy(_Strict):
    warmup_runs: int = Field(1, ge=0)
    iterations: int = Field(5, ge=1)  # minimum timed iterations
    min_seconds: float = Field(0.0, ge=0)  # keep iterating until this much timed work is done
    max_seconds: float = Field(600.0, gt=0)  # stop after this much timed work, even below `iterations`
    cooldown_seconds: float = Field(0.0, ge=0)  # pause before the job
    timeout_seconds: float = Field(3600.0, gt=0)  # the whole job, agent included
    # Extra passes (torch runtime), each one more untimed iteration, run after the first run and before
    # the timed runs (so they warm up as warmup runs do): "memory" (the measured and planned tensor
    # memory, one traced call), "op_times" (per-category op times, one hooked call). Leave one out and
    # its figures stay empty; the latency samples are the same either way.
    passes: list[Literal["memory", "op_times"]] = Field(default_factory=lambda: ["memory", "op_times"])


class CheckPolicy(_Strict):
    """Compare the variant's output against the plain PyTorch reference before timing it."""

    enabled: bool = True
    # max |variant - reference| / max(|reference|) allowed; fp32 kernels agree to ~1e-4.
    rel_tolerance: float = 1e-2


class JobSpec(_Strict):
    schema_version: int = SCHEMA_VERSION
    job_id: str
    run_id: str
    device: str
    workload: Literal["unet_iteration", "e2e"] = "unet_iteration"
    model: ModelRef = Field(default_factory=ModelRef)
    variant: str
    flags: dict[str, Any] = Field(default_factory=dict)
    options: RuntimeOptions = Field(default_factory=RuntimeOptions)
    measure: MeasurePolicy = Field(default_factory=MeasurePolicy)
    check: CheckPolicy = Field(default_factory=CheckPolicy)
    artifact: str | None = None  # path of the runtime artifact on the device, when the runtime needs one
    workload_args: dict[str, Any] = Field(default_factory=dict)  # e2e: steps, scheduler, prompt, ...
    # The job's sweep coordinates (suite field path -> value, e.g. {"options.dtype": "int8"}); {} unswept.
    axes: dict[str, Any] = Field(default_factory=dict)


class MemoryFigures(_Strict):
    weight_bytes: int | None = None  # bytes of the weights the variant holds
    tensor_bytes_measured: int | None = None  # peak of intermediate tensors during one iteration
    tensor_measure_method: str | None = None  # how tensor_bytes_measured was obtained
    tensor_bytes_planned: int | None = None  # greedy-by-size plan over the traced graph
    peak_rss_bytes: int | None = None  # process peak resident set
    gpu_bytes: int | None = None  # GPU driver memory (Android: dumpsys meminfo Graphics + GL mtrack)


class ReferenceCheck(_Strict):
    max_abs_error: float
    rel_error: float  # max_abs_error / max(|reference|)
    rel_tolerance: float
    passed: bool


class ErrorKind(StrEnum):
    """Why a job failed (JobError.kind). str() and == compare as the plain value ("input")."""

    INPUT = "input"  # the job cannot run as specified (bad option, file, model); not worth a retry
    EXPORT = "export"  # building the variant's artifact failed
    REFERENCE_MISMATCH = "reference_mismatch"  # the output disagrees with the PyTorch reference
    DELEGATION = "delegation"  # a GPU row that did not run wholly on the GPU (full delegation required)
    CRASH = "crash"  # the agent or tool died (signal, out of memory, an exception in the workload)
    TIMEOUT = "timeout"  # the job ran past measure.timeout_seconds
    COMPILE = "compile"  # a device service could not compile the model for the device (AI Hub)
    DEVICE = "device"  # the device or its transport failed (a drop, no adapter, a refused command)
    DISK_FULL = "disk_full"  # the device refused a pushed file (Android: adb sync FAIL)
    PARSE = "parse"  # the agent's or tool's output was not understood
    INTERRUPTED = "interrupted"  # the run was stopped (Ctrl-C, SIGTERM) with the job in flight
    INTERNAL = "internal"  # a bug in the harness's device layer


class JobError(_Strict):
    kind: ErrorKind
    message: str
    detail: str | None = None  # the tail of the device's stderr (error_tail: bounded, credentials masked)
    transient: bool = False  # worth a retry

    @field_validator("message")
    @classmethod
    def _masked(cls, value: str) -> str:
        return mask_credentials(value)

    @field_validator("detail")
    @classmethod
    def _bounded(cls, value: str | None) -> str | None:
        return error_tail(value)


class Delegation(_Strict):
    """How much of the graph the asked accelerator ran. `full` only where something proves it: LiteRT's
    GPU accelerator on the host saying `is_fully_accelerated()` (harness.runtimes.litert_gpu), benchmark_model
    saying the delegate executes the graph "completely", or LiteRT's CompiledModel tool finishing under
    --require_full_delegation=true; `partial` with the node counts where the tool gives them; `none`: the
    delegate took no node; `unknown`: nothing said (a runtime with nothing to delegate, a tool that is silent)."""

    state: Literal["full", "partial", "none", "unknown"] = "unknown"
    delegated_nodes: int | None = None  # nodes (ops, layers, delegate kernels) the accelerator ran
    total_nodes: int | None = None  # nodes of the graph, where known
    evidence: str | None = None  # what showed it ("is_fully_accelerated()", "benchmark_model: GPU delegate ...")


class LatencySummary(_Strict):
    """A tool's own latency summary in ms, for tools that report no per-run samples (benchmark_model:
    count/avg/std, percentiles in newer builds; AI Hub: its estimate). Samples, when there are any, rule."""

    n: int | None = None
    first: float | None = None
    curr: float | None = None
    min: float | None = None
    max: float | None = None
    avg: float | None = None
    std: float | None = None
    p5: float | None = None
    median: float | None = None
    p95: float | None = None
    estimated: float | None = None  # AI Hub's estimated inference time


class Execution(_Strict):
    """How the job ran: what reports show beside the figures. Written by the agent or the device layer;
    the store completes what a failed job left empty from its spec (`completed`)."""

    runtime: str | None = None  # harness.runtimes name: torch | litert-cpu | litert-gpu | coreml | ...
    accelerator: str | None = None  # the device family it ran on: cpu | cuda | gpu | npu | nnapi[:name] | ...
    unit_asked: str | None = None  # the compute unit asked (Android/AI Hub: the unit label; Core ML: coreml:<units>)
    # The unit it really ran on, as the device said: "gpu", "gpu (CPU emulation)", "gpu (partial: ...)",
    # "cpu (the NNAPI delegate took no node)", "coreml:cpuAndGPU".
    unit_used: str | None = None
    delegation: Delegation = Field(default_factory=Delegation)
    timing_method: str | None = None  # perf_counter | cuda_events | benchmark_model | mach_absolute_time | ...
    latency_summary_ms: LatencySummary | None = None  # the tool's own summary (no per-run samples)
    na_flags: list[str] = Field(default_factory=list)  # flags this model or format cannot express (n/a rows)

    def completed(self, options: dict[str, Any] | None) -> "Execution":
        """This record with what the job's spec (`RuntimeOptions` as a dict) says filled in where the result
        left it empty (a failure before the agent said anything): runtime, accelerator, and the units
        (asked: the accelerator asked; used: the unit asked)."""
        options = options or {}
        runtime = self.runtime or options.get("runtime")
        accelerator = self.accelerator or options.get("accelerator")
        asked = self.unit_asked or accelerator
        return self.model_copy(update={"runtime": runtime, "accelerator": accelerator, "unit_asked": asked,
                                       "unit_used": self.unit_used or asked})


class JobResult(_Strict):
    schema_version: int = SCHEMA_VERSION
    job_id: str
    status: Literal["ok", "failed"]
    samples_ms: list[float] = Field(default_factory=list)  # timed iterations, in order
    warmup_ms: list[float] = Field(default_factory=list)
    init_ms: float | None = None  # build/load until ready to run
    first_run_ms: float | None = None
    memory: MemoryFigures = Field(default_factory=MemoryFigures)
    check: ReferenceCheck | None = None
    device_state_before: dict[str, Any] = Field(default_factory=dict)
    device_state_after: dict[str, Any] = Field(default_factory=dict)
    op_times_ms: dict[str, float] = Field(default_factory=dict)  # per paper category, per iteration
    components_ms: dict[str, Any] = Field(default_factory=dict)  # e2e breakdown
    versions: dict[str, str] = Field(default_factory=dict)
    error: JobError | None = None
    started_at: float | None = None  # unix seconds
    ended_at: float | None = None
    execution: Execution = Field(default_factory=Execution)
    extra: dict[str, Any] = Field(default_factory=dict)  # diagnostics only: nothing a report's figure needs
    # What in this measurement was a stand-in, not a real phone, tool or GPU (short labels: "fake phone",
    # "benchmark_model stand-in", "SwiftShader: GPU emulated on the CPU"); [] when everything was real.
    # Set by the agent or the device layer (harness.standin), merged with the device's own when stored.
    stand_in: list[str] = Field(default_factory=list)

    @property
    def timing_method(self) -> str | None:
        """How the samples were timed (execution.timing_method; version 1 kept it here)."""
        return self.execution.timing_method

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        return upgrade_result(data) if isinstance(data, dict) and data.get("schema_version") == 1 else data

    @classmethod
    def failure(cls, job_id: str, kind: ErrorKind | str, message: str, detail: str | None = None,
                transient: bool = False, **kw: Any) -> "JobResult":
        return cls(job_id=job_id, status="failed",
                   error=JobError(kind=kind, message=message, detail=detail, transient=transient), **kw)


# Version 1 kept the execution facts in `extra` (and timing_method at the top): the keys upgrade_result moves.
V1_EXECUTION_KEYS = ("runtime", "accelerator", "unit", "compute_units", "latency_summary_ms", "na_flags")


def aihub_delegation(layer_units: dict[str, int], unit: str) -> dict[str, Any]:
    """AI Hub's delegation (as Delegation fields): how many of the profile's layers ran on the asked unit."""
    total = sum(n for u, n in layer_units.items() if u)  # layers the profile names a unit for
    on = layer_units.get(unit.lower(), 0)
    if not total:
        return {"evidence": "AI Hub profile: no per-layer units"}
    return {"state": "full" if on == total else "partial" if on else "none", "delegated_nodes": on,
            "total_nodes": total, "evidence": "AI Hub profile: each layer's compute unit"}


def _v1_delegation(extra: dict[str, Any], unit: str | None, accelerator: str | None) -> dict[str, Any]:
    """A version-1 result's delegation, from the evidence its extra kept: the host GPU engine's report
    (extra.gpu), benchmark_model's delegate lines (extra.delegates), the unit label (AI Hub's layers)."""
    gpu = extra.get("gpu") if isinstance(extra.get("gpu"), dict) else None
    if gpu and gpu.get("fully_accelerated") is not None:
        on, off = gpu.get("ops_on_gpu"), gpu.get("ops_on_cpu")
        total = on + off if isinstance(on, int) and isinstance(off, int) else None
        return {"state": "full" if gpu["fully_accelerated"] else "partial", "delegated_nodes": on,
                "total_nodes": total, "evidence": "is_fully_accelerated()"}
    for d in extra.get("delegates") or ():
        if isinstance(d, dict) and str(d.get("name", "")).upper() != "XNNPACK":
            state = {"complete": "full", "partial": "partial", "none": "none"}.get(d.get("coverage"), "unknown")
            return {"state": state, "delegated_nodes": d.get("delegate_kernels"),
                    "evidence": f"benchmark_model: {d.get('name')} delegate, coverage {d.get('coverage')}"}
    aihub = extra.get("aihub") if isinstance(extra.get("aihub"), dict) else None
    if aihub and aihub.get("fully_on_unit") is not None:
        return aihub_delegation(aihub.get("layer_units") or {}, str(accelerator or ""))
    if unit and "partial" in unit:
        return {"state": "partial", "evidence": f"unit {unit!r}"}
    return {}


def upgrade_result(doc: dict[str, Any]) -> dict[str, Any]:
    """A version-1 JobResult document as version 2 (a new dict): the execution facts move from `extra`
    (and timing_method from the top) into `execution`; the unit used is what version-1 reports showed
    (extra.unit, else coreml:<compute_units>, else the accelerator). Other versions come back unchanged."""
    if doc.get("schema_version") != 1:
        return doc
    doc = dict(doc)
    extra = dict(doc.get("extra") or {})
    moved = {k: extra.pop(k) for k in V1_EXECUTION_KEYS if k in extra}
    units = moved.get("compute_units")
    coreml = f"coreml:{units}" if units else None
    execution = {
        "runtime": moved.get("runtime"), "accelerator": moved.get("accelerator"),
        "unit_asked": coreml or moved.get("accelerator"),
        "unit_used": moved.get("unit") or coreml or moved.get("accelerator"),
        "delegation": _v1_delegation(extra, moved.get("unit"), moved.get("accelerator")),
        "timing_method": doc.pop("timing_method", None),
        "latency_summary_ms": moved.get("latency_summary_ms"),
        "na_flags": list(moved.get("na_flags") or []),
    }
    doc.update(schema_version=2, extra=extra, execution=execution)
    return doc


def _parse(model: type[BaseModel], text: str, what: str):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            f"{what} has schema_version {version!r}; this harness reads {SUPPORTED_VERSIONS}. "
            "Update the device agent or the harness so both speak the same version."
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(f"{what} does not match the {model.__name__} schema: {exc}") from exc


def parse_spec(text: str) -> JobSpec:
    return _parse(JobSpec, text, "job spec")


def parse_result(text: str) -> JobResult:
    return _parse(JobResult, text, "job result")


def write_json_atomic(path: str | os.PathLike, doc: BaseModel | dict) -> None:
    """Write JSON to `path` through a temp file and rename, so readers never see half a file."""
    path = Path(path)
    text = doc.model_dump_json(indent=2) if isinstance(doc, BaseModel) else json.dumps(doc, indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """A value JSON (and a browser's JSON.parse) takes: NaN and infinities as null, tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
