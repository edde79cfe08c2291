"""LiteRT's GPU accelerator on the host: ML Drift over WebGPU (Dawn), ai-edge-litert's
`libLiteRtWebGpuAccelerator.so`, reached through `CompiledModel` with `HardwareAccelerator.GPU`.

It runs on whatever Vulkan adapter Dawn takes: an NVIDIA GPU through its Vulkan driver, or, on a
machine without one, SwiftShader (a Vulkan GPU in software that Debian's `chromium` package ships:
`VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json`; Dawn names it "adapterType=CPU /
Software" and every figure from it is a CPU emulation's, labelled so). Mesa's lavapipe is refused by
Dawn (no shaderUniform*ArrayDynamicIndexing).

What this module gives:
* `probe(path, ...)` compiles a .tflite in a child process (an engine crash is a report, never a dead
  harness) and returns a `ProbeReport`: the adapter, whether the graph is wholly on the GPU, the ops
  the engine refused with its reasons, ops on GPU / CPU, the driver that worked; `explain` names each
  refused op's nodes and the torch module they came from.
* `parse_engine_log(text)`: the engine's stderr as data (tested on captured logs).
* `GpuModel`: a compiled model to time (inputs in signature order, run, outputs).
* `gpu_memory_bytes()`: this process's GPU memory from NVML (NVIDIA) or None.

Known engine limits (ai-edge-litert 2.1.6 to 2.3.0; README "The phone GPU engine on this host"):
every STABLEHLO_COMPOSITE crashes the accelerator while it builds its kernel: it marks the
composite's decomposition subgraph through `tflite::Subgraph`'s `subgraphs_` at offset 0x230 of its
own build of the class, where the runtime library's build keeps another field (its `subgraphs_` is at
0xf0): a null pointer, a segfault. `scripts/gpu_composite_repro.py` reproduces it with one
`odml.rms_norm`.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Where Debian's chromium puts SwiftShader's Vulkan ICD (and other places distributions use).
SWIFTSHADER_ICDS: tuple[str, ...] = (
    "/usr/lib/chromium/vk_swiftshader_icd.json",
    "/usr/lib64/chromium/vk_swiftshader_icd.json",
    "/usr/lib/chromium-browser/vk_swiftshader_icd.json",
)
DRIVER_ENV = ("VK_ICD_FILENAMES", "VK_DRIVER_FILES")
PROBE_TIMEOUT_S = 1800.0


# ------------------------------------------------------------------------------------ the engine log

@dataclass
class Adapter:
    name: str = ""
    backend: str = ""
    type: str = ""  # Dawn's adapterType: "Discrete GPU", "Integrated GPU", "CPU / Software", ...
    vendor: str = ""
    arch: str = ""

    @property
    def software(self) -> bool:
        """True for a CPU emulation of a GPU (SwiftShader): its figures are not a GPU's."""
        t = self.type.lower()
        return "cpu" in t or "software" in t or "swiftshader" in self.name.lower()

    def label(self) -> str:
        kind = "CPU emulation" if self.software else (self.type or "GPU")
        return f"{self.name} ({kind}, {self.backend})" if self.backend else f"{self.name} ({kind})"


@dataclass
class Rejection:
    op: str  # the op type as the engine names it (BROADCAST_TO, DEQUANTIZE, ...)
    reason: str  # the engine's reason; "" for ops that follow the CPU partition (constant DEQUANTIZE)


@dataclass
class EngineLog:
    adapter: Adapter | None = None
    rejected: list[Rejection] = field(default_factory=list)
    ops_on_gpu: int | None = None
    ops_on_cpu: int | None = None
    errors: list[str] = field(default_factory=list)  # the engine's ERROR lines and messages
    no_adapter: bool = False


_ADAPTER = re.compile(r"Selected adapter: (?P<name>.*?), arch=(?P<arch>[^,]*), vendor=(?P<vendor>[^,]*), "
                      r"backend=(?P<backend>[^,]*), adapterType=(?P<type>.*)$")
_SPLIT = re.compile(r"(?P<gpu>\d+) operations will run on the GPU, and the remaining (?P<cpu>\d+) operations "
                    r"will run on the CPU")
