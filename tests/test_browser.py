"""The HTML regression report in a real headless browser (Debian's chromium): it loads with no console
errors, every embedded plot decodes, the Table-1 comparison is in the DOM, and a screenshot is taken.

Skipped only when chromium is not installed (CI installs it: .ci/run).
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from harness.regression import compare_runs
from harness.report import regression_render as rr
from test_regression import REGRESSED, Night, add_run, build_nightlies, slow

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; "
                                                          ".ci/run installs it)")


def _chromium(tmp_path: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{name}"  # a fresh profile per launch
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=90)


def _console_lines(stderr: str) -> list[str]:
    """Chromium's log lines for page console messages and uncaught errors (the page itself logs nothing)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    """A realistic nightly: 24 nightlies with an older 8% improvement (a change point), a confirmed latency
    regression, a confirmed memory regression, a throttled cell and a failed job."""
    tmp = tmp_path_factory.mktemp("browser")
    store = build_nightlies(tmp / "r.db", nights=0)
    better = ("ios:00008120-001A", "+flash_attention")
    mem_cell = ("ios:00008120-001A", "+sgn_gelu")
    for i in range(24):
        add_run(store, f"n{i:02d}", Night(day=i, latency=slow(0.92, better) if i >= 12 else {}), seed=i)
    add_run(store, "prev", Night(day=24, latency={REGRESSED: 1.12, better: 0.92}, tensor={mem_cell: 1.25}), seed=90)
    add_run(store, "cand", Night(day=25, latency={REGRESSED: 1.12, better: 0.92}, tensor={mem_cell: 1.25},
                                 throttled={("ios:00008120-001A", "baseline")},
                                 failed={("android:R5CW10ABCDE", "+winograd")}, tags=()), seed=91)
    report = compare_runs(store, "nightly", "latest")
    assert any(c.change_points for c in report.cells)  # the older improvement is found
    (path,) = rr.write_outputs(report, html=tmp / "regression.html")
    return path


def test_html_is_self_contained(report_html: Path) -> None:
    html = report_html.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)  # nothing fetched from outside
    assert html.count("data:image/png;base64,") == 10
    assert "Content-Security-Policy" in html


def test_page_loads_without_console_errors(report_html: Path, tmp_path: Path) -> None:
    out = _chromium(tmp_path, "dom", "--dump-dom", "--virtual-time-budget=5000", report_html.as_uri())
    assert out.returncode == 0, out.stderr[-2000:]
    assert _console_lines(out.stderr) == [], _console_lines(out.stderr)
    dom = out.stdout
    assert 'data-images-loaded="10/10"' in dom  # every base64 plot decoded in the browser
    assert 'data-status="FAIL"' in dom and dom.count('<table class="table1"') == 2
    assert dom.count('data-verdict="REGRESSION"') >= 2 and "confirmed" in dom
    assert "+ FlashAttention" in dom and "change point" in dom


def test_screenshot(report_html: Path, tmp_path: Path) -> None:
    shot = Path(os.environ.get("HARNESS_SCREENSHOT", tmp_path / "regression.png"))
    out = _chromium(tmp_path, "shot", f"--screenshot={shot}", "--window-size=1400,2000", "--hide-scrollbars",
                    report_html.as_uri())
    assert out.returncode == 0, out.stderr[-2000:]
    assert _console_lines(out.stderr) == [], _console_lines(out.stderr)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 2000)
    assert len(data) > 60_000  # a page of tables and plots, not a blank one


# ------------------------------------------------------------------------------------ the run report

@pytest.fixture(scope="module")
def run_report(tmp_path_factory) -> tuple[Path, object]:
    """`harness report --format html` of a stored ladder run: raw samples, memory, versions, a failed row."""
    from harness.protocol import Execution, JobResult, MemoryFigures
    from harness.report.render import render
    from tests.fakes.stored_runs import ladder_run

    tmp = tmp_path_factory.mktemp("run-report")
    mb = 2**20
    results = [JobResult(job_id=f"j{i}", status="ok", samples_ms=[ms * (1 + 0.01 * k) for k in range(6)],
                         execution=Execution(timing_method="perf_counter"), versions={"torch": "2.13.0+cpu", "numpy": "2.3.5"},
                         memory=MemoryFigures(weight_bytes=12 * mb, tensor_bytes_measured=(5 - i) * mb,
                                              tensor_bytes_planned=None if i == 2 else (4 - i) * mb,
                                              tensor_measure_method="torch_profiler_cpu_peak"))
               for i, ms in enumerate([100.0, 90.0, 80.0, 50.0])]
    results.append(JobResult.failure("j4", "reference_mismatch", "variant '+winograd' disagrees"))
    run = ladder_run(f"sqlite:///{tmp}/r.db", {"id": "host", "kind": "host", "model": "Xeon", "gpu": "none (CPU only)",
                                              "soc": "2 cores", "ram_bytes": 24 * 2**30, "extra": {"python": "3.11.7"}},
                     results, {"runtime": "torch", "dtype": "fp32", "threads": 0, "accelerator": "auto"})
    path = tmp / "run.html"
    render(run, "html", path)
    return path, run


def test_run_report_is_one_self_contained_page_with_every_section(run_report) -> None:
    path, _ = run_report
    html = path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html)  # nothing fetched from outside
    assert "Content-Security-Policy" in html
    assert html.count("data:image/png;base64,") == 3  # latency, raw samples, memory
    for section in ('id="samples"', 'id="memory"', 'id="environment"', 'id="data"', "Error bars: half the "
                    "interquartile range", "Libraries and tools", "2.13.0+cpu", "0 (the runtime&#39;s default)",
                    "24.0 GiB"):
        assert section in html, section


def test_run_report_renders_in_chromium_and_its_download_is_the_stored_run(run_report, tmp_path: Path) -> None:
    import base64
    import csv
    import io
    import json

    from harness.report.render import render_csv
    from harness.report.table1 import table1

    path, run = run_report
    out = _chromium(tmp_path, "run", "--dump-dom", "--virtual-time-budget=5000", path.as_uri())
    assert out.returncode == 0, out.stderr[-2000:]
    assert _console_lines(out.stderr) == [], _console_lines(out.stderr)
    dom = out.stdout
    assert 'data-images-loaded="3/3"' in dom  # every chart decoded in the browser
    assert 'data-raw-jobs="5"' in dom  # the page's own script decoded the embedded JSON
    href = re.search(r'id="download-json" download="[^"]+" href="data:application/json;base64,([^"]+)"', dom)[1]
    doc = json.loads(base64.b64decode(href))
    assert [j["variant"] for j in doc["jobs"]] == [j.variant for j in run.jobs]
    assert [j["result"]["samples_ms"] for j in doc["jobs"]] == [j.result.samples_ms for j in run.jobs]  # raw samples
    assert doc["devices"]["host"]["model"] == "Xeon" and doc["jobs"][4]["result"]["error"]["kind"] == "reference_mismatch"
    href = re.search(r'id="download-csv" download="[^"]+" href="data:text/csv;base64,([^"]+)"', dom)[1]
    text = base64.b64decode(href).decode()
    assert text == render_csv(run, table1(run))
    assert [r["variant"] for r in csv.DictReader(io.StringIO(text))] == [j.variant for j in run.jobs]
