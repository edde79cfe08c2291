"""A stand-in for LiteRT's native ``benchmark_model``, for tests against the fake adb server.

It runs the ``--graph`` .tflite on the host CPU through ai-edge-litert's Interpreter and prints what
the real tool prints, in its format (``tflite/tools/benchmark/benchmark_model.cc``: the parameter
log, "Running benchmark for at least N iterations ...", the ``count=.. first=.. curr=.. min=..
max=.. avg=.. std=.. p5=.. median=.. p95=..`` stat lines, "Inference timings in us: ...", the memory
footprint lines; with ``--enable_op_profiling=true`` the "Summary by node type" table), all on
stderr with ``INFO:`` prefixes as TFLITE_LOG does. ``--help`` prints the flag list (Flags::Usage
layout) and exits 1, as the real tool does.

What is measured and what is not:
- init, every warm-up and timed run, the run loop's min_secs/max_secs/run_delay logic: measured
  for real on the host CPU (time.perf_counter_ns, microseconds as the tool prints them);
- memory: the process's real RSS (``/proc/self/statm``) and peak RSS (``ru_maxrss``);
- op profiling: the Python Interpreter has no per-op profiler, so each node gets an equal share
  of the measured average run time. The node types and counts are the model's real ones; the
  per-type times are NOT measurements (tests use them to check the parse path only);
- ``--use_gpu=true`` is real: the graph runs on LiteRT's GPU accelerator (ai-edge-litert's
  CompiledModel: a Vulkan GPU, or SwiftShader where Debian's chromium is installed) and the tool's own
  delegate line says whether the GPU took the whole graph ("completely executed") or part of it
  ("partially executed ... w/ 1 delegate kernels": the WebGPU delegate takes one partition);
  ``--require_full_delegation=true`` fails a graph the GPU does not take wholly, as the real tool does.
  Without a usable GPU adapter the tool's "Failed to apply GPU delegate." error. Op profiling
  profiles the CPU interpreter only. ``--result_file_path`` is not supported (the tool's result proto
  schema is not available here), so it is not listed by ``--help`` and is reported as unconsumed.
- ``--use_nnapi=true``: there is no NNAPI here; it prints the real tool's line for a delegate that
  took no node ("Though NNAPI delegate is explicitly applied, ...") and runs on the CPU;
- ``--external_delegate_path``: loaded as the real tool does (a delegate library, here through
  ai-edge-litert's load_delegate); a file that is no delegate fails the run with the tool's ERROR lines.

Fault switches, read at start from ``$BENCHMARK_MODEL_STANDIN_FAULT`` or else from the file
``benchmark_model.fault`` next to this executable (one word; ``WORD once`` deletes the file after
it fired; ``WORD graph=TEXT`` fires only for a ``--graph`` path containing TEXT, so that one model of
several fails): ``crash`` (logs the start, then dies of SIGSEGV: exit status 139 in a shell), ``fail``
(the tool's own failure: ERROR lines, "Benchmarking failed.", exit 1), ``garbage`` (prints text
that is not benchmark_model output, exit 0), ``hang`` (loads the model, then sleeps forever).

LiteRT 2.x's CompiledModel tool (``//litert/tools:benchmark_model``) is the second personality
(``write_standin(path, tool="compiled_model")``): its flags (``--use_cpu``, ``--use_gpu``,
``--require_full_delegation``, ``--gpu_backend``, ``--gpu-precision``) and its "BENCHMARK RESULTS"
block (``litert/tools/benchmark_litert_model.h``). Its ``--use_gpu=true`` is real: the graph is
compiled by ai-edge-litert's CompiledModel on LiteRT's GPU accelerator (a Vulkan GPU, or SwiftShader
where Debian's chromium is installed); a graph the GPU refuses fails to compile under
``--require_full_delegation=true``, as the real tool does, and runs split with ``--use_cpu=true``.

Install it as an executable with :func:`write_standin` (it puts this venv's Python in the #!
line), then push that file as ``benchmark_model``.
"""
from __future__ import annotations

