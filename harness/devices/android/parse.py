"""Pure parsers over Android device text: one function per source, typed frozen results. This
module: ``benchmark_model``'s output and the paper's op categories; `parse_device` the system's text.

Every parser takes the text a device printed (``benchmark_model`` stdout+stderr, ``getprop``,
``dumpsys SurfaceFlinger``, ``dumpsys meminfo <pid>``, ``/proc/meminfo``, sysfs thermal and battery
files) and returns a frozen dataclass or plain values. Nothing here does I/O. Text that a parser
does not recognize raises :class:`ParseError` quoting the start of that text; a parser never
turns unrecognized output into zeros.

The formats were checked against the printing code:

- ``benchmark_model``: LiteRT ``tflite/tools/benchmark/benchmark_model.cc``
  (``BenchmarkLoggingListener::OnBenchmarkEnd``, ``BenchmarkModel::Run``), the ``Stat`` /
  ``StatWithPercentiles::OutputToStream`` of ``tsl/util/stats_calculator.h`` (``count=.. first=..
  curr=.. min=.. max=.. avg=.. std=..`` + ``p5=.. median=.. p95=..`` in newer builds,
  ``count=1 curr=..`` or ``curr=..(all same)`` when every run took the same time),
  ``StatsCalculator::GetStatsByNodeType`` (the "Summary by node type" table) and
  ``ProfileSummaryDefaultFormatter`` (primary graph / subgraph / "Delegate internal" sections).
  ``TFLITE_LOG`` prefixes lines with ``INFO:``/``WARNING:``/``ERROR:``; older builds print no
  prefix. Numbers are C++ ``ostream`` defaults: 6 significant digits, so large values print as
  ``1.23457e+06``.
- ``dumpsys meminfo <pid>``: ``ActivityThread.dumpMemInfoTable`` (``HEAP_COLUMN`` rows such as
  ``GL mtrack``/``EGL mtrack``/``Gfx dev``/``TOTAL``, then the "App Summary" with ``Graphics:`` and
  ``TOTAL PSS:``). Rows whose values are all zero are not printed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Literal

__all__ = [
    "ParseError",
    "RunStats",
    "OpTypeStat",
    "SubgraphOpProfile",
    "DelegateApplication",
    "BenchmarkModelOutput",
    "OP_CATEGORIES",
    "parse_benchmark_model",
    "map_op_category",
    "op_category_ms",
]


class ParseError(ValueError):
    """Device text that a parser does not recognize. The message quotes the start of the text."""


def _snippet(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat[:limit] + ("..." if len(flat) > limit else "")


def parse_failure(what: str, text: str) -> ParseError:
    return ParseError(f"{what}; the text starts with: {_snippet(text)!r}")


# A C++ ostream number: 12, 12.5, 1.23457e+06, nan, inf, -inf.
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
_LOG_PREFIX = re.compile(r"^(?:INFO|WARNING|WARN|ERROR|VERBOSE|FATAL|DEBUG): ?")


def _num(s: str) -> float:
    return float(s)


# --------------------------------------------------------------------------- benchmark_model


@dataclass(frozen=True)
class RunStats:
    """One ``count=... first=... curr=...`` line: the stats of one run type, in microseconds.

    ``min_runs``/``min_secs``/``max_secs`` come from the "Running benchmark for at least N
    iterations and at least S seconds but terminate if exceeding M seconds." line before it.
    """

    count: int
    first_us: float
    curr_us: float
    min_us: float
    max_us: float
    avg_us: float
    std_us: float
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None
    min_runs: int | None = None
    min_secs: float | None = None
    max_secs: float | None = None

    @property
    def avg_ms(self) -> float:
        return self.avg_us / 1000.0


@dataclass(frozen=True)
class OpTypeStat:
    """One row of "Summary by node type": time per run summed over all nodes of one type."""

    node_type: str
    count: int  # number of nodes of this type
    avg_ms: float  # per run, summed over those nodes
    avg_percent: float
    cdf_percent: float
    mem_kb: float
    times_called: int  # per run

    @property
    def category(self) -> str:
        return map_op_category(self.node_type)


@dataclass(frozen=True)
class SubgraphOpProfile:
    """The node-type summary of a non-primary subgraph (e.g. a composite's decomposition)."""

    index: int
    name: str
    ops: tuple[OpTypeStat, ...]


@dataclass(frozen=True)
class DelegateApplication:
    """What benchmark_model said about one delegate it applied."""

    name: str  # "GPU", "XNNPACK", "NNAPI", ...
    coverage: Literal["complete", "partial", "none"]
    delegate_kernels: int | None  # printed for partial delegation only


@dataclass(frozen=True)
class BenchmarkModelOutput:
    """Everything parse_benchmark_model recognized in one benchmark_model run."""

    format: Literal["current", "legacy", "compiled_model"]
    init_us: float
    warmup_avg_us: float
    inference_avg_us: float
    first_inference_us: float | None  # the current format only
    warmup: RunStats
    inference: RunStats
    model_size_mb: float | None = None
    init_session_ms: float | None = None
    init_footprint_mb: float | None = None  # memory delta from the tool start, after Init
    overall_footprint_mb: float | None = None  # memory delta from the tool start, at the end
    peak_memory_mb: float | None = None  # --report_peak_memory_footprint=true (peak RSS)
    end_vmrss_mb: float | None = None
    delegates: tuple[DelegateApplication, ...] = ()
    op_profile: tuple[OpTypeStat, ...] = ()  # primary graph, regular runs
    subgraph_op_profiles: tuple[SubgraphOpProfile, ...] = ()
    delegate_op_profile: tuple[OpTypeStat, ...] = ()  # "Delegate internal" (delegate kernels)
    warnings: tuple[str, ...] = ()  # ERROR:/WARNING: lines of a run that still produced timings

    @property
    def inference_avg_ms(self) -> float:
        return self.inference_avg_us / 1000.0

    @property
    def op_profiled(self) -> bool:
        return bool(self.op_profile)

    def op_avg_ms(self) -> dict[str, float]:
        """Per-node-type average milliseconds per run (primary graph)."""
        return {row.node_type: row.avg_ms for row in self.op_profile}

    def category_ms(self) -> dict[str, float]:
        """Primary-graph ms per run summed by paper category (see map_op_category).

        ``STABLEHLO_COMPOSITE`` nodes do not name their composite; they are attributed to a
        category only when every profiled decomposition subgraph maps to that same category by
        its name (e.g. all are ``odml.group_norm`` decompositions), else they stay ``other``.
        """
        totals = op_category_ms(self.op_profile)
        names = {map_op_category(sub.name) for sub in self.subgraph_op_profiles}
        if len(names) == 1 and (only := names.pop()) != "other":
            composite_ms = sum(r.avg_ms for r in self.op_profile
                               if r.node_type.split("/", 1)[0].strip() == "STABLEHLO_COMPOSITE")
            totals["other"] -= composite_ms
            totals[only] += composite_ms
        return totals


# Current builds: "Running benchmark for at least 50 iterations and at least 1 seconds but terminate
# if exceeding 150 seconds."; older ones drop the "but terminate" clause or say "for 50 iterations".
_RUNNING_RE = re.compile(
    rf"^Running benchmark for (?:at least )?(\d+) iterations(?: and at least ({_NUM}) seconds)?"
    rf"(?: but terminate if exceeding ({_NUM}) seconds)?\.?\s*$"
)
_TIMINGS_RE = re.compile(
    rf"Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}),"
    rf" Warmup \(avg\): ({_NUM}), Inference \(avg\): ({_NUM})"
)
# TF 1.13-2.1: "..., no stats: X"; the Android benchmark app and TF 2.1: "..., Inference: X".
_LEGACY_TIMINGS_RE = re.compile(
    rf"Average inference timings in us: Warmup: ({_NUM}), Init: ({_NUM}),"
    rf" (?:Inference|no stats): ({_NUM})"
)
# LiteRT 2.x's CompiledModel tool (litert/tools/benchmark_litert_model.h, LITERT_LOG lines such as
# "INFO: [benchmark_litert_model.h:94] Model initialization: 12.34 ms") prints its own results block.
_CM_BLOCK = "========== BENCHMARK RESULTS =========="
_CM_INIT_RE = re.compile(rf"Model initialization: ({_NUM}) ms")
_CM_WARMUP_FIRST_RE = re.compile(rf"Warmup \(first\): +({_NUM}) ms")
_CM_WARMUP_AVG_RE = re.compile(rf"Warmup \(avg\): +({_NUM}) ms \((\d+) runs\)")
_CM_INFER_AVG_RE = re.compile(rf"Inference \(avg\): +({_NUM}) ms \((\d+) runs\)")
_CM_INIT_FP_RE = re.compile(rf"Init footprint: +({_NUM}) MB")
_CM_OVERALL_FP_RE = re.compile(rf"Overall footprint: +({_NUM}) MB")
_CM_PEAK_RE = re.compile(rf"Peak memory: +({_NUM}) MB")
_FOOTPRINT_RE = re.compile(
    rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\):"
    rf" init=({_NUM}) overall=({_NUM})"
)
_PEAK_RE = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: ({_NUM})")
_VMRSS_RE = re.compile(rf"^- VmRSS\s*:\s*({_NUM}) MB")
_MODEL_SIZE_RE = re.compile(rf"The input model file size \(MB\): ({_NUM})")
_INIT_SESSION_RE = re.compile(rf"Initialized session in ({_NUM})ms")
_DELEGATE_RES = (
    re.compile(
        r"Explicitly applied (.+?) delegate, and the model graph will be (completely|partially)"
        r" executed by the delegate(?: w/ (\d+) delegate kernels)?\."
    ),
    re.compile(
        r"Applied (.+?) delegate, and the model graph will be (completely|partially) executed"
        r" w/ the delegate\."
    ),
)
_DELEGATE_NONE_RE = re.compile(
    r"Though (.+?) delegate is explicitly applied, the model graph will not be executed"
)
_STAT_TOKEN_RE = re.compile(rf"(\w+)=({_NUM})(\(all same\))?")
_OP_ROW_RE = re.compile(
    rf"^\s*(?P<type>\S.*?)\s+(?P<count>\d+)\s+(?P<avg>{_NUM})\s+(?P<pct>{_NUM})%\s+"
    rf"(?P<cdf>{_NUM})%\s+(?P<mem>{_NUM})\s+(?P<called>\d+)\s*$"
)
_OP_CSV_ROW_RE = re.compile(
    rf"^(?P<type>[^,]+), (?P<count>\d+), (?P<avg>{_NUM}), (?P<pct>{_NUM})%, (?P<cdf>{_NUM})%,"
    rf" (?P<mem>{_NUM}), (?P<called>\d+)\s*$"
)
_SUBGRAPH_RE = re.compile(r"^Subgraph \(index: (\d+), name: (.*?)\) (?:profile|summary):")
_SUMMARY_BY_TYPE = "Summary by node type"