_NONE_ON_GPU = re.compile(r"No operations will run on the GPU, and all (?P<cpu>\d+) operations will run on the CPU")
_REJECTED = re.compile(r"^(?P<op>[A-Z][A-Z0-9_]*): ?(?P<reason>.*)$")


def parse_engine_log(text: str) -> EngineLog:
    """The facts in the GPU accelerator's stderr: the adapter Dawn selected, the ops it refused (the
    block after "Following operations are not supported by GPU delegate:"), the GPU/CPU split, errors."""
    log = EngineLog()
    lines = text.splitlines()
    in_rejects = False
    for raw in lines:
        line = raw.strip()
        m = _ADAPTER.search(line)
        if m:
            log.adapter = Adapter(**{k: v.strip() for k, v in m.groupdict().items()})
            continue
        if "Following operations are not supported by GPU delegate" in line:
            in_rejects = True
            continue
        m = _SPLIT.search(line)
        if m:
            log.ops_on_gpu, log.ops_on_cpu = int(m["gpu"]), int(m["cpu"])
            in_rejects = False
            continue
        m = _NONE_ON_GPU.search(line)
        if m:
            log.ops_on_gpu, log.ops_on_cpu = 0, int(m["cpu"])
            in_rejects = False
            continue
        if in_rejects:
            m = _REJECTED.match(line)
            if m:
                reason = m["reason"].strip()
                if reason.startswith(m["op"] + ":"):  # "EMBEDDING_LOOKUP: EMBEDDING_LOOKUP: Empty ..."
                    reason = reason[len(m["op"]) + 1:].strip()
                log.rejected.append(Rejection(m["op"], reason))
                continue
            in_rejects = False
        if "No adapters found" in line:
            log.no_adapter = True
        if (line.startswith(("ERROR:", "E0000")) or "Failed to" in line) and "openvino" not in line.lower() \
                and "Dispatch API" not in line and "NPU accelerator" not in line:
            log.errors.append(line)
    return log


# ------------------------------------------------------------------------------------ Vulkan drivers

def swiftshader_icd() -> str | None:
    for path in SWIFTSHADER_ICDS:
        if Path(path).is_file():
            return path
    return None


def driver_env(driver: str) -> dict[str, str | None]:
    """Environment changes for a driver choice: "environment" (as set), "system" (the loader's own
    search: the ICD variables removed), "swiftshader", or an ICD json path. None values unset a name."""
    if driver == "environment":
        return {}
    if driver == "system":
        return {name: None for name in DRIVER_ENV}
    path = swiftshader_icd() if driver == "swiftshader" else driver
    if not path or not Path(path).is_file():
        what = "SwiftShader's Vulkan ICD (install Debian's chromium: apt-get install chromium)" \
            if driver == "swiftshader" else f"the Vulkan ICD file {driver!r}"
        raise ValueError(f"options.extra.vulkan_driver: {what} was not found")
    return {"VK_ICD_FILENAMES": path, "VK_DRIVER_FILES": None}


# The driver `auto` settled on in this process (the system's drivers are not tried again for every file).
_AUTO_CHOICE: dict[str, str] = {}


def gpu_device_nodes() -> bool:
    """Whether this machine shows a GPU to user space (a DRM render node or an NVIDIA device)."""
    import glob

    return bool(glob.glob("/dev/dri/renderD*") or glob.glob("/dev/nvidia[0-9]*"))


def driver_candidates(choice: str) -> list[str]:
    """The drivers `auto` tries, in order: the environment's when it names one; else the system's, then
    SwiftShader (where installed), SwiftShader first on a machine that shows no GPU device (the system's
    drivers can only offer a software adapter there); once one gave an adapter in this process, that one."""
    if choice != "auto":
        return [choice]
    if any(os.environ.get(name) for name in DRIVER_ENV):
        return ["environment"]
    if "auto" in _AUTO_CHOICE:
        return [_AUTO_CHOICE["auto"]]
    if not swiftshader_icd():
        return ["system"]
    return ["system", "swiftshader"] if gpu_device_nodes() else ["swiftshader", "system"]


