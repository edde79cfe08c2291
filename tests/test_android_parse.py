"""Parsers of Android device text, on fixtures reconstructed from the printing code."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.devices.android.parse import (
    OP_CATEGORIES,
    ParseError,
    map_op_category,
    op_category_ms,
    parse_benchmark_model,
)
from harness.devices.android.parse_device import (
    parse_battery_temp,
    parse_devices_gles,
    parse_getprop,
    parse_meminfo_graphics,
    parse_meminfo_total_ram,
    parse_thermal_zones,
    split_gles,
)

DATA = Path(__file__).parent / "data" / "android"


def fixture(name: str) -> str:
    return (DATA / name).read_text()


# --------------------------------------------------------------------------- benchmark_model


def test_current_format_gpu_run() -> None:
    out = parse_benchmark_model(fixture("benchmark_model_gpu_current.txt"))
    assert out.format == "current"
    assert out.init_us == 2843510
    assert out.first_inference_us == 1392545
    # "1.26533e+06" / "1.18583e+06": ostream's 6 significant digits
    assert out.warmup_avg_us == pytest.approx(1.26533e6)
    assert out.inference_avg_us == pytest.approx(1.18583e6)
    assert out.inference_avg_ms == pytest.approx(1185.83)
    w, t = out.warmup, out.inference
    assert (w.count, w.first_us, w.min_us, w.max_us, w.std_us) == (3, 1392545, 1187315, 1392545, 90717)
    assert (w.min_runs, w.min_secs, w.max_secs) == (3, 0.5, 150)
    assert (t.count, t.first_us, t.curr_us, t.min_us, t.max_us, t.std_us) == (
        20, 1185735, 1177300, 1177300, 1197303, 5143)
    assert (t.p5_us, t.median_us, t.p95_us) == (1179359, 1185735, 1197303)
    assert (t.min_runs, t.min_secs) == (20, 1.0)
    assert out.model_size_mb == pytest.approx(1720.45)
    assert out.init_session_ms == pytest.approx(2843.51)
    assert out.init_footprint_mb == pytest.approx(1873.45)
    assert out.overall_footprint_mb == pytest.approx(1911.2)
    assert out.peak_memory_mb == pytest.approx(1925.12)
    assert out.end_vmrss_mb == 1920
    assert [(d.name, d.coverage) for d in out.delegates] == [("GPU", "complete")]
    assert out.op_profile == () and not out.op_profiled
    assert out.warnings == ()


def test_current_format_op_profiling_primary_graph_only() -> None:
    out = parse_benchmark_model(fixture("benchmark_model_cpu_op_profiling.txt"))
    assert out.inference.count == 10 and out.inference_avg_us == pytest.approx(10059.3)
    types = [row.node_type for row in out.op_profile]
    assert len(types) == 16 and len(set(types)) == 16
    # the initialization section's table (ModifyGraphWithDelegate, AllocateTensors) is skipped
    assert "AllocateTensors" not in types
    conv = out.op_profile[0]
    assert (conv.node_type, conv.count, conv.avg_ms, conv.avg_percent, conv.times_called) == (
        "CONV_2D", 7, 3.845, 39.039, 7)
    assert out.op_profile[-1].cdf_percent == pytest.approx(100.0)
    assert sum(r.avg_percent for r in out.op_profile) == pytest.approx(100.0, abs=0.01)
    assert out.op_avg_ms()["SOFTMAX"] == pytest.approx(0.614)
    # the decomposition subgraph is kept apart, with its own table
    (sub,) = out.subgraph_op_profiles
    assert (sub.index, sub.name) == (1, "XlaCallModule_odml.group_norm.impl_0")
    assert sub.ops[0].node_type == "MEAN" and sub.ops[0].times_called == 8
    assert out.delegate_op_profile == ()


def test_category_ms_sums_by_paper_category() -> None:
    out = parse_benchmark_model(fixture("benchmark_model_cpu_op_profiling.txt"))
    plain = op_category_ms(out.op_profile)
    assert set(plain) == set(OP_CATEGORIES)
    assert plain["conv3x3"] == pytest.approx(3.845)
    assert plain["attention"] == pytest.approx(1.613 + 0.614)  # BATCH_MATMUL + SOFTMAX
    assert plain["gelu"] == pytest.approx(0.256)
    assert plain["groupnorm"] == 0.0  # STABLEHLO_COMPOSITE does not name its composite
    # every decomposition subgraph is a group norm: composites count as groupnorm
    cats = out.category_ms()
    assert cats["groupnorm"] == pytest.approx(0.948)
    assert cats["other"] == pytest.approx(plain["other"] - 0.948)
    assert sum(cats.values()) == pytest.approx(sum(r.avg_ms for r in out.op_profile))


def test_legacy_format_inference() -> None:
    out = parse_benchmark_model(fixture("benchmark_model_legacy_inference.txt"))
    assert out.format == "legacy"
    assert out.first_inference_us is None
    assert out.init_us == 412887
    assert out.warmup_avg_us == pytest.approx(11995.2)
    assert out.inference_avg_us == pytest.approx(11778.6)
    assert (out.warmup.count, out.inference.count) == (42, 85)
    assert out.inference.p5_us is None
    assert out.delegates[0].name == "GPU" and out.delegates[0].coverage == "complete"


def test_legacy_format_no_stats_and_single_warmup_run() -> None:
    out = parse_benchmark_model(fixture("benchmark_model_legacy_no_stats.txt"))
    assert out.format == "legacy"
    assert out.inference_avg_us == pytest.approx(137733)
    # "count=1 curr=146161": one run, so every statistic is that run
    w = out.warmup
    assert (w.count, w.first_us, w.min_us, w.max_us, w.avg_us, w.std_us) == (
        1, 146161, 146161, 146161, 146161, 0)
    # "Running benchmark for 50 iterations" (no seconds in that era)
    assert (out.inference.min_runs, out.inference.min_secs, out.inference.max_secs) == (50, None, None)


def test_failed_run_raises_with_its_error_lines() -> None:
    with pytest.raises(ParseError, match="Failed to apply GPU delegate"):
        parse_benchmark_model(fixture("benchmark_model_failed_gpu.txt"))


@pytest.mark.parametrize("text", ["", "   \n\n"])
def test_empty_output_raises(text: str) -> None:
    with pytest.raises(ParseError, match="empty"):
        parse_benchmark_model(text)


def test_garbage_raises_quoting_the_text() -> None:
    with pytest.raises(ParseError, match="starts with: 'sh: benchmark_model: not found"):
        parse_benchmark_model("sh: benchmark_model: not found\n")


def test_truncated_output_raises() -> None:
    text = fixture("benchmark_model_gpu_current.txt")
    cut = text[: text.index("INFO: Running benchmark for at least 20")]  # died in the timed runs
    with pytest.raises(ParseError, match="no 'Inference timings in us'"):
        parse_benchmark_model(cut)


def test_missing_stat_line_raises() -> None:
    text = fixture("benchmark_model_gpu_current.txt")
    lines = [ln for ln in text.splitlines() if not ln.startswith("INFO: count=20 ")]
    with pytest.raises(ParseError, match="found 2 run lines and 1 stat lines"):
        parse_benchmark_model("\n".join(lines))


def test_two_runs_in_one_text_raise() -> None:
    text = fixture("benchmark_model_gpu_current.txt")
    with pytest.raises(ParseError, match="holds 2 benchmark runs"):
        parse_benchmark_model(text + text)


def test_summary_disagreeing_with_stat_lines_raises() -> None:
    text = fixture("benchmark_model_gpu_current.txt").replace(
        "Inference (avg): 1.18583e+06", "Inference (avg): 1.28583e+06")
    with pytest.raises(ParseError, match="disagree"):
        parse_benchmark_model(text)


def test_no_timed_runs_raises_not_zero() -> None:
    text = """INFO: Running benchmark for at least 0 iterations and at least -1 seconds but terminate if exceeding 150 seconds.