import math
import os
import resource
import signal
import sys
import time
from pathlib import Path

TOOL = "classic"  # write_standin(..., tool="compiled_model") writes the other personality
FAULT_ENV = "BENCHMARK_MODEL_STANDIN_FAULT"
FAULT_FILE_NAME = "benchmark_model.fault"
FAULTS = ("crash", "fail", "garbage", "hang")

# name -> (default shown by --help, type, description): the real tool's flags this stand-in honours.
FLAGS: dict[str, tuple[str, str, str]] = {
    "num_runs": ("50", "int32", "expected number of runs, see also min_secs, max_secs"),
    "min_secs": ("1", "float", "minimum number of seconds to rerun for"),
    "max_secs": ("150", "float", "maximum number of seconds to rerun for"),
    "run_delay": ("-1", "float", "delay between runs in seconds"),
    "num_threads": ("-1", "int32", "number of threads"),
    "warmup_runs": ("1", "int32", "minimum number of runs performed on initialization"),
    "warmup_min_secs": ("0.5", "float", "minimum number of seconds to rerun for (warm-up)"),
    "verbose": ("false", "bool", "log parameters whose values are not set"),
    "report_peak_memory_footprint": ("false", "bool", "report the peak memory footprint"),
    "memory_footprint_check_interval_ms": ("50", "int32", "interval of the peak memory checks"),
    "graph": ("", "string", "graph file name"),
    "enable_op_profiling": ("false", "bool", "enable op profiling"),
    "use_gpu": ("false", "bool", "use gpu"),
    "gpu_backend": ("", "string", "force the GPU backend: cl or gl"),
    "gpu_precision_loss_allowed": ("true", "bool", "allow fp16 precision in the GPU delegate"),
    "require_full_delegation": ("false", "bool", "Complete the benchmark only if the model is fully delegated."),
    "use_xnnpack": ("true", "bool", "use the XNNPACK delegate on the CPU"),
    "use_nnapi": ("false", "bool", "use nnapi delegate api"),
    "nnapi_accelerator_name": ("", "string", "the name of the nnapi accelerator to use"),
    "nnapi_allow_fp16": ("false", "bool", "allow fp32 computation to be run in fp16"),
    "external_delegate_path": ("", "string", "The library path for the underlying external."),
    "external_delegate_options": ("", "string", "A list of comma-separated options to be passed to the "
                                  "external delegate. Each option is a colon-separated key-value pair"),
    "help": ("false", "bool", "print this help"),
}


# LiteRT 2.x's CompiledModel tool: the base tool's run-loop flags plus its accelerator flags.
COMPILED_MODEL_FLAGS: dict[str, tuple[str, str, str]] = {
    **{k: FLAGS[k] for k in ("num_runs", "min_secs", "max_secs", "run_delay", "num_threads", "warmup_runs",
                              "warmup_min_secs", "verbose", "report_peak_memory_footprint",
                              "memory_footprint_check_interval_ms", "help")},
    "graph": ("", "string", "The path to the model file."),
    "signature_to_run_for": ("", "string", "The signature to run for."),
    "use_cpu": ("true", "bool", "Whether to use CPU accelerator."),
    "use_gpu": ("false", "bool", "Whether to use GPU accelerator."),
    "use_npu": ("false", "bool", "Whether to use NPU accelerator."),
    "require_full_delegation": ("false", "bool", "Whether to require full delegation."),
    "gpu_backend": ("", "string", "GPU backend to use when using GPU accelerator."),
    "gpu-precision": ("auto", "string", "GPU precision option [auto|fp16|fp32]."),
}