def _clean_lines(text: str) -> list[str]:
    return [_LOG_PREFIX.sub("", line.rstrip("\r")) for line in text.splitlines()]


def _parse_stat_line(line: str, allow_empty: bool = False) -> RunStats:
    """One stat line. `allow_empty`: a bare `count=0` (the warm-up of --warmup_runs=0
    --warmup_min_secs=0 ran nothing) is an empty RunStats rather than an error."""
    fields: dict[str, float] = {}
    all_same = False
    for key, value, same in _STAT_TOKEN_RE.findall(line):
        fields[key] = _num(value)
        all_same = all_same or bool(same)
    if "count" not in fields:
        raise parse_failure("benchmark_model stat line without count=", line)
    count = int(fields["count"])
    if count == 0:
        if allow_empty:
            return RunStats(count=0, first_us=0.0, curr_us=0.0, min_us=math.nan, max_us=math.nan,
                            avg_us=math.nan, std_us=math.nan)
        raise parse_failure("benchmark_model ran no iterations of a run type (count=0)", line)
    if "curr" not in fields:
        raise parse_failure("benchmark_model stat line without curr=", line)
    curr = fields["curr"]
    if "avg" in fields:  # the full form
        for key in ("first", "min", "max", "std"):
            if key not in fields:
                raise parse_failure(f"benchmark_model stat line without {key}=", line)
        first, lo, hi, avg, std = (fields[k] for k in ("first", "min", "max", "avg", "std"))
    else:  # count=1 curr=X, or count=N curr=X(all same): every run took X
        first = lo = hi = avg = curr
        std = 0.0
    return RunStats(
        count=count,
        first_us=first,
        curr_us=curr,
        min_us=lo,
        max_us=hi,
        avg_us=avg,
        std_us=std,
        p5_us=fields.get("p5"),
        median_us=fields.get("median"),
        p95_us=fields.get("p95"),
    )