INFO: count=0

INFO: Running benchmark for at least 0 iterations and at least -1 seconds but terminate if exceeding 150 seconds.
INFO: count=0

INFO: Inference timings in us: Init: 2517, First inference: 0, Warmup (avg): nan, Inference (avg): nan
"""
    with pytest.raises(ParseError, match="count=0"):
        parse_benchmark_model(text)



def test_an_empty_warm_up_is_accepted_and_the_timed_runs_kept() -> None:
    """--warmup_runs=0 --warmup_min_secs=0: the warm-up stat is a bare count=0 and its avg is nan."""
    text = """INFO: Running benchmark for at least 0 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=0

INFO: Running benchmark for at least 2 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=2 first=107 curr=19 min=19 max=107 avg=63 std=44 p5=19 median=107 p95=107

INFO: Inference timings in us: Init: 1405, First inference: 0, Warmup (avg): nan, Inference (avg): 63
"""
    parsed = parse_benchmark_model(text)
    assert parsed.warmup.count == 0 and parsed.inference.count == 2 and parsed.inference.median_us == 107
    from harness.devices.android import exact_samples_ms, summary_ms

    assert exact_samples_ms(parsed.warmup) == [] and summary_ms(parsed.warmup)["avg"] is None
    assert exact_samples_ms(parsed.inference) == [0.107, 0.019]

_MINIMAL = """Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=5 curr=1200(all same)

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=1210 curr=1190 min=1150 max=1290 avg=1203.5 std=21
{tail}
"""


def test_all_same_stat_line() -> None:
    out = parse_benchmark_model(_MINIMAL.format(
        tail="Inference timings in us: Init: 9, First inference: 1200, Warmup (avg): 1200,"
             " Inference (avg): 1203.5"))
    assert (out.warmup.count, out.warmup.min_us, out.warmup.max_us, out.warmup.std_us) == (
        5, 1200, 1200, 0)


def test_delegate_internal_and_csv_rows() -> None:
    tail = """Inference timings in us: Init: 9, First inference: 1200, Warmup (avg): 1200, Inference (avg): 1203.5
