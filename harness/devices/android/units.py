"""Android compute units and benchmark_model's flags: which unit a job asks for (GPU delegate, CPU,
NNAPI, a vendor's external delegate), the flags that select it, and which unit a run really used.
Pure functions over the JobSpec and benchmark_model's answers; JobFailure (input) for bad options.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.devices.base import JobFailure
from harness.protocol import JobSpec
from harness.runtimes import UnknownRuntimeError, get_runtime, runtimes_of

# Keys of `options.extra` this device reads.
OPTION_KEYS = ("use_gpu", "gpu_backend", "gpu_precision_loss_allowed", "allow_cpu_fallback", "precision",
               "enable_op_profiling",
               "report_peak_memory_footprint", "run_delay", "warmup_min_secs", "num_threads",
               "affinity", "cooldown", "graph", "graphs", "flags", "meminfo_interval_s",
               "nnapi_accelerator_name", "external_delegate_path", "external_delegate_options")
# Runtimes an Android job takes (`options.runtime`), each a compute unit benchmark_model reaches:
# the GPU delegate, the CPU (XNNPACK), NNAPI (the vendor's NPU/DSP/GPU driver, optionally one named
# accelerator), or an external delegate library (a vendor NPU delegate such as Qualcomm's QNN
# libQnnTFLiteDelegate.so). `torch`, the suite default phones cannot run, means litert-gpu.
ANDROID_RUNTIMES = runtimes_of("android")  # harness.runtimes: litert-cpu, litert-gpu, litert-nnapi, litert-delegate


def safe_name(text: str) -> str:
    """A path component on the phone: keeps the text (quoting protects it), drops only '/', NUL and newlines."""
    return re.sub(r"[/\x00\n\r]", "_", text)[:120] or "_"


def flag_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise JobFailure("input", f"options.extra.{name} must be true or false, got {value!r}")


def number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise JobFailure("input", f"options.extra.{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise JobFailure("input", f"options.extra.{name} must be finite, got {value!r}")
    return number


def flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


@dataclass(frozen=True)
class ComputeUnit:
    """Where an Android job asks benchmark_model to run: the runtime, the unit's label for reports
    ("gpu", "cpu", "nnapi", "nnapi:qti-dsp", "delegate:libQnnTFLiteDelegate.so"), the flags that select
    it, and for an external delegate the library (host path to push, or device path) and the name of
    the delegate benchmark_model reports applying."""

    runtime: str
    label: str
    flags: tuple[tuple[str, Any], ...]
    use_gpu: bool = False
    library_host: str | None = None  # an external delegate .so on the host, pushed to the device
    library_device: str | None = None
    expect_delegate: str | None = None  # "GPU", "NNAPI", "EXTERNAL" (as benchmark_model names them)


def unit_of(spec: JobSpec, device_dir: str = "") -> ComputeUnit:
    """The compute unit of a job (README "Android", *Compute units*). Raises JobFailure (input) for a
    runtime Android lacks or a bad option."""
    runtime = spec.options.runtime
    extra = spec.options.extra
    try:
        get_runtime(runtime).on("android")
    except UnknownRuntimeError as exc:
        raise JobFailure("input", str(exc)) from None
    if runtime == "litert-nnapi":
        accel = extra.get("nnapi_accelerator_name")
        flags: list[tuple[str, Any]] = [("use_gpu", False), ("use_nnapi", True),
                                        ("nnapi_allow_fp16", spec.options.dtype != "fp32")]
        if accel is not None:
            if not re.fullmatch(r"[A-Za-z0-9_.:-]+", str(accel)):
                raise JobFailure("input", f"options.extra.nnapi_accelerator_name {accel!r} is not an NNAPI device "
                                  "name (e.g. qti-dsp, google-edgetpu; `adb shell dumpsys nnapi` lists them)")
            flags.append(("nnapi_accelerator_name", str(accel)))
        return ComputeUnit(runtime, f"nnapi:{accel}" if accel else "nnapi", tuple(flags), expect_delegate="NNAPI")
    if runtime == "litert-delegate":
        lib = extra.get("external_delegate_path")
        if not lib:
            raise JobFailure("input", "runtime litert-delegate needs the vendor delegate library: --set "
                              "options.extra.external_delegate_path=PATH (a .so on this host, pushed to the phone, "
                              "or an absolute path on the phone, e.g. /vendor/lib64/libQnnTFLiteDelegate.so)")
        local = Path(str(lib)).expanduser()
        if local.is_file():
            host, device = str(local), f"{device_dir}/lib/{safe_name(local.name)}"
        elif str(lib).startswith("/"):
            host, device = None, str(lib)
        else:
            raise JobFailure("input", f"options.extra.external_delegate_path {str(lib)!r} is neither a file on this "
                              "host nor an absolute path on the phone")
        flags = [("use_gpu", False), ("external_delegate_path", device)]
        opts = extra.get("external_delegate_options")
        if opts:
            if isinstance(opts, dict):
                opts = ";".join(f"{k}:{flag_value(v)}" for k, v in opts.items())
            flags.append(("external_delegate_options", str(opts)))
        return ComputeUnit(runtime, f"delegate:{Path(device).name}", tuple(flags), library_host=host,
                           library_device=device, expect_delegate="EXTERNAL")
    use_gpu = runtime == "litert-gpu" or (runtime == "torch" and spec.options.accelerator != "cpu")
    if "use_gpu" in extra:
        use_gpu = flag_bool("use_gpu", extra["use_gpu"])
    if use_gpu:
        return ComputeUnit("litert-gpu", "gpu", (("use_gpu", True),), use_gpu=True, expect_delegate="GPU")
    return ComputeUnit("litert-cpu", "cpu", (("use_gpu", False),))


def runtime_of(spec: JobSpec) -> tuple[str, bool]:
    """(runtime name, use_gpu) of a job: `unit_of` in short."""
    unit = unit_of(spec)
    return unit.runtime, unit.use_gpu


def unit_ran(unit: ComputeUnit, delegates: Any) -> str:
    """The unit a run really used, from what benchmark_model said about the delegates it applied:
    the requested label, with "(partial: N delegate kernels, the rest on the CPU)" when the delegate
    took part of the graph, or "cpu (the X delegate took no node)" when it took none."""
    if unit.expect_delegate is None:
        return unit.label
    d = _applied(unit, delegates)
    if d is None:
        return f"{unit.label} (benchmark_model did not report applying the delegate)"
    coverage = getattr(d, "coverage", None)
    if coverage == "none":
        return f"cpu (the {getattr(d, 'name', '')} delegate took no node)"
    if coverage == "partial":
        kernels = getattr(d, "delegate_kernels", None)
        return f"{unit.label} (partial{f': {kernels} delegate kernels' if kernels else ''}, the rest on the CPU)"
    return unit.label


def _applied(unit: ComputeUnit, delegates: Any) -> Any:
    """The delegate benchmark_model reported applying for `unit` (None: it reported none)."""
    for d in delegates or ():
        name = str(getattr(d, "name", "")).upper()
        if unit.expect_delegate in name or (unit.expect_delegate == "EXTERNAL" and name not in
                                            ("XNNPACK", "GPU", "NNAPI")):
            return d
    return None


def is_compiled_model_tool(supported: set[str] | None) -> bool:
    """Whether a benchmark_model (by the flags its --help lists) is LiteRT 2.x's CompiledModel tool
    (`//litert/tools:benchmark_model`: --use_cpu, --require_full_delegation, --gpu-precision) rather
    than the classic interpreter tool (--use_gpu with --gpu_precision_loss_allowed)."""
    return bool(supported) and "gpu-precision" in supported and "use_cpu" in supported


def allows_cpu(spec: JobSpec) -> bool:
    try:
        return bool(get_runtime("litert-gpu").parse_options(spec.options.extra).allow_cpu_fallback)
    except ValueError:
        return False


def unit_used(unit: ComputeUnit, parsed: Any, args: list[str]) -> str:
    """The unit a run used: from the delegate lines of the classic tool (`unit_ran`); LiteRT's
    CompiledModel tool prints none, and with --require_full_delegation=true it fails rather than split
    a graph, so a run that finished with that flag ran wholly on the unit."""
    if getattr(parsed, "format", "") == "compiled_model" and unit.use_gpu:
        if "--require_full_delegation=true" in args:
            return unit.label
        return (f"{unit.label} (partial or full: CPU fallback was allowed and LiteRT's CompiledModel tool does not "
                "say how much ran on the CPU)")
    return unit_ran(unit, parsed.delegates)


def delegation_used(unit: ComputeUnit, parsed: Any, args: list[str]) -> dict[str, Any]:
    """The run's Delegation (harness.protocol) from the same evidence as `unit_used`: the classic tool's
    delegate line, or LiteRT's CompiledModel tool finishing under --require_full_delegation=true."""
    if unit.expect_delegate is None:
        return {}  # the CPU asked: nothing to delegate
    if getattr(parsed, "format", "") == "compiled_model" and unit.use_gpu:
        full = "--require_full_delegation=true" in args
        return {"state": "full" if full else "unknown", "evidence": "benchmark_model (CompiledModel) " + (
            "finished under --require_full_delegation=true" if full else "with CPU fallback allowed prints no split")}
    d = _applied(unit, parsed.delegates)
    if d is None:
        return {"evidence": "benchmark_model did not report applying the delegate"}
    return {"state": {"complete": "full", "partial": "partial", "none": "none"}[d.coverage],
            "delegated_nodes": d.delegate_kernels, "evidence": f"benchmark_model: {d.name} delegate, coverage {d.coverage}"}