def _close(a: float, b: float) -> bool:
    if math.isnan(a) and math.isnan(b):  # an empty warm-up: "Warmup (avg): nan" and count=0
        return True
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=0.51)


def _parse_op_row(line: str) -> OpTypeStat | None:
    m = _OP_ROW_RE.match(line) or _OP_CSV_ROW_RE.match(line)
    if m is None:
        return None
    return OpTypeStat(
        node_type=m["type"].strip(),
        count=int(m["count"]),
        avg_ms=_num(m["avg"]),
        avg_percent=_num(m["pct"]),
        cdf_percent=_num(m["cdf"]),
        mem_kb=_num(m["mem"]),
        times_called=int(m["called"]),
    )


def _parse_regular_profile(
    lines: list[str], text: str
) -> tuple[tuple[OpTypeStat, ...], tuple[SubgraphOpProfile, ...], tuple[OpTypeStat, ...]]:
    """The node-type summaries after "Operator-wise Profiling Info for Regular Benchmark Runs"."""
    start = next(
        (i for i, line in enumerate(lines) if "Profiling Info for Regular Benchmark Runs" in line),
        None,
    )
    if start is None:
        return (), (), ()
    primary: list[OpTypeStat] | None = None
    delegate: list[OpTypeStat] = []
    subgraphs: list[SubgraphOpProfile] = []
    context: tuple[str, int, str] = ("primary", 0, "")
    i = start + 1
    while i < len(lines):
        line = lines[i].strip()
        if "Profiling Info for Benchmark Initialization" in line:
            break
        m = _SUBGRAPH_RE.match(line)
        if m:
            context = ("subgraph", int(m[1]), m[2])
        elif line.startswith("Primary graph"):
            context = ("primary", 0, "")
        elif line.startswith("Delegate internal"):
            context = ("delegate", 0, "")
        elif _SUMMARY_BY_TYPE in line:
            rows: list[OpTypeStat] = []
            i += 1
            while i < len(lines) and lines[i].strip():
                row_text = lines[i].strip()
                if not (row_text.startswith("[Node type]") or row_text.startswith("node type,")):
                    row = _parse_op_row(lines[i])
                    if row is None:
                        raise parse_failure("unrecognized row in benchmark_model 'Summary by node type'",
                                    lines[i])
                    rows.append(row)
                i += 1
            if context[0] == "primary" and primary is None:
                primary = rows
            elif context[0] == "subgraph":
                subgraphs.append(SubgraphOpProfile(context[1], context[2], tuple(rows)))
            elif context[0] == "delegate":
                delegate = rows
            continue
        i += 1
    if primary is None:
        raise parse_failure(
            "benchmark_model printed 'Operator-wise Profiling Info for Regular Benchmark Runs' but"
            " no 'Summary by node type' table for the primary graph",
            "\n".join(lines[start:start + 8]) or text,
        )
    return tuple(primary), tuple(subgraphs), tuple(delegate)