def write_standin(path: str | os.PathLike, tool: str = "classic") -> Path:
    """Write this stand-in as an executable file at `path`, run by this Python (with ai-edge-litert):
    tool "classic" (the interpreter tool) or "compiled_model" (LiteRT 2.x's CompiledModel tool)."""
    if tool not in ("classic", "compiled_model"):
        raise ValueError(f"unknown stand-in tool {tool!r}; known: classic, compiled_model")
    path = Path(path)
    source = Path(__file__).read_text().replace('TOOL = "classic"', f'TOOL = {tool!r}', 1)
    path.write_text(f"#!{sys.executable}\n" + source)
    path.chmod(0o755)
    return path


def flag_table() -> dict[str, tuple[str, str, str]]:
    return COMPILED_MODEL_FLAGS if TOOL == "compiled_model" else FLAGS


def log(msg: str, level: str = "INFO") -> None:
    sys.stderr.write(f"{level}: {msg}\n")


def fmt(x: float) -> str:
    """A double as C++ ostream prints it by default (6 significant digits)."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:g}"


def parse_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    values: dict[str, str] = {}
    unconsumed: list[str] = []
    for arg in argv:
        if arg.startswith("--") and "=" in arg and arg[2:].split("=", 1)[0] in flag_table():
            name, value = arg[2:].split("=", 1)
            values[name] = value
        elif arg in ("--help", "-h"):
            values["help"] = "true"
        else:
            unconsumed.append(arg)
    return values, unconsumed


def as_bool(text: str) -> bool:
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise ValueError(text)


def usage() -> str:
    lines = ["usage: benchmark_model", "Flags:"]
    for name, (default, type_name, text) in flag_table().items():
        lines.append(f"\t--{name}={default}\t{type_name}\toptional\t{text}")
    return "\n".join(lines)


def read_fault(graph: str = "") -> str | None:
    text = os.environ.get(FAULT_ENV)
    fault_file = Path(sys.argv[0]).resolve().with_name(FAULT_FILE_NAME)
    from_file = not text and fault_file.is_file()
    if from_file:
        text = fault_file.read_text()
    if not text or not text.split():
        return None
    only = [w[len("graph="):] for w in text.split() if w.startswith("graph=")]
    if only and not any(o in graph for o in only):
        return None
    if from_file and "once" in text.split():
        fault_file.unlink(missing_ok=True)
    word = text.split()[0]
    if word not in FAULTS:
        log(f"stand-in: unknown fault {word!r} (known: {', '.join(FAULTS)})", "ERROR")
        sys.exit(2)
    return word


def rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class Stat:
    """tsl's StatWithPercentiles over int64 microseconds, printed by OutputToStream."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def add(self, us: int) -> None:
        self.values.append(us)

    @property
    def avg(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    def percentile(self, p: int) -> int:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, len(ordered) * p // 100)]

    def line(self) -> str:
        v = self.values
        if not v:
            return "count=0"
        if min(v) == max(v):
            return f"count={len(v)} curr={v[-1]}" + ("(all same)" if len(v) > 1 else "")
        mean = self.avg
        std = int(math.sqrt(max(0.0, sum(x * x for x in v) / len(v) - mean * mean)))
        return (f"count={len(v)} first={v[0]} curr={v[-1]} min={min(v)} max={max(v)} avg={fmt(mean)}"
                f" std={std} p5={self.percentile(5)} median={self.percentile(50)} p95={self.percentile(95)}")


def run_loop(interp, min_runs: int, min_secs: float, max_secs: float, run_delay: float) -> Stat:
    """BenchmarkModel::Run: at least min_runs and min_secs, stop after max_secs."""
    log(f"Running benchmark for at least {min_runs} iterations and at least {fmt(min_secs)} seconds"
        f" but terminate if exceeding {fmt(max_secs)} seconds.")
    stat = Stat()
    start = time.perf_counter()
    now = start
    run = 0
    while (run < min_runs or now - start < min_secs) and now - start <= max_secs:
        t0 = time.perf_counter_ns()
        interp.invoke()
        stat.add((time.perf_counter_ns() - t0) // 1000)
        if run_delay > 0:
            time.sleep(run_delay)
        now = time.perf_counter()
        run += 1
    log(stat.line() + "\n")
    return stat


def op_profile(interp, avg_us: float) -> None:
    """The "Summary by node type" table; every node gets an equal share of the average run time."""
    ops = [op["op_name"] for op in interp._get_ops_details() if op["op_name"] != "DELEGATE"]
    if not ops:
        return
    per_node_ms = avg_us / 1000.0 / len(ops)
    counts: dict[str, int] = {}
    for name in ops:
        counts[name] = counts.get(name, 0) + 1
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    log("Operator-wise Profiling Info for Regular Benchmark Runs:")
    out = ["Primary graph (name: main) profile:",
           "============================== Summary by node type ==============================",
           "\t                             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]"
           "\t  [mem KB]\t[times called]"]
    cdf = 0.0
    for name, count in rows:
        pct = 100.0 * count / len(ops)
        cdf = min(100.0, cdf + pct)
        out.append(f"\t{name:>40}\t{count:>9}\t{count * per_node_ms:>10.3f}\t{pct:>10.3f}%\t{cdf:>10.3f}%"
                   f"\t{0.0:>10.3f}\t{count:>9}")
    out += ["", f"Timings (microseconds): count=1 curr={int(avg_us)}", "Memory (bytes): count=0",
            f"{len(ops)} nodes observed", ""]
    sys.stderr.write("\n".join(out) + "\n")


class CompiledRunner:
    """A CompiledModel with its buffers, run like an Interpreter (`invoke`)."""

    def __init__(self, graph: str, use_gpu: bool, use_cpu: bool, precision: str):
        import ai_edge_litert
        from ai_edge_litert.compiled_model import (
            CompiledModel, Environment, GpuOptions, HardwareAccelerator, Options,
        )

        if use_gpu and not os.environ.get("VK_ICD_FILENAMES") and not os.environ.get("VK_DRIVER_FILES"):
            for icd in ("/usr/lib/chromium/vk_swiftshader_icd.json",):
                if Path(icd).is_file():
                    os.environ["VK_ICD_FILENAMES"] = icd
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
        accel = HardwareAccelerator.CPU
        if use_gpu:
            accel = HardwareAccelerator.GPU | HardwareAccelerator.CPU if use_cpu else HardwareAccelerator.GPU
        env = Environment.create(runtime_path=os.path.dirname(ai_edge_litert.__file__))
        self.model = CompiledModel.from_file(graph, environment=env, options=Options(
            hardware_accelerators=accel, gpu_options=GpuOptions(enforce_f32=precision == "fp32", benchmark_mode=True)))
        self.inputs = self.model.create_input_buffers(0)
        self.outputs = self.model.create_output_buffers(0)
        sig = self.model.get_signature_by_index(0)
        self.details = self.model.get_input_tensor_details(sig.get("key") or "serving_default")
        self.names = sig["inputs"]

    def fill(self, rng) -> None:
        import numpy as np

        for name, buf in zip(self.names, self.inputs):
            d = self.details[name]
            dtype = np.dtype(d["dtype"])
            if np.issubdtype(dtype, np.floating):
                data = rng.uniform(-0.5, 0.5, size=d["shape"]).astype(dtype)
            else:
                data = rng.integers(0, 100, size=d["shape"]).astype(dtype)
            buf.write(data)

    def invoke(self) -> None:
        self.model.run_by_index(0, self.inputs, self.outputs)


def compiled_main(values: dict[str, str], unconsumed: list[str], fault: str | None) -> int:
    """LiteRT 2.x's CompiledModel tool: its checks, the run loops, its BENCHMARK RESULTS block."""
    import numpy as np

    try:
        use_cpu = as_bool(values.get("use_cpu", "true"))
        use_gpu = as_bool(values.get("use_gpu", "false"))
        full = as_bool(values.get("require_full_delegation", "false"))
        num_runs = int(values.get("num_runs", "50"))
        min_secs, max_secs = float(values.get("min_secs", "1")), float(values.get("max_secs", "150"))
        run_delay = float(values.get("run_delay", "-1"))
        warmup_runs = int(values.get("warmup_runs", "1"))
        warmup_min_secs = float(values.get("warmup_min_secs", "0.5"))
        peak = as_bool(values.get("report_peak_memory_footprint", "false"))
    except ValueError as exc:
        log(f"Failed to parse a flag value: {exc}", "ERROR")
        return 1
    precision = values.get("gpu-precision", "auto")
    graph = values.get("graph", "")
    if unconsumed:
        log("Unconsumed cmdline flags: " + " ".join(unconsumed), "WARNING")
    if use_cpu and full:
        log("[benchmark_litert_model.cc:110] Requesting full delegation and CPU acceleration are incompatible.",
            "ERROR")
        sys.stderr.flush()
        os.abort()
    if precision not in ("auto", "fp16", "fp32"):
        log(f"[benchmark_litert_model.cc:180] Invalid gpu-precision: {precision}", "ERROR")
        sys.stderr.flush()
        os.abort()
    log(f"[benchmark_litert_model.cc:305] Loading model from: {graph}")
    if not graph or not Path(graph).is_file():
        log(f"Failed to load model. {graph}", "ERROR")
        return 1
    if fault == "crash":
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSEGV)
        return 139
    start_rss = rss_mb()
    t_init = time.perf_counter_ns()
    try:
        runner = CompiledRunner(graph, use_gpu, use_cpu or not full, precision)
    except Exception as exc:  # noqa: BLE001 - the tool's own failure
        for line in str(exc).strip().splitlines():
            log(line, "ERROR")
        log("Failed to compile model.", "ERROR")
        log("Benchmarking failed.", "ERROR")
        return 1
    init_us = (time.perf_counter_ns() - t_init) // 1000
    init_rss = rss_mb()
    runner.fill(np.random.default_rng(0))
    if fault == "hang":
        sys.stderr.flush()
        while True:
            time.sleep(3600)
    warmup = run_loop(runner, warmup_runs, warmup_min_secs, max_secs, run_delay)
    inference = run_loop(runner, num_runs, min_secs, max_secs, run_delay)
    at = "[benchmark_litert_model.h:%d] "
    log(at % 89 + "\n========== BENCHMARK RESULTS ==========")
    log(at % 94 + f"Model initialization: {init_us / 1000.0:.2f} ms")
    log(at % 95 + f"Warmup (first):       {(warmup.values[0] if warmup.values else 0) / 1000.0:.2f} ms")
    log(at % 97 + f"Warmup (avg):         {(warmup.avg if warmup.values else 0) / 1000.0:.2f} ms "
        f"({len(warmup.values)} runs)")
    log(at % 99 + f"Inference (avg):      {inference.avg / 1000.0:.2f} ms ({len(inference.values)} runs)")
    log(at % 103 + f"Inference (min):      {min(inference.values) / 1000.0:.2f} ms")
    log(at % 105 + f"Inference (max):      {max(inference.values) / 1000.0:.2f} ms")
    std = math.sqrt(max(0.0, sum(v * v for v in inference.values) / len(inference.values) - inference.avg ** 2))
    log(at % 107 + f"Inference (std):      {std / 1000.0:.2f}")
    log(at % 117 + "No throughput data available (throughput <= 0).")
    log(at % 124 + "\nMemory Usage:")
    log(at % 125 + f"Init footprint:       {init_rss - start_rss:.2f} MB")
    log(at % 127 + f"Overall footprint:    {rss_mb() - start_rss:.2f} MB")
    if peak:
        log(at % 132 + f"Peak memory:          {peak_rss_mb():.2f} MB")
    else:
        log(at % 134 + "Peak memory usage not available. (peak_mem_mb <= 0)")
    log(at % 138 + "======================================\n")
    sys.stderr.flush()
    os._exit(0)  # the GPU engine now and then crashes in its teardown after a good run


def main(argv: list[str]) -> int:
    values, unconsumed = parse_flags(argv)
    if values.get("help") and as_bool(values["help"]):
        log(usage(), "ERROR")
        return 1
    fault = read_fault(values.get("graph", ""))
    log("STARTING!")
    log("harness-stand-in: benchmark_model stand-in")  # not LiteRT's tool: reports label it (harness.standin)
    if TOOL == "compiled_model":
        return compiled_main(values, unconsumed, fault)
    if fault == "garbage":
        print("hello from some other tool\n\x1b[31mrandom bytes: 0xdeadbeef\x1b[0m\n"
              "total: 42 items, ok")
        return 0
    try:
        num_runs = int(values.get("num_runs", "50"))
        min_secs = float(values.get("min_secs", "1"))
        max_secs = float(values.get("max_secs", "150"))
        run_delay = float(values.get("run_delay", "-1"))
        warmup_runs = int(values.get("warmup_runs", "1"))
        warmup_min_secs = float(values.get("warmup_min_secs", "0.5"))
        threads = int(values.get("num_threads", "-1"))
        use_gpu = as_bool(values.get("use_gpu", "false"))
        op_profiling = as_bool(values.get("enable_op_profiling", "false"))
        peak = as_bool(values.get("report_peak_memory_footprint", "false"))
        use_xnnpack = as_bool(values.get("use_xnnpack", "true"))
        use_nnapi = as_bool(values.get("use_nnapi", "false"))
    except ValueError as exc:
        log(f"Failed to parse a flag value: {exc}", "ERROR")
        log(usage(), "ERROR")
        return 1
    graph = values.get("graph", "")
    log("Log parameter values verbosely: [0]")
    log(f"Min num runs: [{num_runs}]")
    if threads > 0:
        log(f"Num threads: [{threads}]")
    log(f"Min warmup runs: [{warmup_runs}]")
    if peak:
        log("Report the peak memory footprint: [1]")
    log(f"Graph: [{graph}]")
    if op_profiling:
        log("Enable op profiling: [1]")
    if use_gpu:
        log("Use gpu: [1]")
        if values.get("gpu_backend"):
            log(f"GPU backend: [{values['gpu_backend']}]")
    if use_nnapi:
        log("Use NNAPI: [1]")
        if values.get("nnapi_accelerator_name"):
            log(f"NNAPI accelerator name: [{values['nnapi_accelerator_name']}]")
    external = values.get("external_delegate_path", "")
    if external:
        log(f"External delegate path: [{external}]")
        if values.get("external_delegate_options"):
            log(f"External delegate options: [{values['external_delegate_options']}]")
    if unconsumed:
        log("Unconsumed cmdline flags: " + " ".join(unconsumed), "WARNING")
    if not graph:
        log("Please specify the name of your TF Lite input file with --graph", "ERROR")
        return 1
    if fault == "fail":
        log(f"Loaded model {graph}")
        log("TfLiteGpuDelegate Init: Failed to allocate device memory (clCreateBuffer): Out of resources",
            "ERROR")
        log("Failed to apply GPU delegate.", "ERROR")
        log("Benchmarking failed.", "ERROR")
        return 1
    if not Path(graph).is_file():
        log(f"Failed to mmap model {graph}", "ERROR")
        return 1
    if fault == "crash":
        log(f"Loaded model {graph}")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSEGV)
        return 139

    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    import numpy as np

    start_rss = rss_mb()
    t_init = time.perf_counter_ns()
    if not use_gpu:
        resolver = OpResolverType.AUTO if use_xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        interp = Interpreter(model_path=graph, num_threads=threads if threads > 0 else None,
                             experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
    log(f"Loaded model {graph}")
    log("Initialized TensorFlow Lite runtime.")
    if use_gpu:
        full = as_bool(values.get("require_full_delegation", "false"))
        try:
            interp = CompiledRunner(graph, use_gpu=True, use_cpu=True,
                                    precision="auto" if as_bool(values.get("gpu_precision_loss_allowed", "true"))
                                    else "fp32")
        except Exception as exc:  # noqa: BLE001 - no adapter: the GPU delegate could not be created
            log(f"TfLiteGpuDelegate Init: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}", "ERROR")
            log("Failed to apply GPU delegate.", "ERROR")
            log("Benchmarking failed.", "ERROR")
            return 1
        if interp.model.is_fully_accelerated():
            log("Explicitly applied GPU delegate, and the model graph will be completely executed by the delegate.")
        else:
            if full:
                log("Disallowed CPU fallback detected.", "ERROR")
                log("Benchmarking failed.", "ERROR")
                return 1
            log("Explicitly applied GPU delegate, and the model graph will be partially executed by the delegate "
                "w/ 1 delegate kernels.")
    init_us = (time.perf_counter_ns() - t_init) // 1000
    init_rss = rss_mb()
    if external:
        # The real tool loads the library through TfLiteExternalDelegateCreate; this host has no vendor
        # delegate, so loading it the same way (ai-edge-litert's load_delegate) fails for any test file.
        from ai_edge_litert.interpreter import load_delegate

        try:
            load_delegate(external)
        except (ValueError, OSError, RuntimeError) as exc:
            log(f"Failed to create external delegate from {external}: {exc}", "ERROR")
            log("Benchmarking failed.", "ERROR")
            return 1
    if use_nnapi:
        # No NNAPI on this host: the real tool's message when the delegate takes no node.
        log("Though NNAPI delegate is explicitly applied, the model graph will not be executed by the delegate.")
    log(f"The input model file size (MB): {fmt(Path(graph).stat().st_size / 1e6)}")
    log(f"Initialized session in {fmt(init_us / 1e3)}ms.")
    rng = np.random.default_rng(0)
    if isinstance(interp, CompiledRunner):
        interp.fill(rng)
    else:
        for detail in interp.get_input_details():
            shape, dtype = detail["shape"], detail["dtype"]
            if np.issubdtype(dtype, np.floating):
                data = rng.uniform(-0.5, 0.5, size=shape).astype(dtype)
            else:
                data = rng.integers(0, 100, size=shape).astype(dtype)
            interp.set_tensor(detail["index"], data)
    if fault == "hang":
        sys.stderr.flush()
        while True:
            time.sleep(3600)

    warmup = run_loop(interp, warmup_runs, warmup_min_secs, max_secs, run_delay)
    inference = run_loop(interp, num_runs, min_secs, max_secs, run_delay)
    first = warmup.values[0] if warmup.values else 0  # tsl Stat::first() of an empty stat is 0
    log(f"Inference timings in us: Init: {init_us}, First inference: {first}, "
        f"Warmup (avg): {fmt(warmup.avg)}, Inference (avg): {fmt(inference.avg)}")
    log("Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE"
        " to the actual memory footprint of the model at runtime. Take the information at your discretion.")
    log(f"Memory footprint delta from the start of the tool (MB): init={fmt(init_rss - start_rss)}"
        f" overall={fmt(rss_mb() - start_rss)}")
    if peak:
        log(f"Overall peak memory footprint (MB) via periodic monitoring: {fmt(peak_rss_mb())}")
        log("Memory status at the end of exeution:")
        log(f"- VmRSS              : {int(rss_mb())} MB")
    if op_profiling and not isinstance(interp, CompiledRunner):
        op_profile(interp, inference.avg)
    if isinstance(interp, CompiledRunner):
        sys.stderr.flush()
        os._exit(0)  # the GPU engine now and then crashes in its teardown after a good run
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
