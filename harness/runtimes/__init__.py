"""The runtime registry: every runtime a suite can name (`options.runtime`), in one explicit dict.

A runtime is what executes a job's model: its artifact format (None: the runtime builds the model
itself), the device kinds that run it, the compute unit it reports, and the options model of the
keys it reads from `options.extra`. Suite validation (an unknown runtime fails at suite load with
file:line), export (which format a run needs) and every device kind (what it accepts) read it here.

    from harness.runtimes import get_runtime
    rt = get_runtime("litert-gpu")      # UnknownRuntimeError names the known runtimes
    rt.artifact, rt.devices, rt.unit    # "tflite", ("host", "android"), "gpu"
    rt.parse_options(spec.options.extra)  # LiteRtGpuOptions(allow_cpu_fallback=False, ...)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError


class UnknownRuntimeError(ValueError):
    """A runtime name the registry does not know, or one a device kind cannot run."""


class _Options(BaseModel):
    # options.extra also holds device-specific knobs (benchmark_model flags): keys a runtime does not
    # own are left to the device that reads them.
    model_config = ConfigDict(extra="ignore")


class NoOptions(_Options):
    pass


class LiteRtGpuOptions(_Options):
    """`options.extra` keys of runtime litert-gpu (host: LiteRT's GPU accelerator through CompiledModel;
    Android: benchmark_model's GPU delegate)."""

    # Let ops the GPU refuses run on the CPU. Off: a graph that is not wholly on the GPU fails the row
    # naming the refused ops. On: the row runs split and is marked "partial" with ops on GPU / CPU.
    allow_cpu_fallback: bool = False
    # auto: the engine's choice (fp16 math where the adapter has it); fp32: GpuOptions(enforce_f32=True)
    precision: Literal["auto", "fp32"] = "auto"
    # Host only. auto: $VK_ICD_FILENAMES / $VK_DRIVER_FILES when set, else the system's Vulkan drivers,
    # else SwiftShader (Debian's chromium; a CPU emulation, labelled so); system; swiftshader; or the
    # path of a Vulkan ICD json.
    vulkan_driver: str = "auto"


@dataclass(frozen=True)
class Runtime:
    name: str
    artifact: str | None  # the artifact format it runs (harness.export FORMATS), None: builds the model itself
    devices: tuple[str, ...]  # device kinds (harness.devices.base.KINDS) that run it
    unit: str  # the compute unit it reports: cpu, gpu, npu, cpu|cuda (the accelerator option), ...
    description: str
    options: type[_Options] = NoOptions
    # What the name means on a device kind that runs something else under it (torch on a phone).
    aliases: dict[str, str] = field(default_factory=dict)

    def parse_options(self, extra: dict[str, Any] | None) -> _Options:
        """The runtime's options from `options.extra`; ValueError naming the key and the fix."""
        try:
            return self.options.model_validate(extra or {})
        except ValidationError as exc:
            problems = "; ".join(f"options.extra.{'.'.join(str(p) for p in e['loc'])}: "
                                 f"{e['msg']} (got {e.get('input')!r})" for e in exc.errors())
            raise ValueError(f"runtime {self.name}: {problems}") from None

    def on(self, kind: str) -> str:
        """The runtime that runs on device kind `kind` under this name (itself, or its alias there);
        UnknownRuntimeError when the kind cannot run it."""
        if kind in self.aliases:
            return self.aliases[kind]
        if kind not in self.devices:
            where = ", ".join(self.devices)
            others = ", ".join(n for n, r in RUNTIMES.items() if kind in r.devices)
            raise UnknownRuntimeError(f"runtime {self.name!r} does not run on {kind} devices (it runs on: {where}); "
                                      f"runtimes of {kind}: {others}")
        return self.name


RUNTIMES: dict[str, Runtime] = {
    "torch": Runtime(
        "torch", None, ("host", "android", "ios", "aihub"), "cpu|cuda",
        "the diffusers model with the variant's kernels in PyTorch (CPU, or CUDA with accelerator=cuda)",
        aliases={"android": "litert-gpu", "ios": "coreml", "aihub": "litert-gpu"}),
    "litert-cpu": Runtime(
        "litert-cpu", "tflite", ("host", "android", "aihub"), "cpu",
        "the variant's .tflite through LiteRT on the CPU (XNNPACK): ai-edge-litert's Interpreter on the "
        "host, benchmark_model on a phone"),
    "litert-gpu": Runtime(
        "litert-gpu", "tflite", ("host", "android", "aihub"), "gpu",
        "the variant's .tflite on LiteRT's GPU engine (ML Drift): ai-edge-litert's CompiledModel with the "
        "GPU accelerator on the host (Vulkan: a GPU, or SwiftShader), benchmark_model's GPU delegate on a "
        "phone; never a silent CPU fallback", LiteRtGpuOptions),
    "litert-nnapi": Runtime(
        "litert-nnapi", "tflite", ("android",), "npu",
        "the .tflite through Android's NNAPI (the vendor's NPU/DSP/GPU driver)"),
    "litert-delegate": Runtime(
        "litert-delegate", "tflite", ("android", "aihub"), "npu",
        "the .tflite through a vendor delegate library (e.g. Qualcomm's QNN delegate; on AI Hub: --compute_unit npu)"),
    "coreml": Runtime(
        "coreml", "coreml", ("ios",), "gpu|ane|cpu",
        "the variant's .mlpackage through Core ML on an iPhone (options.compute_units)"),
}


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except (KeyError, TypeError):
        raise UnknownRuntimeError(f"unknown runtime {name!r}; known runtimes: {', '.join(RUNTIMES)}") from None


def runtimes_of(kind: str) -> tuple[str, ...]:
    """The runtime names device kind `kind` runs (its own, not aliases)."""
    return tuple(n for n, r in RUNTIMES.items() if kind in r.devices and kind not in r.aliases)


def artifact_format(name: str) -> str | None:
    return get_runtime(name).artifact
