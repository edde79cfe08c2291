"""Report contents from a stored run: the Table-1 view, its formatting, and every format."""
import csv
import io

import pandas as pd
import pytest

from harness.protocol import Execution, JobResult, MemoryFigures
from harness.report.render import render, render_html, render_markdown
from harness.report.table1 import table1
from harness.variants import LADDER
from tests.fakes.stored_runs import ladder_run

MB = 1024 * 1024


@pytest.fixture()
def run(tmp_path):
    results = []
    for i, ms in enumerate([100.0, 90.0, 80.0, 50.0, None]):
        if ms is None:
            results.append(JobResult.failure(f"j{i}", "reference_mismatch", "variant '+winograd' disagrees <b>x</b>"))
        else:
            results.append(JobResult(job_id=f"j{i}", status="ok", samples_ms=[ms - 1, ms, ms + 1, ms + 5],
                                     execution=Execution(timing_method="perf_counter"),
                                     memory=MemoryFigures(weight_bytes=10 * MB, tensor_bytes_measured=(5 - i) * MB,
                                                          tensor_bytes_planned=(4 - i) * MB,
                                                          tensor_measure_method="torch_profiler_cpu_peak")))
    return ladder_run(f"sqlite:///{tmp_path}/r.db", {"id": "host", "kind": "host", "model": "Xeon",
                                                    "gpu": "none (CPU only)"}, results,
                      {"runtime": "torch", "dtype": "fp32", "accelerator": "auto"})


def test_table1_rows(run):
    df = table1(run)
    assert list(df["variant"]) == [n for n, _ in LADDER]
    assert list(df["latency_ms"][:4]) == [100.5, 90.5, 80.5, 50.5]  # medians of the raw samples
    assert df["change_pct"][0] == pytest.approx(0.0)
    assert df["change_pct"][3] == pytest.approx((50.5 / 100.5 - 1) * 100)
    assert df["tensor_mb_measured"][1] == pytest.approx(4.0) and df["weight_mb"][0] == pytest.approx(10.0)
    assert df["status"][4] == "failed" and "disagrees" in df["error"][4]
    assert df["n"][0] == 4 and df["iqr_ms"][0] == pytest.approx(2.25)  # q3 102 - q1 99.75


def test_markdown_and_html(run):
    md = render_markdown(run, table1(run))
    assert "| + FlashAttention | 50.5 | -49.8% | 2.0 | 1.0 | 10.0 | 4 |" in md
    assert "| + Winograd (all) | failed | failed |" in md
    assert "Weights: random" in md
    html = render_html(run, table1(run))
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html  # autoescaped
    assert 'class="failed"' in html and "data:image/png;base64," in html


def test_unknown_format(run, tmp_path):
    with pytest.raises(ValueError, match="known formats: table, json, md, csv, html"):
        render(run, "pdf", tmp_path / "x")


def test_high_cv_row_is_flagged_in_every_format(tmp_path):
    from rich.console import Console

    from harness.thresholds import DEFAULT_CV_MAX
    from harness.report.render import render_csv, render_terminal

    noisy = [60.0, 100.0, 140.0, 100.0]  # CV ~ 28%, over the default cv_max
    results = [JobResult(job_id=f"j{i}", status="ok", samples_ms=samples, execution=Execution(timing_method="perf_counter"))
               for i, samples in enumerate([[99.0, 100.0, 101.0, 100.5], noisy])]
    run = ladder_run(f"sqlite:///{tmp_path}/r.db", {"id": "host", "kind": "host", "model": "Xeon"}, results,
                     {"runtime": "torch", "dtype": "fp32", "accelerator": "auto"})
    df = table1(run)
    assert df["cv"][1] > DEFAULT_CV_MAX > df["cv"][0]
    cv = f"{df['cv'][1] * 100:.1f}%"
    md = render_markdown(run, df)
    row = next(line for line in md.splitlines() if line.startswith("| + optimized softmax"))
    assert f"| {cv} (unstable) |" in row
    base = next(line for line in md.splitlines() if line.startswith("| Baseline"))
    assert "unstable" not in base
    assert f"- Unstable: host / + optimized softmax (CV {cv})" in md and f"above {DEFAULT_CV_MAX:.0%}" in md
    html = render_html(run, df)
    assert f"{cv} (unstable)" in html and "Unstable: host / + optimized softmax" in html
    rows = list(csv.DictReader(io.StringIO(render_csv(run, df))))
    assert [r["cv_unstable"] for r in rows] == ["False", "True"]
    console = Console(width=200, record=True)
    render_terminal(run, df, console)
    text = console.export_text()
    assert f"{cv} (unstable)" in text and "Unstable: host / + optimized softmax" in text