def benchmark_flags(spec: JobSpec, graph: str, *, supported: set[str] | None,
                    result_file: str | None = None, device_dir: str = "") -> tuple[list[str], list[str]]:
    """The benchmark_model arguments of a job, and the requested flags this binary lacks.

    `supported` is the set of flag names the binary's --help lists (None: unknown, every standard
    flag is passed and `result_file_path` is left out). Raises JobFailure for bad option values,
    and when the GPU is wanted but the binary has no --use_gpu.
    """
    extra = spec.options.extra
    m = spec.measure
    unit = unit_of(spec, device_dir)
    use_gpu = unit.use_gpu
    wanted: list[tuple[str, Any]] = [
        ("graph", graph),
        ("num_runs", max(1, int(m.iterations))),
        ("warmup_runs", max(0, int(m.warmup_runs))),
        ("warmup_min_secs", number("warmup_min_secs", extra.get("warmup_min_secs", 0.0))),
        ("min_secs", float(m.min_seconds)),
        ("max_secs", float(m.max_seconds)),
    ]
    threads = extra.get("num_threads", spec.options.threads)
    if threads is not None and int(number("num_threads", threads)) > 0:
        wanted.append(("num_threads", int(number("num_threads", threads))))
    wanted.extend(unit.flags)
    if use_gpu:
        compiled = is_compiled_model_tool(supported)
        try:
            gpu_opts = get_runtime("litert-gpu").parse_options(extra)
        except ValueError as exc:
            raise JobFailure("input", str(exc)) from None
        backend = extra.get("gpu_backend")
        if backend is not None:
            known = ("opencl", "webgpu", "opengl", "gl") if compiled else ("cl", "gl")
            if str(backend) not in known:
                tool = "LiteRT 2.x's CompiledModel benchmark_model" if compiled else "this benchmark_model"
                raise JobFailure("input", f"options.extra.gpu_backend must be one of {', '.join(known)} for {tool}, "
                                  f"got {backend!r}")
            if not (compiled and str(backend) == "opencl"):  # the CompiledModel tool's default is OpenCL
                wanted.append(("gpu_backend", str(backend)))
        if compiled:  # LiteRT 2.x: accelerators by flag; full delegation unless the CPU may take the rest
            wanted.append(("use_cpu", gpu_opts.allow_cpu_fallback))
            wanted.append(("require_full_delegation", not gpu_opts.allow_cpu_fallback))
            fp32 = gpu_opts.precision == "fp32" or spec.options.dtype == "fp32"
            wanted.append(("gpu-precision", "fp32" if fp32 else "fp16"))
        else:
            # fp16, and int8 weight-only (weights dequantized, compute in fp16 like CUDA int8 jobs): fp16 GPU math.
            precision = extra.get("gpu_precision_loss_allowed",
                                  spec.options.dtype != "fp32" and gpu_opts.precision != "fp32")
            wanted.append(("gpu_precision_loss_allowed", flag_bool("gpu_precision_loss_allowed", precision)))
            if supported is None or "require_full_delegation" in supported:
                wanted.append(("require_full_delegation", not gpu_opts.allow_cpu_fallback))
    if "run_delay" in extra:
        wanted.append(("run_delay", number("run_delay", extra["run_delay"])))
    if flag_bool("enable_op_profiling", extra.get("enable_op_profiling", False)):
        wanted.append(("enable_op_profiling", True))
    if flag_bool("report_peak_memory_footprint", extra.get("report_peak_memory_footprint", True)):
        wanted.append(("report_peak_memory_footprint", True))
    if result_file is not None and supported is not None and "result_file_path" in supported:
        wanted.append(("result_file_path", result_file))
    user_flags = extra.get("flags") or {}
    if not isinstance(user_flags, dict):
        raise JobFailure("input", "options.extra.flags must map benchmark_model flag names to values")
    for name, value in user_flags.items():
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", str(name)):
            raise JobFailure("input", f"options.extra.flags: {name!r} is not a benchmark_model flag name")
        wanted = [(n, v) for n, v in wanted if n != name] + [(str(name), value)]
    args: list[str] = []
    missing: list[str] = []
    for name, value in wanted:
        if supported is not None and name not in supported:
            if name == "use_gpu" and value is True:
                raise JobFailure("input", "this benchmark_model has no --use_gpu flag (built without the GPU "
                                  "delegate); use a build with GPU support, or runtime litert-cpu")
            if name in ("use_nnapi", "external_delegate_path"):
                raise JobFailure("input", f"this benchmark_model has no --{name} flag, so runtime {unit.runtime} "
                                  "cannot reach its unit; use a full build of LiteRT's benchmark_model (README "
                                  "'Android'), or runtime litert-gpu / litert-cpu")
            missing.append(name)
            continue
        args.append(f"--{name}={flag_value(value)}")
    return args, missing