def _cm_mb(m: re.Match[str] | None) -> float | None:
    return _num(m[1]) if m else None


def parse_benchmark_model(text: str) -> BenchmarkModelOutput:
    """Parse LiteRT/TFLite ``benchmark_model`` output (stdout and stderr together).

    Recognizes the current summary line (``Inference timings in us: Init: .., First inference:
    .., Warmup (avg): .., Inference (avg): ..``), the legacy one (``Average inference timings
    in us: Warmup: .., Init: .., Inference: ..``) and the results block of LiteRT 2.x's
    CompiledModel tool (``Model initialization: .. ms``, ``Warmup (first)``, ``Warmup (avg): .. ms
    (N runs)``, ``Inference (avg)``, ``Init footprint``, ``Overall footprint``, ``Peak memory``;
    format "compiled_model"). benchmark_model calls its run loop twice, first
    for the warm-up runs and then for the timed ("regular") runs; each call prints a "Running
    benchmark for at least N iterations ..." line followed by one stat line, so the first stat
    line is the warm-up and the second the timed runs. Both are cross-checked against the summary
    line. With ``--enable_op_profiling=true`` the "Summary by node type" tables of the regular
    runs are parsed too.

    Raises ParseError for empty or unrecognized text, for a failed run (its ERROR lines are
    quoted), for a run with no timed iterations, and for output holding several benchmark runs.
    """
    if not text or not text.strip():
        raise ParseError("benchmark_model output is empty; was the binary run at all?")
    lines = _clean_lines(text)
    raw_lines = text.splitlines()
    problems = tuple(
        raw.strip() for raw in raw_lines
        if raw.startswith(("ERROR:", "WARNING:", "FATAL:")) or raw.strip() == "Benchmarking failed."
    )
    errors = [p for p in problems if not p.startswith("WARNING:")]

    current = [m for line in lines if (m := _TIMINGS_RE.search(line))]
    legacy = [m for line in lines if (m := _LEGACY_TIMINGS_RE.search(line))]
    blocks = [m for line in lines if (m := _CM_INFER_AVG_RE.search(line))]
    compiled = bool(blocks) and not current and not legacy and any(_CM_BLOCK in line for line in lines)
    runs = len(blocks) if compiled else len(current) + len(legacy)
    if runs == 0:
        if errors:
            raise parse_failure("benchmark_model failed: " + " | ".join(errors[:5]), text)
        raise parse_failure("no 'Inference timings in us' line (classic tool) or 'BENCHMARK RESULTS' block (LiteRT's "
                    "CompiledModel tool) in benchmark_model output", text)
    if runs > 1:
        raise parse_failure(
            f"benchmark_model output holds {runs} benchmark runs; parse one"
            " run's output at a time",
            text,
        )

    running: list[tuple[int, float | None, float | None]] = []
    stats: list[RunStats] = []
    pending: tuple[int, float | None, float | None] | None = None
    for line in lines:
        stripped = line.strip()
        m = _RUNNING_RE.match(stripped)
        if m:
            pending = (int(m[1]), _num(m[2]) if m[2] else None, _num(m[3]) if m[3] else None)
            running.append(pending)
            continue
        if stripped.startswith("count=") and pending is not None:
            s = _parse_stat_line(stripped, allow_empty=not stats)  # the warm-up may be empty
            stats.append(
                replace(s, min_runs=pending[0], min_secs=pending[1], max_secs=pending[2])
            )
            pending = None
    if len(stats) != 2 or len(running) != 2:
        raise parse_failure(
            f"expected a warm-up and a timed run in benchmark_model output (two 'Running benchmark"
            f" for at least ...' lines each followed by a 'count=' line), found {len(running)}"
            f" run lines and {len(stats)} stat lines",
            text,
        )
    warmup, inference = stats

    def find(regex: re.Pattern[str]) -> re.Match[str] | None:
        for line in lines:
            if mm := regex.search(line):
                return mm
        return None

    fmt: Literal["current", "legacy", "compiled_model"]
    if compiled:  # the block prints ms with two decimals: compared with the stat lines to 10 us
        m = blocks[0]
        init_m, first_m, wavg_m = find(_CM_INIT_RE), find(_CM_WARMUP_FIRST_RE), find(_CM_WARMUP_AVG_RE)
        if init_m is None or wavg_m is None:
            raise parse_failure("LiteRT's BENCHMARK RESULTS block without 'Model initialization' or 'Warmup (avg)'", text)
        init_us = _num(init_m[1]) * 1000.0
        first_us = _num(first_m[1]) * 1000.0 if first_m else None
        warmup_avg_us, inference_avg_us = _num(wavg_m[1]) * 1000.0, _num(m[1]) * 1000.0
        if int(m[2]) != inference.count:
            raise parse_failure(f"BENCHMARK RESULTS counts {m[2]} inference runs, the stat line {inference.count}", m.string)
        if not math.isclose(inference.avg_us, inference_avg_us, abs_tol=10.0) or (
                warmup.count and not math.isclose(warmup.avg_us, warmup_avg_us, abs_tol=10.0)):
            raise parse_failure(f"benchmark_model stat lines (warm-up avg {warmup.avg_us}, timed avg {inference.avg_us} us) "
                        "disagree with its BENCHMARK RESULTS block", m.string)
        fmt = "compiled_model"
    elif current:
        m = current[0]
        init_us, first_us, warmup_avg_us, inference_avg_us = (_num(m[k]) for k in (1, 2, 3, 4))
        fmt = "current"
    else:
        m = legacy[0]
        warmup_avg_us, init_us, inference_avg_us = (_num(m[k]) for k in (1, 2, 3))
        first_us = None
        fmt = "legacy"
    if not math.isfinite(inference_avg_us):
        raise parse_failure(
            f"benchmark_model reported no timed inference (Inference avg {inference_avg_us})",
            m.string,
        )
    if fmt != "compiled_model" and (not _close(inference.avg_us, inference_avg_us)
                                    or not _close(warmup.avg_us, warmup_avg_us)):
        raise parse_failure(
            f"benchmark_model stat lines (warm-up avg {warmup.avg_us}, timed avg"
            f" {inference.avg_us}) disagree with its summary line",
            m.string,
        )
    if first_us is not None and fmt != "compiled_model" and not _close(warmup.first_us, first_us):
        raise parse_failure(f"warm-up first={warmup.first_us} disagrees with 'First inference'", m.string)

    fp = find(_FOOTPRINT_RE)
    peak = find(_PEAK_RE) or (find(_CM_PEAK_RE) if compiled else None)
    vmrss = find(_VMRSS_RE)
    size = find(_MODEL_SIZE_RE)
    init_session = find(_INIT_SESSION_RE)
    delegates: list[DelegateApplication] = []
    for line in lines:
        for regex in _DELEGATE_RES:
            if dm := regex.search(line):
                kernels = int(dm[3]) if dm.re.groups >= 3 and dm[3] else None
                coverage: Literal["complete", "partial"] = (
                    "complete" if dm[2] == "completely" else "partial"
                )
                delegates.append(DelegateApplication(dm[1], coverage, kernels))
        if dm := _DELEGATE_NONE_RE.search(line):
            delegates.append(DelegateApplication(dm[1], "none", 0))

    op_profile, subgraph_profiles, delegate_profile = _parse_regular_profile(lines, text)
    return BenchmarkModelOutput(
        format=fmt,
        init_us=init_us,
        warmup_avg_us=warmup_avg_us,
        inference_avg_us=inference_avg_us,
        first_inference_us=first_us,
        warmup=warmup,
        inference=inference,
        model_size_mb=_num(size[1]) if size else None,
        init_session_ms=_num(init_session[1]) if init_session else None,
        init_footprint_mb=_num(fp[1]) if fp else _cm_mb(find(_CM_INIT_FP_RE)) if compiled else None,
        overall_footprint_mb=_num(fp[2]) if fp else _cm_mb(find(_CM_OVERALL_FP_RE)) if compiled else None,
        peak_memory_mb=_num(peak[1]) if peak else None,
        end_vmrss_mb=_num(vmrss[1]) if vmrss else None,
        delegates=tuple(delegates),
        op_profile=op_profile,
        subgraph_op_profiles=subgraph_profiles,
        delegate_op_profile=delegate_profile,
        warnings=problems,
    )