Operator-wise Profiling Info for Regular Benchmark Runs:
Number of nodes executed: 1
============================== Summary by node type ==============================
node type, count, avg_ms, avg %, cdf %, mem KB, times called
TfLiteXNNPackDelegate, 1, 1.171, 100%, 100%, 0, 1

Timings (microseconds): count=50 first=1190 curr=1170 min=1130 max=1270 avg=1171.5 std=21
Memory (bytes): count=0
1 nodes observed

Delegate internal: 
Number of nodes executed: 2
============================== Summary by node type ==============================
\t                             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t          Convolution (NHWC, F32) IGEMM\t        1\t     0.900\t    80.000%\t    80.000%\t     0.000\t        1
\t                     Softmax (NC, F32)\t        1\t     0.225\t    20.000%\t   100.000%\t     0.000\t        1
"""
    out = parse_benchmark_model(_MINIMAL.format(tail=tail))
    assert [(r.node_type, r.avg_ms, r.avg_percent) for r in out.op_profile] == [
        ("TfLiteXNNPackDelegate", 1.171, 100.0)]
    assert [r.node_type for r in out.delegate_op_profile] == [
        "Convolution (NHWC, F32) IGEMM", "Softmax (NC, F32)"]
    assert out.delegate_op_profile[0].avg_ms == pytest.approx(0.9)


def test_unrecognized_op_table_row_raises() -> None:
    tail = """Inference timings in us: Init: 9, First inference: 1200, Warmup (avg): 1200, Inference (avg): 1203.5
Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Summary by node type ==============================
\t                             [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t                                 CONV_2D\t  garbage
"""
    with pytest.raises(ParseError, match="Summary by node type"):
        parse_benchmark_model(_MINIMAL.format(tail=tail))


def test_partial_and_no_delegation_are_reported() -> None:
    tail = ("Inference timings in us: Init: 9, First inference: 1200, Warmup (avg): 1200,"
            " Inference (avg): 1203.5\n")
    head = ("INFO: Explicitly applied GPU delegate, and the model graph will be partially executed"
            " by the delegate w/ 3 delegate kernels.\n"
            "INFO: Though NNAPI delegate is explicitly applied, the model graph will not be executed"
            " by the delegate.\n")
    out = parse_benchmark_model(head + _MINIMAL.format(tail=tail))
    assert [(d.name, d.coverage, d.delegate_kernels) for d in out.delegates] == [
        ("GPU", "partial", 3), ("NNAPI", "none", 0)]


@pytest.mark.parametrize(
    ("node_type", "category"),
    [
        ("CONV_2D", "conv3x3"),
        ("DEPTHWISE_CONV_2D", "other"),
        ("TRANSPOSE_CONV", "other"),
        ("GELU", "gelu"),
        ("SOFTMAX", "attention"),
        ("BATCH_MATMUL", "attention"),
        ("FULLY_CONNECTED", "other"),
        ("odml.group_norm", "groupnorm"),
        ("CUSTOM GroupNorm", "groupnorm"),
        ("STABLEHLO_COMPOSITE/odml.group_norm", "groupnorm"),
        ("STABLEHLO_COMPOSITE", "other"),
        ("odml.scaled_dot_product_attention", "attention"),
        ("DELEGATE sdpa", "attention"),
        ("MEAN", "other"),
        ("TfLiteGpuDelegateV2", "other"),
        ("softmax", "attention"),
    ],
)
def test_map_op_category(node_type: str, category: str) -> None:
    assert map_op_category(node_type) == category
    assert category in OP_CATEGORIES


# --------------------------------------------------------------------------- other device text


def test_getprop() -> None:
    props = parse_getprop(fixture("getprop.txt"))
    assert props["ro.product.model"] == "SM-S918B"
    assert props["ro.soc.model"] == "SM8550"
    assert props["ro.boot.hardware.sku"] == ""
    assert props["ro.build.fingerprint"].endswith(":user/release-keys")
    assert len(props) == 25


def test_getprop_multiline_value_and_brackets() -> None:
    text = "[a.b]: [x]y]\n[multi]: [line one\nline two]\n[c]: [3]\n"
    assert parse_getprop(text) == {"a.b": "x]y", "multi": "line one\nline two", "c": "3"}


@pytest.mark.parametrize("text", ["", "/system/bin/sh: getprop: not found\n", "[unterminated]: [x\n"])
def test_getprop_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_getprop(text)


def test_gles_line() -> None:
    gles = parse_devices_gles(fixture("dumpsys_surfaceflinger.txt"))
    assert gles is not None and gles.startswith("Qualcomm, Adreno (TM) 740, OpenGL ES 3.2 V@0615.65")
    info = split_gles(gles)
    assert (info.vendor, info.renderer) == ("Qualcomm", "Adreno (TM) 740")
    assert info.version.startswith("OpenGL ES 3.2") and "1689750853" in info.version


def test_gles_absent_or_unreachable() -> None:
    text = fixture("dumpsys_surfaceflinger.txt")
    no_gles = "\n".join(ln for ln in text.splitlines() if not ln.startswith("GLES:"))
    assert parse_devices_gles(no_gles) is None
    with pytest.raises(ParseError):
        parse_devices_gles("")
    with pytest.raises(ParseError, match="could not dump"):
        parse_devices_gles("Can't find service: SurfaceFlinger\n")


def test_meminfo_graphics() -> None:
    mem = parse_meminfo_graphics(fixture("dumpsys_meminfo_pid.txt"))
    assert mem.graphics_kb == 1033112
    assert (mem.gl_mtrack_kb, mem.egl_mtrack_kb, mem.gfx_dev_kb) == (1024336, 2368, 6408)
    assert mem.graphics_kb == mem.gl_mtrack_kb + mem.egl_mtrack_kb + mem.gfx_dev_kb
    assert mem.total_pss_kb == 2986409
    assert (mem.pid, mem.process) == (21473, "/data/local/tmp/harness/benchmark_model")


def test_meminfo_rows_omitted_when_zero_and_summary_only() -> None:
    text = fixture("dumpsys_meminfo_pid.txt")
    no_gl = "\n".join(ln for ln in text.splitlines() if "GL mtrack" not in ln)
    assert parse_meminfo_graphics(no_gl).gl_mtrack_kb == 0
    assert parse_meminfo_graphics(no_gl).egl_mtrack_kb == 0
    summary_only = text[text.index(" App Summary"):]  # dumpsys meminfo -s
    mem = parse_meminfo_graphics(summary_only)
    assert (mem.graphics_kb, mem.total_pss_kb, mem.gl_mtrack_kb) == (1033112, 2986409, None)


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "empty"), ("No process found for: 4242\n", "no process '4242'"),
     ("Applications Memory Usage (in Kilobytes):\nUptime: 1 Realtime: 1\n", "Graphics")],
)
def test_meminfo_rejects(text: str, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        parse_meminfo_graphics(text)


def test_meminfo_two_processes_rejected() -> None:
    text = fixture("dumpsys_meminfo_pid.txt")
    with pytest.raises(ParseError, match="2 processes"):
        parse_meminfo_graphics(text + text.replace("pid 21473", "pid 21474"))


def test_proc_meminfo_total_ram_bytes() -> None:
    assert parse_meminfo_total_ram(fixture("proc_meminfo.txt")) == 11597696 * 1024
    with pytest.raises(ParseError):
        parse_meminfo_total_ram("MemFree: 12 kB\n")


def test_thermal_zones() -> None:
    zones = parse_thermal_zones(fixture("thermal_zones.txt"))
    assert len(zones) == 7
    assert (zones[2].zone, zones[2].type, zones[2].temp_c) == ("thermal_zone2", "gpuss-0", 39.8)
    assert zones[5].temp_c is None  # an unreadable zone
    with pytest.raises(ParseError):
        parse_thermal_zones("cat: /sys/class/thermal/thermal_zone*/type: No such file\n")
    with pytest.raises(ParseError):
        parse_thermal_zones("")


def test_battery_temp() -> None:
    assert parse_battery_temp("312\n") == pytest.approx(31.2)
    assert parse_battery_temp(fixture("dumpsys_battery.txt")) == pytest.approx(33.4)
    for bad in ("", "cat: /sys/class/power_supply/battery/temp: Permission denied"):
        with pytest.raises(ParseError):
            parse_battery_temp(bad)


# ------------------------------------------------------------------------------------ LiteRT 2.x CompiledModel tool

def test_compiled_model_tool_output() -> None:
    """LiteRT 2.x's //litert/tools:benchmark_model: the base tool's run loops, then its own BENCHMARK
    RESULTS block (no 'Inference timings in us' line). Fixture: the stand-in's output in the layout of
    litert/tools/benchmark_litert_model.h, reconstructed from that printing code (tests/data/android/README.md)."""
    from harness.devices.android.parse import parse_benchmark_model

    out = parse_benchmark_model((DATA / "benchmark_model_compiled_model_gpu.txt").read_text())
    assert out.format == "compiled_model"
    assert out.init_us == pytest.approx(848920.0) and out.first_inference_us == pytest.approx(1490.0)
    assert out.inference.count == 4655 and out.inference.median_us == 92 and out.inference_avg_us == pytest.approx(210.0)
    assert out.warmup.count == 3254 and out.warmup_avg_us == pytest.approx(150.0)
    assert (out.init_footprint_mb, out.overall_footprint_mb, out.peak_memory_mb) == (56.22, 118.5, 145.19)
    assert out.delegates == ()  # the tool prints no delegate lines: delegation is what its flags demanded
    bad = (DATA / "benchmark_model_compiled_model_gpu.txt").read_text().replace("(4655 runs)", "(12 runs)")
    with pytest.raises(ParseError, match="BENCHMARK RESULTS counts 12 inference runs, the stat line 4655"):
        parse_benchmark_model(bad)