def apply_env(changes: dict[str, str | None], env: dict[str, str] | os._Environ = os.environ) -> None:
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    if not env.get("XDG_RUNTIME_DIR"):  # Dawn's Vulkan backend complains without one
        env["XDG_RUNTIME_DIR"] = "/tmp"


# ------------------------------------------------------------------------------------ the probe

@dataclass
class ProbeReport:
    """What compiling one .tflite on the GPU accelerator showed (`probe`)."""

    path: str
    compiled: bool = False  # a CompiledModel was created (with allow_cpu: possibly split)
    fully_accelerated: bool = False
    allow_cpu: bool = False
    precision: str = "auto"
    driver: str = ""  # the driver choice that was used (harness.runtimes.litert_gpu.driver_env)
    adapter: Adapter | None = None
    rejected: list[Rejection] = field(default_factory=list)
    ops_on_gpu: int | None = None
    ops_on_cpu: int | None = None
    crashed: bool = False  # the engine killed the process (signal)
    signal: int | None = None
    error: str = ""  # why it did not compile (the engine's message), "" when it did
    log_tail: str = ""
    tried: list[dict[str, Any]] = field(default_factory=list)  # earlier drivers of `auto` and why not

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProbeReport":
        data = dict(data)
        adapter = data.pop("adapter", None)
        rejected = data.pop("rejected", [])
        return cls(**data, adapter=Adapter(**adapter) if adapter else None,
                   rejected=[Rejection(**r) for r in rejected])

    def summary(self) -> str:
        where = self.adapter.label() if self.adapter else "no GPU adapter"
        if self.crashed:
            return f"the GPU engine crashed (signal {self.signal}) compiling the graph on {where}"
        if self.fully_accelerated:
            return f"fully accelerated ({where})"
        if self.rejected or self.ops_on_cpu:
            ops = ", ".join(r.op for r in self.rejected if r.reason) or "see the log"
            split = f"{self.ops_on_gpu} ops on the GPU, {self.ops_on_cpu} on the CPU" \
                if self.ops_on_cpu is not None else "not wholly on the GPU"
            return f"not fully accelerated on {where}: {split}; refused: {ops}"
        return f"did not compile on the GPU ({where}): {self.error or 'see the log'}"


def _child_main(path: str, allow_cpu: bool, precision: str) -> int:
    """In the probe's child: compile and print one JSON line (the log goes to stderr)."""
    out = {"compiled": False, "fully_accelerated": False, "error": ""}
    try:
        model = compile_model(path, allow_cpu=allow_cpu, precision=precision)
        out["compiled"] = True
        out["fully_accelerated"] = bool(model.is_fully_accelerated())
    except Exception as exc:  # noqa: BLE001 - the engine's message is the result
        out["error"] = str(exc).strip().splitlines()[-1][:2000] if str(exc).strip() else type(exc).__name__
    sys.stderr.flush()
    print("@@probe " + json.dumps(out), flush=True)
    os._exit(0)  # skip teardown: the engine now and then segfaults in it after a good run


def _run_child(path: str, allow_cpu: bool, precision: str, changes: dict[str, str | None],
               timeout_s: float) -> tuple[int, str, dict[str, Any] | None]:
    env = dict(os.environ)
    apply_env(changes, env)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "harness.runtimes.litert_gpu", "probe", str(path), "--precision", precision]
    if allow_cpu:
        cmd.append("--allow-cpu")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return -9, err + f"\nthe probe ran past {timeout_s:.0f} s", None
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("@@probe "):
            result = json.loads(line[len("@@probe "):])
    return proc.returncode, proc.stderr, result