# --------------------------------------------------------------------------- op categories

OP_CATEGORIES: tuple[str, ...] = ("groupnorm", "gelu", "attention", "conv3x3", "other")

_EXACT_CATEGORY = {
    "CONV_2D": "conv3x3",
    "GELU": "gelu",
    "SOFTMAX": "attention",
    "BATCH_MATMUL": "attention",
}
_KEYWORD_CATEGORY = (
    ("group_norm", "groupnorm"),
    ("groupnorm", "groupnorm"),
    ("scaled_dot_product_attention", "attention"),
    ("sdpa", "attention"),
)


def map_op_category(node_type: str) -> str:
    """Map a benchmark_model node type to one of the paper's categories (OP_CATEGORIES).

    - ``conv3x3``: ``CONV_2D``. The node type does not say the kernel size, so 1x1 convolutions
      (the UNet's skip projections) land here too; TRANSPOSE_CONV and DEPTHWISE_CONV_2D are
      ``other``.
    - ``gelu``: the builtin ``GELU`` (litert-torch always emits it for nn.GELU). A GELU written
      out as its erf formula becomes MUL/ADD/ERF ops: those are ``other``.
    - ``attention``: ``SOFTMAX`` and ``BATCH_MATMUL`` (litert-torch lowers unfused attention to
      them), and any custom/composite node whose name contains
      ``scaled_dot_product_attention`` or ``sdpa``. The Q/K/V/out projections are
      FULLY_CONNECTED: ``other``.
    - ``groupnorm``: any node whose name contains ``group_norm``/``groupnorm`` (a custom op, a
      delegate kernel or an op description naming the ``odml.group_norm`` composite). A
      decomposed GroupNorm (MEAN, SQUARED_DIFFERENCE, RSQRT, MUL, ADD, RESHAPE) cannot be told
      apart from other uses of those ops by type, and the builtin ``STABLEHLO_COMPOSITE`` does not
      carry its composite name in the node type, so both are ``other`` (their time can be read
      from ``BenchmarkModelOutput.subgraph_op_profiles``, whose names are the decompositions').
    - ``other``: everything else, including whole-graph delegate nodes such as
      ``TfLiteGpuDelegateV2``: with a delegate, per-op categories need the delegate's own
      profile (``delegate_op_profile``).

    The node type is matched case-insensitively after dropping a ``CUSTOM ``/``DELEGATE `` prefix
    and an ``/op-description`` suffix (the keyword rules also look at the description).
    """
    full = node_type.strip()
    base = full.split("/", 1)[0].strip()
    for prefix in ("CUSTOM ", "DELEGATE "):
        if base.upper().startswith(prefix):
            base = base[len(prefix):].strip()
    exact = _EXACT_CATEGORY.get(base.upper())
    if exact is not None:
        return exact
    lowered = full.lower()
    for keyword, category in _KEYWORD_CATEGORY:
        if keyword == "sdpa":
            if re.search(r"(?<![a-z])sdpa(?![a-z])", lowered):
                return category
        elif keyword in lowered:
            return category
    return "other"


def op_category_ms(ops: tuple[OpTypeStat, ...] | list[OpTypeStat]) -> dict[str, float]:
    """Average ms per run summed by paper category; every category is present (0.0 if none)."""
    totals = {category: 0.0 for category in OP_CATEGORIES}
    for row in ops:
        totals[map_op_category(row.node_type)] += row.avg_ms
    return totals
