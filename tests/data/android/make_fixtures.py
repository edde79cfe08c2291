"""Regenerate the reconstructed benchmark_model fixtures in this directory.

The text is not captured from a phone: it is what LiteRT's benchmark_model prints, reconstructed
from its printing code (benchmark_model.cc, benchmark_tflite_model.cc, profile_summary_formatter.cc
and tsl's stats_calculator.{h,cc}): C++ ostream number formatting (6 significant digits for
doubles, integers for int64), the tab-separated fixed-width op-profiling tables, the order of the
listeners' output. Timings are synthetic (seeded). Run: python tests/data/android/make_fixtures.py
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent


def g(x: float) -> str:
    """C++ ostream default formatting of a double (%g, precision 6)."""
    if isinstance(x, int):
        return str(x)
    text = format(x, ".6g")
    return text


class Stat:
    """tsl::StatWithPercentiles<int64_t>."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def add(self, v: int) -> None:
        self.values.append(int(v))

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def sum(self) -> int:
        return sum(self.values)

    def avg(self) -> float:
        return self.sum / self.count

    def std(self) -> int:
        if min(self.values) == max(self.values):
            return 0
        sq = sum(float(v) * v for v in self.values)
        return int(math.sqrt(sq / self.count - self.avg() ** 2))  # int64 result

    def percentile(self, p: int) -> int:
        vals = sorted(self.values)
        if p == 100:
            return vals[-1]
        return vals[len(vals) * p // 100]

    def line(self, percentiles: bool) -> str:
        v = self.values
        if min(v) == max(v):
            out = f"count={self.count} curr={v[-1]}" + ("(all same)" if self.count > 1 else "")
        else:
            out = (f"count={self.count} first={v[0]} curr={v[-1]} min={min(v)} max={max(v)}"
                   f" avg={g(self.avg())} std={self.std()}")
        if percentiles:
            out += f" p5={self.percentile(5)} median={self.percentile(50)} p95={self.percentile(95)}"
        return out


def field_(width: int, value: object) -> str:
    if isinstance(value, float):
        value = f"{value:.3f}"
    return "\t" + str(value).rjust(width)


@dataclass
class Node:
    name: str
    type: str
    run_order: int
    base_us: float
    elapsed: Stat = field(default_factory=Stat)
    times_called: int = 0


class StatsCalculator:
    """tsl::StatsCalculator with the ProfileSummaryDefaultFormatter options."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.run_total = Stat()

    def add(self, node: Node, us: int, calls: int = 1) -> None:
        self.nodes.setdefault(node.name, node)
        for _ in range(calls):
            node.elapsed.add(us)
            node.times_called += 1

    def _header(self, title: str) -> str:
        return ("=" * 30 + f" {title} " + "=" * 30 + "\n"
                + field_(40, "[node type]") + field_(9, "[first]") + field_(9, "[avg ms]")
                + field_(8, "[%]") + field_(8, "[cdf%]") + field_(10, "[mem KB]")
                + field_(9, "[times called]") + "\t[Name]")

    def _by_metric(self, title: str, key, limit: int) -> str:
        nodes = sorted(self.nodes.values(), key=key, reverse=True)
        if limit > 0:
            nodes = nodes[:limit]
        out = [self._header(title)]
        cum = 0
        runs = self.run_total.count
        for n in nodes:
            cum += n.elapsed.sum
            pct = n.elapsed.sum * 100.0 / self.run_total.sum
            cdf = cum * 100.0 / self.run_total.sum
            out.append(field_(40, n.type) + field_(9, n.elapsed.values[0] / 1000.0)
                       + field_(9, n.elapsed.avg() / 1000.0) + field_(7, pct) + "%"
                       + field_(7, cdf) + "%" + field_(10, 0.0)
                       + field_(9, n.times_called // runs) + "\t" + n.name)
        return "\n".join(out) + "\n\n"

    def by_type(self) -> str:
        runs = self.run_total.count
        count: dict[str, int] = {}
        total: dict[str, int] = {}
        called: dict[str, int] = {}
        acc = 0
        for n in self.nodes.values():
            t = int(n.elapsed.sum / runs)
            acc += t
            count[n.type] = count.get(n.type, 0) + 1
            total[n.type] = total.get(n.type, 0) + t
            called[n.type] = called.get(n.type, 0) + n.times_called // runs
        out = [f"Number of nodes executed: {len(self.nodes)}",
               "=" * 30 + " Summary by node type " + "=" * 30,
               field_(40, "[Node type]") + field_(9, "[count]") + field_(10, "[avg ms]")
               + field_(11, "[avg %]") + field_(11, "[cdf %]") + field_(10, "[mem KB]")
               + field_(10, "[times called]")]
        cdf = 0.0
        for t, us in sorted(total.items(), key=lambda kv: (kv[1], kv[0]), reverse=True):
            pct = us / acc * 100.0
            cdf += pct
            out.append(field_(40, t) + field_(9, count[t]) + field_(10, us / 1000.0)
                       + field_(10, pct) + "%" + field_(10, cdf) + "%" + field_(10, 0.0)
                       + field_(9, called[t]))
        return "\n".join(out) + "\n\n"

    def output_string(self) -> str:
        return (self._by_metric("Run Order", lambda n: -n.run_order, 0)
                + self._by_metric("Top by Computation Time", lambda n: n.elapsed.avg(), 10)
                + self.by_type())

    def short_summary(self, prefix: str = "") -> str:
        return (f"{prefix}Timings (microseconds): {self.run_total.line(percentiles=False)}\n"
                f"Memory (bytes): count=0\n{len(self.nodes)} nodes observed\n")


def run_lines(rng: random.Random, runs: int, base_us: float, jitter: float, first_extra: float,
              min_runs: int, min_secs: str, percentiles: bool) -> tuple[list[str], Stat]:
    stat = Stat()
    for i in range(runs):
        stat.add(int(base_us * (1 + rng.gauss(0, jitter)) + (first_extra if i == 0 else 0)))
    lines = [f"INFO: Running benchmark for at least {min_runs} iterations and at least {min_secs}"
             " seconds but terminate if exceeding 150 seconds.",
             "INFO: " + stat.line(percentiles), ""]
    return lines, stat


def gpu_current() -> str:
    rng = random.Random(1234)
    lines = [
        "INFO: STARTING!",
        "INFO: Log parameter values verbosely: [0]",
        "INFO: Min num runs: [20]",
        "INFO: Min warmup runs: [3]",
        "INFO: Report the peak memory footprint: [1]",
        "INFO: Graph: [/data/local/tmp/harness/unet_sd14_fp16.tflite]",
        "INFO: Signature to run: []",
        "INFO: Use gpu: [1]",
        "INFO: Loaded model /data/local/tmp/harness/unet_sd14_fp16.tflite",
        "INFO: Initialized TensorFlow Lite runtime.",
        "INFO: Created TensorFlow Lite delegate for GPU.",
        "INFO: GPU delegate created.",
        "INFO: Loaded OpenCL library with dlopen.",
        "INFO: Replacing 1630 out of 1630 node(s) with delegate (TfLiteGpuDelegateV2) node,"
        " yielding 1 partitions for the whole graph.",
        "INFO: Initialized OpenCL-based API.",
        "INFO: Created 1 GPU delegate kernels.",
        "INFO: Explicitly applied GPU delegate, and the model graph will be completely executed"
        " by the delegate.",
        "INFO: The input model file size (MB): 1720.45",
        "INFO: Initialized session in 2843.51ms.",
    ]
    warm_lines, warm = run_lines(rng, 3, 1.19e6, 0.01, 1.9e5, 3, "0.5", True)
    timed_lines, timed = run_lines(rng, 20, 1.185e6, 0.006, 0, 20, "1", True)
    lines += warm_lines + timed_lines
    lines += [
        f"INFO: Inference timings in us: Init: 2843510, First inference: {warm.values[0]},"
        f" Warmup (avg): {g(warm.avg())}, Inference (avg): {g(timed.avg())}",
        "INFO: Note: as the benchmark tool itself affects memory footprint, the following is"
        " only APPROXIMATE to the actual memory footprint of the model at runtime. Take the"
        " information at your discretion.",
        "INFO: Memory footprint delta from the start of the tool (MB): init=1873.45"
        " overall=1911.2",
        "INFO: Overall peak memory footprint (MB) via periodic monitoring: 1925.12",
        "INFO: Memory status at the end of exeution:",
        "INFO: - VmRSS              : 1920 MB",
        "INFO: + RssAnnon           : 228 MB",
        "INFO: + RssFile + RssShmem : 1692 MB",
    ]
    return "\n".join(lines) + "\n"


# (type, name) of the tiny UNet's primary graph in run order; group norms are odml.group_norm
# composites (STABLEHLO_COMPOSITE) whose decomposition runs as subgraph 1.
_TINY_NODES = [
    ("CONV_2D", "unet/conv_in", 410), ("LOGISTIC", "unet/time_embedding/silu", 6),
    ("MUL", "unet/time_embedding/silu_mul", 4), ("FULLY_CONNECTED", "unet/time_embedding/linear_2", 21),
    ("STABLEHLO_COMPOSITE", "unet/down_blocks.0/resnets.0/norm1", 240),
    ("LOGISTIC", "unet/down_blocks.0/resnets.0/silu1", 95), ("MUL", "unet/down_blocks.0/resnets.0/mul1", 60),
    ("CONV_2D", "unet/down_blocks.0/resnets.0/conv1", 1190),
    ("FULLY_CONNECTED", "unet/down_blocks.0/resnets.0/time_emb_proj", 9),
    ("ADD", "unet/down_blocks.0/resnets.0/add_temb", 48),
    ("STABLEHLO_COMPOSITE", "unet/down_blocks.0/resnets.0/norm2", 238),
    ("LOGISTIC", "unet/down_blocks.0/resnets.0/silu2", 94), ("MUL", "unet/down_blocks.0/resnets.0/mul2", 61),
    ("CONV_2D", "unet/down_blocks.0/resnets.0/conv2", 1185), ("ADD", "unet/down_blocks.0/resnets.0/add_skip", 47),
    ("STABLEHLO_COMPOSITE", "unet/down_blocks.0/attentions.0/norm", 236),
    ("CONV_2D", "unet/down_blocks.0/attentions.0/proj_in", 180),
    ("TRANSPOSE", "unet/down_blocks.0/attentions.0/to_tokens", 70),
    ("MEAN", "unet/down_blocks.0/attentions.0/norm1/mean", 40),
    ("SQUARED_DIFFERENCE", "unet/down_blocks.0/attentions.0/norm1/sqdiff", 35),
    ("RSQRT", "unet/down_blocks.0/attentions.0/norm1/rsqrt", 3),
    ("MUL", "unet/down_blocks.0/attentions.0/norm1/scale", 30),
    ("FULLY_CONNECTED", "unet/down_blocks.0/attentions.0/attn1/to_q", 150),
    ("FULLY_CONNECTED", "unet/down_blocks.0/attentions.0/attn1/to_k", 149),
    ("FULLY_CONNECTED", "unet/down_blocks.0/attentions.0/attn1/to_v", 151),
    ("BATCH_MATMUL", "unet/down_blocks.0/attentions.0/attn1/qk", 820),
    ("SOFTMAX", "unet/down_blocks.0/attentions.0/attn1/softmax", 610),
    ("BATCH_MATMUL", "unet/down_blocks.0/attentions.0/attn1/av", 790),
    ("FULLY_CONNECTED", "unet/down_blocks.0/attentions.0/attn1/to_out", 152),
    ("FULLY_CONNECTED", "unet/down_blocks.0/attentions.0/ff/proj", 610),
    ("STRIDED_SLICE", "unet/down_blocks.0/attentions.0/ff/chunk_a", 25),
    ("STRIDED_SLICE", "unet/down_blocks.0/attentions.0/ff/chunk_b", 25),
    ("GELU", "unet/down_blocks.0/attentions.0/ff/gelu", 260),
    ("MUL", "unet/down_blocks.0/attentions.0/ff/geglu_mul", 70),
    ("FULLY_CONNECTED", "unet/down_blocks.0/attentions.0/ff/out", 300),
    ("TRANSPOSE", "unet/down_blocks.0/attentions.0/to_image", 72),
    ("CONV_2D", "unet/down_blocks.0/attentions.0/proj_out", 178),
    ("CONV_2D", "unet/down_blocks.0/downsamplers.0/conv", 330),
    ("RESIZE_NEAREST_NEIGHBOR", "unet/up_blocks.1/upsamplers.0/resize", 55),
    ("CONCATENATION", "unet/up_blocks.1/resnets.0/cat_skip", 64),
    ("STABLEHLO_COMPOSITE", "unet/conv_norm_out", 237),
    ("LOGISTIC", "unet/conv_act", 93), ("MUL", "unet/conv_act_mul", 60),
    ("CONV_2D", "unet/conv_out", 395),
]
_GN_DECOMPOSITION = [
    ("RESHAPE", "gn/reshape_in", 4), ("MEAN", "gn/mean", 18), ("SQUARED_DIFFERENCE", "gn/sqdiff", 16),
    ("MEAN", "gn/var", 17), ("ADD", "gn/eps", 1), ("RSQRT", "gn/rsqrt", 1), ("SUB", "gn/center", 15),
    ("MUL", "gn/normalize", 14), ("RESHAPE", "gn/reshape_out", 4), ("MUL", "gn/gamma", 13),
    ("ADD", "gn/beta", 13),
]


def cpu_op_profiling() -> str:
    rng = random.Random(99)
    runs = 10
    primary = StatsCalculator()
    sub = StatsCalculator()
    nodes = [Node(f"[{name}]:{i}", t, i, us) for i, (t, name, us) in enumerate(_TINY_NODES)]
    gn_nodes = [Node(f"[{name}]:{i}", t, i, us) for i, (t, name, us) in enumerate(_GN_DECOMPOSITION)]
    n_composites = sum(1 for t, _, _ in _TINY_NODES if t == "STABLEHLO_COMPOSITE")
    timed = Stat()
    for _ in range(runs):
        total = 0
        sub_total = 0
        for n in nodes:
            us = max(1, int(n.base_us * (1 + rng.gauss(0, 0.03))))
            primary.add(n, us)
            total += us
        for n in gn_nodes:
            us = max(1, int(n.base_us * (1 + rng.gauss(0, 0.03))))
            sub.add(n, us, calls=n_composites)
            sub_total += us * n_composites
        primary.run_total.add(total)
        sub.run_total.add(sub_total)
        timed.add(total + int(rng.uniform(150, 250)))
    warm = Stat()
    for i in range(4):
        warm.add(int(timed.avg() * (1.35 if i == 0 else 1.02) + rng.uniform(-80, 80)))

    init = StatsCalculator()
    mgwd = Node("ModifyGraphWithDelegate/0", "ModifyGraphWithDelegate", 0, 0)
    alloc = Node("AllocateTensors/0", "AllocateTensors", 1, 0)
    init.add(mgwd, 412)
    init.add(alloc, 1873, calls=2)
    init.run_total.add(412 + 2 * 1873)

    lines = [
        "INFO: STARTING!",
        "INFO: Log parameter values verbosely: [0]",
        "INFO: Min num runs: [10]",
        "INFO: Num threads: [4]",
        "INFO: Min warmup runs: [4]",
        "INFO: Graph: [/data/local/tmp/harness/unet_tiny_sgn.tflite]",
        "INFO: Signature to run: []",
        "INFO: Enable op profiling: [1]",
        "INFO: #threads used for CPU inference: [4]",
        "INFO: Use xnnpack: [0]",
        "INFO: Loaded model /data/local/tmp/harness/unet_tiny_sgn.tflite",
        "INFO: Initialized TensorFlow Lite runtime.",
        "INFO: The input model file size (MB): 7.21954",
        "INFO: Initialized session in 8.117ms.",
        "INFO: Running benchmark for at least 4 iterations and at least 0.5 seconds but terminate"
        " if exceeding 150 seconds.",
        "INFO: " + warm.line(True), "",
        "INFO: Running benchmark for at least 10 iterations and at least 1 seconds but terminate"
        " if exceeding 150 seconds.",
        "INFO: " + timed.line(True), "",
        f"INFO: Inference timings in us: Init: 8117, First inference: {warm.values[0]},"
        f" Warmup (avg): {g(warm.avg())}, Inference (avg): {g(timed.avg())}",
        "INFO: Note: as the benchmark tool itself affects memory footprint, the following is"
        " only APPROXIMATE to the actual memory footprint of the model at runtime. Take the"
        " information at your discretion.",
        "INFO: Memory footprint delta from the start of the tool (MB): init=9.33594"
        " overall=31.0898",
    ]
    text = "\n".join(lines) + "\n"
    init_out = init.output_string() + init.short_summary() + "\n"
    text += "INFO: Profiling Info for Benchmark Initialization:\n" + init_out + "\n"
    run_out = ("Primary graph (name: main) profile:\n" + primary.output_string()
               + primary.short_summary() + "\n"
               + "Subgraph (index: 1, name: XlaCallModule_odml.group_norm.impl_0) profile:\n"
               + sub.output_string()
               + sub.short_summary("Subgraph (index: 1, name: XlaCallModule_odml.group_norm.impl_0) ")
               + "\n")
    text += "INFO: Operator-wise Profiling Info for Regular Benchmark Runs:\n" + run_out + "\n"
    return text


def legacy_inference() -> str:
    """TF 2.0/2.1 era: no log prefix, 'Average inference timings in us: ..., Inference: X'."""
    rng = random.Random(7)
    warm = Stat()
    for i in range(42):
        warm.add(int(11900 * (1 + rng.gauss(0, 0.02)) + (4300 if i == 0 else 0)))
    timed = Stat()
    for _ in range(85):
        timed.add(int(11780 * (1 + rng.gauss(0, 0.015))))
    lines = [
        "STARTING!",
        "Min num runs: [50]",
        "Min runs duration (seconds): [1]",
        "Max runs duration (seconds): [150]",
        "Inter-run delay (seconds): [-1]",
        "Num threads: [1]",
        "Benchmark name: []",
        "Output prefix: []",
        "Min warmup runs: [1]",
        "Min warmup runs duration (seconds): [0.5]",
        "Graph: [/data/local/tmp/unet_tiny.tflite]",
        "Input layers: []",
        "Input shapes: []",
        "Use nnapi : [0]",
        "Use legacy nnapi : [0]",
        "Use gpu : [1]",
        "Allow fp16 : [0]",
        "Require full delegation : [0]",
        "Enable op profiling: [0]",
        "Max profiling buffer entries: [1024]",
        "Loaded model /data/local/tmp/unet_tiny.tflite",
        "INFO: Initialized TensorFlow Lite runtime.",
        "INFO: Created TensorFlow Lite delegate for GPU.",
        "Applied GPU delegate, and the model graph will be completely executed w/ the delegate.",
        "The input model file size (MB): 3.79893",
        "Initialized session in 412.887ms.",
        "Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if"
        " exceeding 150 seconds.",
        warm.line(False), "",
        "Running benchmark for at least 50 iterations and at least 1 seconds but terminate if"
        " exceeding 150 seconds.",
        timed.line(False), "",
        f"Average inference timings in us: Warmup: {g(warm.avg())}, Init: 412887,"
        f" Inference: {g(timed.avg())}",
    ]
    return "\n".join(lines) + "\n"


def legacy_no_stats() -> str:
    """TF 1.13/1.14 era: 'Average inference timings in us: Warmup: .., Init: .., no stats: ..'."""
    rng = random.Random(11)
    warm = Stat()
    warm.add(146161)
    timed = Stat()
    for _ in range(50):
        timed.add(int(137700 * (1 + rng.gauss(0, 0.006))))
    lines = [
        "STARTING!",
        "Num runs: [50]",
        "Inter-run delay (seconds): [-1]",
        "Num threads: [4]",
        "Benchmark name: []",
        "Output prefix: []",
        "Min warmup runs: [1]",
        "Graph: [/data/local/tmp/unet_tiny_quant.tflite]",
        "Input layers: []",
        "Input shapes: []",
        "Use nnapi : [0]",
        "Loaded model /data/local/tmp/unet_tiny_quant.tflite",
        "resolved reporter",
        "Initialized session in 4.452ms",
        "Running benchmark for 1 iterations",
        warm.line(False), "",
        "Running benchmark for 50 iterations",
        timed.line(False), "",
        f"Average inference timings in us: Warmup: {g(warm.avg())}, Init: 4452,"
        f" no stats: {g(timed.avg())}",
    ]
    return "\n".join(lines) + "\n"


def failed_gpu() -> str:
    return "\n".join([
        "INFO: STARTING!",
        "INFO: Log parameter values verbosely: [0]",
        "INFO: Graph: [/data/local/tmp/harness/unet_sd14_fp16.tflite]",
        "INFO: Use gpu: [1]",
        "INFO: Loaded model /data/local/tmp/harness/unet_sd14_fp16.tflite",
        "INFO: Initialized TensorFlow Lite runtime.",
        "INFO: Created TensorFlow Lite delegate for GPU.",
        "INFO: GPU delegate created.",
        "INFO: Loaded OpenCL library with dlopen.",
        "INFO: Replacing 1630 out of 1630 node(s) with delegate (TfLiteGpuDelegateV2) node,"
        " yielding 1 partitions for the whole graph.",
        "ERROR: TfLiteGpuDelegate Init: Failed to allocate device memory (clCreateBuffer):"
        " Out of resources",
        "INFO: Created 0 GPU delegate kernels.",
        "ERROR: TfLiteGpuDelegate Prepare: delegate is not initialized",
        "ERROR: Node number 1630 (TfLiteGpuDelegateV2) failed to prepare.",
        "ERROR: Restored original execution plan after delegate application failure.",
        "ERROR: Failed to apply GPU delegate.",
        "ERROR: Benchmarking failed.",
    ]) + "\n"


FIXTURES = {
    "benchmark_model_gpu_current.txt": gpu_current,
    "benchmark_model_cpu_op_profiling.txt": cpu_op_profiling,
    "benchmark_model_legacy_inference.txt": legacy_inference,
    "benchmark_model_legacy_no_stats.txt": legacy_no_stats,
    "benchmark_model_failed_gpu.txt": failed_gpu,
}

if __name__ == "__main__":
    for name, make in FIXTURES.items():
        (HERE / name).write_text(make())
        print("wrote", HERE / name)