def probe(path: str | os.PathLike, *, allow_cpu: bool = False, precision: str = "auto",
          driver: str = "auto", timeout_s: float = PROBE_TIMEOUT_S) -> ProbeReport:
    """Compile `path` on the GPU accelerator in a child process and report what happened (see
    ProbeReport). `driver` as LiteRtGpuOptions.vulkan_driver; `auto` tries the candidates until one
    gives an adapter."""
    report = ProbeReport(path=str(path), allow_cpu=allow_cpu, precision=precision)
    candidates = driver_candidates(driver)
    for candidate in candidates:
        changes = driver_env(candidate)
        rc, stderr, result = _run_child(str(path), allow_cpu, precision, changes, timeout_s)
        log = parse_engine_log(stderr)
        if log.no_adapter and candidate != candidates[-1]:
            report.tried.append({"driver": candidate, "why": "no adapter (Dawn refused the drivers it found)"})
            continue
        report.driver = candidate
        if driver == "auto" and log.adapter is not None:
            _AUTO_CHOICE["auto"] = candidate
        report.adapter, report.rejected = log.adapter, log.rejected
        report.ops_on_gpu, report.ops_on_cpu = log.ops_on_gpu, log.ops_on_cpu
        report.log_tail = "\n".join(line for line in stderr.splitlines()
                                    if not line.startswith(("INFO:", "I0000")))[-4000:]
        if result is None:
            report.crashed = rc < 0
            report.signal = -rc if rc < 0 else None
            report.error = (f"the engine killed the process (signal {-rc})" if rc < 0 else
                            f"the probe exited with code {rc} without a result")
            return report
        report.compiled = bool(result["compiled"])
        report.fully_accelerated = bool(result["fully_accelerated"])
        report.error = result.get("error", "")
        if log.no_adapter:
            report.error = ("no Vulkan adapter: install a GPU's Vulkan driver and the loader (libvulkan1), or "
                            "SwiftShader (Debian's chromium) for a CPU emulation")
        elif not report.compiled and not report.error:
            report.error = "; ".join(log.errors[-3:])
        if report.compiled and report.ops_on_gpu is None and report.fully_accelerated:
            pass  # a wholly delegated graph prints no split line
        return report
    return report


def explain(report: ProbeReport, graph: Any) -> list[str]:
    """One line per refused op type: the engine's reason, the nodes of that type in `graph`
    (harness.export.graph.Graph) and the torch modules they came from."""
    from harness.export.graph import location_modules

    lines = []
    for rej in report.rejected:
        nodes = [op for op in graph.ops if op.type == rej.op]
        if not rej.reason:
            why = ("follows the CPU side: constant DEQUANTIZE nodes go to the GPU only when the whole graph "
                   "does" if rej.op == "DEQUANTIZE" else "no reason given (follows the CPU partition)")
        else:
            why = rej.reason
        where = "; ".join(f"node {op.index} ({location_modules(op.location) or 'no module recorded'})"
                          for op in nodes[:8])
        more = f"; and {len(nodes) - 8} more" if len(nodes) > 8 else ""
        lines.append(f"{rej.op} x{len(nodes)}: {why}" + (f" - {where}{more}" if where else ""))
    if report.crashed:
        composites = graph.composites() if hasattr(graph, "composites") else {}
        if composites:
            names = ", ".join(f"{k} x{v}" for k, v in composites.items())
            lines.append(f"the graph holds composite ops ({names}); this GPU engine crashes on every "
                         "STABLEHLO_COMPOSITE (reproducer: python scripts/gpu_composite_repro.py)")
    return lines


# ------------------------------------------------------------------------------------ in process

def _environment():
    import ai_edge_litert
    from ai_edge_litert.compiled_model import Environment

    return Environment.create(runtime_path=os.path.dirname(ai_edge_litert.__file__))


def compile_model(path: str | os.PathLike, *, allow_cpu: bool = False, precision: str = "auto"):
    """A CompiledModel of `path` on the GPU accelerator (GPU|CPU with allow_cpu), in benchmark mode:
    `run_by_index` returns once the GPU has finished (without it, it returns after queueing the work and
    the time shows up in the first output read: measured 9.8 ms vs 1,433 ms for one tiny-UNet run on
    SwiftShader; LiteRT's own benchmark_model sets the same mode). Set the driver's environment
    (`apply_env(driver_env(...))`) first: the Vulkan loader reads it when first used."""
    from ai_edge_litert.compiled_model import CompiledModel, GpuOptions, HardwareAccelerator, Options

    accel = HardwareAccelerator.GPU | HardwareAccelerator.CPU if allow_cpu else HardwareAccelerator.GPU
    options = Options(hardware_accelerators=accel,
                      gpu_options=GpuOptions(enforce_f32=precision == "fp32", benchmark_mode=True))
    return CompiledModel.from_file(str(path), options=options, environment=_environment())


