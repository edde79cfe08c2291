"""JobSpec and JobResult: the versioned JSON every device agent reads and writes.

An agent reads one JobSpec and writes one JobResult. Raw samples are the record; every summary
is derived from them later (`harness.stats`). Bump SCHEMA_VERSION on any incompatible change;
readers accept every version listed in SUPPORTED_VERSIONS.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)


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


class JobError(_Strict):
    kind: str  # input | reference_mismatch | crash | timeout | device | parse | interrupted
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


class JobResult(_Strict):
    schema_version: int = SCHEMA_VERSION
    job_id: str
    status: Literal["ok", "failed"]
    samples_ms: list[float] = Field(default_factory=list)  # timed iterations, in order
    warmup_ms: list[float] = Field(default_factory=list)
    init_ms: float | None = None  # build/load until ready to run
    first_run_ms: float | None = None
    timing_method: str | None = None  # perf_counter | cuda_events | benchmark_model | mach_absolute_time
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
    extra: dict[str, Any] = Field(default_factory=dict)
    # What in this measurement was a stand-in, not a real phone, tool or GPU (short labels: "fake phone",
    # "benchmark_model stand-in", "SwiftShader: GPU emulated on the CPU"); [] when everything was real.
    # Set by the agent or the device layer (harness.standin), merged with the device's own when stored.
    stand_in: list[str] = Field(default_factory=list)

    @classmethod
    def failure(cls, job_id: str, kind: str, message: str, detail: str | None = None,
                transient: bool = False, **kw: Any) -> "JobResult":
        return cls(job_id=job_id, status="failed",
                   error=JobError(kind=kind, message=message, detail=detail, transient=transient), **kw)


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