def test_single_sample_has_no_iqr_or_cv(tmp_path):
    """With one sample IQR and CV are not defined: n/a in the terminal, Markdown and HTML, empty in CSV (not 0)."""
    from rich.console import Console

    from harness.report.render import render_csv, render_terminal

    results = [JobResult(job_id=f"j{i}", status="ok", samples_ms=samples, execution=Execution(timing_method="perf_counter"))
               for i, samples in enumerate([[100.0], [90.0, 91.0, 92.0]])]
    run = ladder_run(f"sqlite:///{tmp_path}/r.db", {"id": "host", "kind": "host", "model": "Xeon"}, results,
                     {"runtime": "torch", "dtype": "fp32", "accelerator": "auto"})
    df = table1(run)
    assert df["n"][0] == 1 and pd.isna(df["iqr_ms"][0]) and pd.isna(df["cv"][0])
    assert df["cv"][1] > 0  # two or more samples: defined
    md = render_markdown(run, df)
    base = next(line for line in md.splitlines() if line.startswith("| Baseline"))
    assert base.endswith("| 1 | n/a | n/a |")  # n, IQR ms, CV
    html = render_html(run, df)
    row = html.split("Baseline", 1)[1].split("</tr>", 1)[0]
    assert ">0.0<" not in row and ">0.0%<" not in row and row.count(">n/a<") >= 2
    rows = list(csv.DictReader(io.StringIO(render_csv(run, df))))
    assert (rows[0]["iqr_ms"], rows[0]["cv"]) == ("", "") and rows[1]["cv"] != ""
    console = Console(width=200, record=True)
    render_terminal(run, df, console)
    line = next(x for x in console.export_text().splitlines() if "Baseline" in x)
    assert [c.strip() for c in line.split("│")[-4:-1]] == ["1", "n/a", "n/a"], line


def _wide_run(tmp_path):
    """Five rows of four-digit latencies and a GPU MB column on a phone with a long id: ~115 columns wide."""
    results = [JobResult(job_id=f"j{i}", status="ok", samples_ms=[1234.5 + i, 1240.0 + i, 1300.0],
                         execution=Execution(timing_method="perf_counter"),
                         memory=MemoryFigures(weight_bytes=1234 * MB, tensor_bytes_measured=1500 * MB,
                                              tensor_bytes_planned=1400 * MB, tensor_measure_method="x",
                                              gpu_bytes=3000 * MB)) for i in range(5)]
    return ladder_run(f"sqlite:///{tmp_path}/r.db", {"id": "android:R58M12345ABC", "kind": "android",
                                                    "model": "Pixel 8", "gpu": "Mali-G715"}, results,
                      {"runtime": "litert-gpu", "dtype": "fp16", "accelerator": "gpu"})


def test_run_table_fits_an_80_column_terminal(tmp_path):
    from rich.console import Console

    from harness.report.render import render_terminal

    run = _wide_run(tmp_path)
    df = table1(run)
    console = Console(width=80, record=True)
    render_terminal(run, df, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    for label in ("Baseline", "+ optimized softmax", "+ S-GN/GELU", "+ FlashAttention", "+ Winograd (all)"):
        assert f"│ {label} " in text  # the row label whole, on one line
    assert "1,240.0" in text and "…" not in text  # cells whole, not ellipsized
    assert "not shown at this width: Weight MB" in text
    # A wide console keeps today's layout: every column, no note.
    console = Console(width=200, record=True)
    render_terminal(run, df, console)
    text = console.export_text()
    assert "Weight MB" in text and "Tensor MB plan" in text and "not shown" not in text


def test_terminal_console_keeps_a_terminals_width(monkeypatch):
    """An 80-column terminal gets an 80-column console (the tables fit it); piped output keeps 110 columns
    unless $COLUMNS asks for another width."""
    from harness.report.render import terminal_console

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich: treat the stream as a terminal
    assert terminal_console(stderr=True).width == 80
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    assert terminal_console(stderr=True).width == 80  # piped, but $COLUMNS is explicit
    monkeypatch.delenv("COLUMNS")
    assert terminal_console(stderr=True).width == 110