class GpuModel:
    """A compiled .tflite on the GPU accelerator: inputs/outputs of its first signature in order, as
    numpy arrays. `run()` is CompiledModel.run_by_index, which in benchmark mode (`compile_model`)
    returns when the GPU has finished."""

    def __init__(self, path: str | os.PathLike, *, allow_cpu: bool = False, precision: str = "auto"):
        import numpy as np

        self.path = str(path)
        self.model = compile_model(path, allow_cpu=allow_cpu, precision=precision)
        self.fully_accelerated = bool(self.model.is_fully_accelerated())
        sig = self.model.get_signature_by_index(0)
        key = sig.get("key") or "serving_default"
        ins = self.model.get_input_tensor_details(key)
        outs = self.model.get_output_tensor_details(key)
        self.inputs = [{"name": n, "shape": np.asarray(ins[n]["shape"]), "dtype": ins[n]["dtype"]}
                       for n in sig["inputs"]]
        self.outputs = [{"name": n, "shape": np.asarray(outs[n]["shape"]), "dtype": outs[n]["dtype"]}
                        for n in sig["outputs"]]
        self._in = self.model.create_input_buffers(0)
        self._out = self.model.create_output_buffers(0)

    def set_inputs(self, arrays) -> None:
        import numpy as np

        if len(arrays) != len(self.inputs):
            raise ValueError(f"{self.path} takes {len(self.inputs)} inputs "
                             f"({[i['name'] for i in self.inputs]}), got {len(arrays)}")
        for desc, buf, arr in zip(self.inputs, self._in, arrays):
            buf.write(np.array(arr, dtype=desc["dtype"], order="C").reshape(tuple(int(d) for d in desc["shape"])))

    def run(self) -> None:
        self.model.run_by_index(0, self._in, self._out)

    def output(self, index: int = 0):
        import numpy as np

        desc = self.outputs[index]
        n = int(np.prod(desc["shape"]))
        return self._out[index].read(n, desc["dtype"]).reshape(desc["shape"])


def gpu_memory_bytes(pid: int | None = None) -> tuple[int | None, str]:
    """(bytes of GPU memory the process holds, how it was read): NVML's per-process figure on NVIDIA
    (graphics and compute contexts: Dawn's Vulkan device is one), else (None, why not)."""
    pid = os.getpid() if pid is None else pid
    try:
        import pynvml
    except ImportError:
        return None, "not measured: NVML (the nvidia-ml-py package) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - no NVIDIA driver
        return None, f"not measured: NVML is not available ({exc})"
    try:
        total = 0
        found = False
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            procs = []
            for getter in ("nvmlDeviceGetGraphicsRunningProcesses", "nvmlDeviceGetComputeRunningProcesses"):
                try:
                    procs += list(getattr(pynvml, getter)(handle))
                except Exception:  # noqa: BLE001
                    pass
            for p in procs:
                if p.pid == pid and p.usedGpuMemory is not None:
                    total += int(p.usedGpuMemory)
                    found = True
        if not found:
            return None, "not measured: NVML lists no GPU memory for this process (per-process accounting off?)"
        return total, "nvml_process_used_gpu_memory"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.runtimes.litert_gpu",
                                     description="Compile a .tflite on LiteRT's GPU accelerator and report.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe", help="compile in this process; print one @@probe JSON line (used by probe())")
    p.add_argument("path")
    p.add_argument("--allow-cpu", action="store_true")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32"))
    r = sub.add_parser("report", help="probe in a child process and print the report as JSON")
    r.add_argument("path")
    r.add_argument("--allow-cpu", action="store_true")
    r.add_argument("--precision", default="auto", choices=("auto", "fp32"))
    r.add_argument("--driver", default="auto")
    args = parser.parse_args(argv)
    if args.cmd == "probe":
        return _child_main(args.path, args.allow_cpu, args.precision)
    rep = probe(args.path, allow_cpu=args.allow_cpu, precision=args.precision, driver=args.driver)
    print(json.dumps(rep.to_dict(), indent=2))
    return 0 if rep.fully_accelerated else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
