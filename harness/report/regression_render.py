"""Render a RegressionReport: terminal, Markdown summary, JUnit XML, regressions.json, CSV, HTML.

Every renderer reads the report's data (verdicts, ratios, CIs, p-values, trends, change points) and
formats it through `cell_fields`, the one formatting path; nothing here recomputes a statistic.
"""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from harness.compare import IMPROVEMENT, INCONCLUSIVE, NO_CHANGE, REGRESSION, UNSTABLE, VERDICTS, Verdict
from harness.regression import MARKS, MEMORY_LABELS, CellResult, RegressionReport

MIB = 1024.0 * 1024.0
COLORS = {REGRESSION: "#c62828", IMPROVEMENT: "#2e7d32", NO_CHANGE: "#616161", INCONCLUSIVE: "#b26a00",
          UNSTABLE: "#6a1b9a"}
CSS_CLASS = {REGRESSION: "regression", IMPROVEMENT: "improvement", NO_CHANGE: "nochange",
             INCONCLUSIVE: "inconclusive", UNSTABLE: "unstable"}

# (field, header) of the per-device Table-1 comparison, in display order (terminal, Markdown, HTML).
TABLE_COLUMNS: list[tuple[str, str]] = [
    ("row", "Row"),
    ("baseline_ms", "Baseline ms"),
    ("candidate_ms", "Candidate ms"),
    ("change", "Change"),
    ("ci", "95% CI"),
    ("p", "p"),
    ("n", "n (b/c)"),
    ("gate", "History shift / gate"),
    ("tensor_mb", "Tensor MB"),
    ("weight_mb", "Weight MB"),
    ("memory", "Memory"),
    ("verdict", "Verdict"),
]
# The terminal has less room: the same fields, fewer of them, shorter headers.
TERMINAL_COLUMNS = [("row", "Row"), ("baseline_ms", "Base ms"), ("candidate_ms", "Cand ms"), ("change", "Change"),
                    ("ci", "95% CI"), ("p", "p"), ("n", "n b/c"), ("gate", "Shift / gate"), ("memory", "Mem"),
                    ("verdict", "Verdict")]


# ------------------------------------------------------------------------------------ formatting

def fmt_ms(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    if abs(value) >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_pct(ratio: float | None) -> str:
    return "—" if ratio is None else f"{(ratio - 1.0) * 100:+.1f}%"


def fmt_time(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "—"


def fmt_state_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if key.endswith("_bytes"):
            return f"{value / MIB:,.0f} MiB"
        if isinstance(value, float):
            return f"{value:.1f}"
        return str(value)
    return str(value)


def verdict_text(cell: CellResult) -> str:
    text = f"{MARKS[cell.verdict]} {cell.verdict}"
    if cell.verdict == REGRESSION:
        text += " (confirmed)" if cell.confirmed else " (unconfirmed)"
    return text


def memory_text(memory: Mapping[str, Verdict]) -> str:
    """The memory verdicts in a few words: the metrics that moved, or '=' with what was compared."""
    moved = [f"{MARKS[v.verdict]} {MEMORY_LABELS.get(m, m)} {fmt_pct(v.ratio)}"
             for m, v in memory.items() if v.verdict in (REGRESSION, IMPROVEMENT)]
    if moved:
        return ", ".join(moved)
    if memory:
        return "= no change"
    return "—"


def _mb(value: Any) -> str:
    return "—" if value is None else f"{value / MIB:,.1f}"


def cell_fields(cell: CellResult) -> dict[str, str]:
    """The formatted fields of one cell (TABLE_COLUMNS keys plus reason, confirmation, label)."""
    lat = cell.latency
    if lat.noise_gate is not None and lat.history_shift is not None:
        gate = f"{lat.history_shift * 100:+.1f}% / ±{lat.noise_gate * 100:.1f}%"
        if lat.history_step:  # the gate is centred after a change point of the history
            gate += " (after step)"
    elif lat.ratio is not None:
        gate = f"skipped ({lat.n_history} medians)"
    else:
        gate = "—"
    moved = [f"{MEMORY_LABELS.get(m, m)} memory: {v.reason}" for m, v in cell.memory.items() if v.verdict != NO_CHANGE]
    reasons = [f"latency: {lat.reason}" if moved else lat.reason, *moved]
    return {
        "row": cell.label,
        "baseline_ms": fmt_ms(lat.baseline_median),
        "candidate_ms": fmt_ms(lat.candidate_median) if cell.status == "ok" else cell.status,
        "change": fmt_pct(lat.ratio),
        "ci": "—" if lat.ci_low is None or lat.ci_high is None else f"[{fmt_pct(lat.ci_low)}, {fmt_pct(lat.ci_high)}]",
        "p": "—" if lat.p_value is None else f"{lat.p_value:.2g}",
        "n": f"{lat.n_baseline}/{lat.n_candidate}",
        "gate": gate,
        "tensor_mb": _mb(cell.candidate_memory.get("tensor_bytes_measured")),
        "weight_mb": _mb(cell.candidate_memory.get("weight_bytes")),
        "memory": memory_text(cell.memory),
        "memory_title": "; ".join(f"{MEMORY_LABELS.get(m, m)}: {v.verdict}, {v.reason}" for m, v in cell.memory.items()),
        "verdict": verdict_text(cell),
        "latency_verdict": f"{MARKS[lat.verdict]} {lat.verdict}",
        "reason": "; ".join(reasons),
        "confirmation": cell.confirmation,
        "title": f"{cell.key.device} / {cell.label}",
        # For the regressions tables: the change of what regressed (the CI and p exist for latency only).
        "regressed": ", ".join(cell.regressed),
        "reg_change": "; ".join(
            [fmt_pct(lat.ratio) + " latency"] * (lat.verdict == REGRESSION)
            + [f"{fmt_pct(v.ratio)} {MEMORY_LABELS.get(m, m)}" for m, v in cell.memory.items() if v.verdict == REGRESSION]),
        "reg_ci": "—" if lat.verdict != REGRESSION or lat.ci_low is None or lat.ci_high is None
        else f"[{fmt_pct(lat.ci_low)}, {fmt_pct(lat.ci_high)}]",
        "reg_p": "—" if lat.verdict != REGRESSION or lat.p_value is None else f"{lat.p_value:.2g}",
    }


def groups(report: RegressionReport) -> list[tuple[str, list[CellResult]]]:
    """Cells grouped per device (and workload/options when a device has several), in Table-1 order."""
    out: dict[tuple[str, str, str], list[CellResult]] = {}
    for cell in report.cells:
        out.setdefault((cell.key.device, cell.key.workload, cell.key.options_hash), []).append(cell)
    multi = {d for d, _, _ in out if sum(1 for k in out if k[0] == d) > 1}
    titled = []
    for (device, workload, opts), cells in out.items():
        info = report.candidate.devices.get(device, {})
        what = ", ".join(str(info[k]) for k in ("model", "soc", "gpu") if info.get(k) and "none" not in str(info[k]))
        title = device + (f" ({what})" if what else "")
        if device in multi or workload != "unet_iteration":
            title += f" — {workload}, options {opts[:8]}"
        titled.append((title, sorted(cells, key=lambda c: (c.variant_index, c.key.variant))))
    return titled


def unjudged_text(report: RegressionReport) -> str:
    """'5 of 5 cells could not be judged (5 UNSTABLE)', or '' when every cell was judged."""
    unjudged = report.unjudged()
    if not unjudged:
        return ""
    why = ", ".join(f"{n} failed job{'s' if n != 1 else ''}" if k == "failed" else f"{n} {k}"
                    for k, n in report.unjudged_counts().items())
    total = len(report.cells)
    return f"{len(unjudged)} of {total} cell{'s' if total != 1 else ''} could not be judged ({why})"


def headline(report: RegressionReport) -> tuple[str, str]:
    """(status word, sentence) for the top of every report: FAIL, WARN, NOT JUDGED, INCOMPLETE or OK.

    "OK: no regression" only when every cell was judged; unjudged cells (UNSTABLE, INCONCLUSIVE,
    failed jobs) are named in every sentence."""
    confirmed, regs = len(report.confirmed_regressions()), len(report.regressions())
    unjudged = unjudged_text(report)
    tail = f"; {unjudged}" if unjudged else ""
    if confirmed:
        return "FAIL", f"{confirmed} confirmed regression{'s' if confirmed != 1 else ''}" + (
            f" ({regs - confirmed} more unconfirmed)" if regs > confirmed else "") + tail
    if regs:
        return "WARN", (f"{regs} unconfirmed regression{'s' if regs != 1 else ''} "
                        f"(not reproduced or not rechecked){tail}")
    if unjudged and len(report.unjudged()) == len(report.cells):
        return "NOT JUDGED", f"{unjudged} — no regression shown"
    if unjudged:
        judged = len(report.cells) - len(report.unjudged())
        return "INCOMPLETE", f"{unjudged} — no regression in the {judged} judged"
    return "OK", "no regression"


# Per status word: terminal colour, Markdown icon, HTML class.
STATUS_STYLE: dict[str, tuple[str, str, str]] = {
    "FAIL": ("red", "❌", "FAIL"), "WARN": ("yellow", "⚠️", "WARN"), "NOT JUDGED": ("magenta", "❔", "NOT_JUDGED"),
    "INCOMPLETE": ("yellow", "⚠️", "INCOMPLETE"), "OK": ("green", "✅", "OK"),
}


def sampling_text(cell: CellResult) -> str:
    """A same-session A/B cell's sampling in one line: samples spent, looks, block order, why it stopped."""
    s = cell.sampling or {}
    if not s:
        return ""
    looks = s.get("looks") or []
    planned = len((s.get("plan") or {}).get("looks") or []) or None
    order = s.get("order") or ""
    order = order if len(order) <= 24 else order[:24] + "..."
    unit = " (one per launch: the device reports a summary, not each run)" if s.get("sample_unit") == "launch" else ""
    return (f"{s.get('samples_a', 0)} + {s.get('samples_b', 0)} samples{unit} in {len(s.get('blocks') or [])} blocks "
            f"({order}), {len(looks)} look(s), {s.get('seconds', 0.0):.1f} s; stopped: {s.get('stop_reason') or '?'}"
            + (f" [plan: {planned} looks]" if planned else ""))


def _baseline_text(report: RegressionReport) -> str:
    b = report.baseline
    if b.get("kind") == "ab":
        return str(b.get("description") or f"run {b.get('run_id')}")
    if b.get("kind") == "tag":
        pooled = max((len(c.baseline_runs) for c in report.cells), default=0)
        return f"tag {b['tag']!r} (up to {pooled} accepted runs pooled per cell)"
    return f"run {b.get('run_id')}"


# ------------------------------------------------------------------------------------ terminal

def render_terminal(report: RegressionReport, console=None) -> None:
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal or console.width < 150:
            console = Console(width=max(console.width, 150))
    status, sentence = headline(report)
    color = STATUS_STYLE[status][0]
    console.print(f"[bold {color}]{status}[/]: {sentence} — candidate {report.candidate.id} vs "
                  f"{_baseline_text(report)}")
    console.print("  " + ", ".join(f"{v}: {n}" for v, n in report.counts().items()))
    for title, cells in groups(report):
        table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD)
        for i, (name, header) in enumerate(TERMINAL_COLUMNS):
            table.add_column(header, justify="left" if i in (0, len(TERMINAL_COLUMNS) - 1) else "right",
                             no_wrap=name == "row")
        for cell in cells:
            f = cell_fields(cell)
            f["memory"] = "=" if f["memory"] == "= no change" else f["memory"]
            row = [escape(str(f[name])) for name, _ in TERMINAL_COLUMNS]  # a label's "[stand-in: ...]" is text
            row[-1] = f"[{COLORS[cell.verdict]}]{row[-1]}[/]"
            table.add_row(*row)
        console.print(table)
    for cell in report.regressions():
        f = cell_fields(cell)
        console.print(f"[bold]{f['verdict']}[/] {escape(f['title'])}: {escape(str(f['reason']))}. "
                      f"{escape(cell.confirmation)}", soft_wrap=True)
    if report.design:
        console.print(report.design, soft_wrap=True, markup=False, highlight=False)
        for cell in report.cells:
            console.print(f"  {cell_fields(cell)['title']}: {sampling_text(cell)}", soft_wrap=True, markup=False,
                          highlight=False)
    for note in report.notes:
        console.print(f"[dim]{note}[/]")


# ------------------------------------------------------------------------------------ Markdown

def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: RegressionReport) -> str:
    """A summary for CI step summaries and PR comments."""
    status, sentence = headline(report)
    icon = STATUS_STYLE[status][1]
    cand = report.candidate
    lines = [f"## {icon} Regression check: {sentence}", "",
             f"Candidate `{cand.id}` (suite `{cand.suite_name}`, commit `{(cand.git_commit or 'unknown')[:12]}`, "
             f"host `{cand.host or 'unknown'}`) vs baseline {_baseline_text(report)}.", ""]
    counts = report.counts()
    lines += ["| " + " | ".join(f"{MARKS[v]} {v}" for v in VERDICTS) + " |",
              "|" + "---:|" * len(VERDICTS),
              "| " + " | ".join(str(counts[v]) for v in VERDICTS) + " |", ""]
    regs = report.regressions()
    if regs:
        lines += ["### Regressions (worst first)", "",
                  "| Device | Row | Regressed | Change | 95% CI | p | Confirmed |", "|---|---|---|---:|---|---:|---|"]
        for cell in regs:
            f = cell_fields(cell)
            confirmed = ("yes: " if cell.confirmed else "no: ") + cell.confirmation
            lines.append(f"| {_md_escape(cell.key.device)} | {_md_escape(cell.label)} | {f['regressed']} "
                         f"| {_md_escape(f['reg_change'])} | {f['reg_ci']} | {f['reg_p']} | {_md_escape(confirmed)} |")
        lines.append("")
    attention = [c for c in report.cells if c.verdict in (UNSTABLE, INCONCLUSIVE)]
    if attention:
        lines += ["### Unstable or inconclusive", ""]
        lines += [f"- **{c.verdict}** {_md_escape(c.key.device)} / {_md_escape(c.label)}: "
                  f"{_md_escape(c.latency.reason)}" for c in attention]
        lines.append("")
    improvements = [c for c in report.cells if c.verdict == IMPROVEMENT]
    if improvements:
        lines += ["### Improvements", ""]
        lines += [f"- {_md_escape(c.key.device)} / {_md_escape(c.label)}: {cell_fields(c)['change']} latency, "
                  f"memory {memory_text(c.memory)}" for c in improvements]
        lines.append("")
    if report.design:
        lines += ["### Same-session A/B", "", _md_escape(report.design), "",
                  "| Device | Row | Verdict | Sampling |", "|---|---|---|---|"]
        lines += [f"| {_md_escape(c.key.device)} | {_md_escape(c.label)} | {c.verdict} | {_md_escape(sampling_text(c))} |"
                  for c in report.cells]
        lines.append("")
    lines += ["<details><summary>All cells</summary>", ""]
    for title, cells in groups(report):
        lines += [f"#### {_md_escape(title)}", "",
                  "| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |",
                  "|" + "|".join("---" if i in (0, len(TABLE_COLUMNS) - 1) else "---:"
                                 for i in range(len(TABLE_COLUMNS))) + "|"]
        for cell in cells:
            f = cell_fields(cell)
            lines.append("| " + " | ".join(_md_escape(f[name]) for name, _ in TABLE_COLUMNS) + " |")
        lines.append("")
    lines += ["</details>", ""]
    lines += [f"- {_md_escape(n)}" for n in report.notes]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------ JUnit XML

def render_junit(report: RegressionReport) -> str:
    """One testsuite per device, one testcase per cell: a confirmed REGRESSION is a <failure>, a failed
    candidate job an <error>, UNSTABLE/INCONCLUSIVE are <skipped> (not judged); the reason is in system-out."""
    cand = report.candidate
    status, sentence = headline(report)
    root = ET.Element("testsuites", name="harness regression check")
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    by_device: dict[str, list[CellResult]] = {}
    for cell in report.cells:
        by_device.setdefault(cell.key.device, []).append(cell)
    for device, cells in by_device.items():
        suite = ET.SubElement(root, "testsuite", name=f"harness.{device}", timestamp=dt.datetime.fromtimestamp(
            cand.started_at).isoformat(timespec="seconds"), hostname=cand.host or "unknown")
        props = ET.SubElement(suite, "properties")
        for name, value in (("summary", f"{status}: {sentence}"),
                            ("candidate_run", cand.id), ("baseline", _baseline_text(report)),
                            ("git_commit", cand.git_commit or "unknown"), ("suite", cand.suite_name)):
            ET.SubElement(props, "property", name=name, value=str(value))
        counts = dict.fromkeys(totals, 0)
        for cell in sorted(cells, key=lambda c: (c.key.workload, c.key.options_hash, c.variant_index)):
            f = cell_fields(cell)
            seconds = (cell.latency.candidate_median or 0.0) / 1000.0
            case = ET.SubElement(suite, "testcase", classname=f"harness.{device}.{cell.key.workload}",
                                 name=f"{cell.key.variant} [{cell.key.options_hash[:8]}]", time=f"{seconds:.6f}")
            counts["tests"] += 1
            if cell.verdict == REGRESSION and cell.confirmed:
                counts["failures"] += 1
                failure = ET.SubElement(case, "failure", type=REGRESSION,
                                        message=f"{', '.join(cell.regressed)} regressed: {f['change']} "
                                                f"(95% CI {f['ci']}, p={f['p']}); {cell.confirmation}")
                failure.text = f["reason"]
            elif cell.status != "ok":
                counts["errors"] += 1
                error = ET.SubElement(case, "error", type="job_failed", message=cell.error or "the job failed")
                error.text = cell.latency.reason
            elif cell.verdict in (UNSTABLE, INCONCLUSIVE):
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message=f"{cell.verdict}: {cell.latency.reason}")
            out = ET.SubElement(case, "system-out")
            out.text = f"{f['verdict']}: {f['reason']}" + (f"\n{cell.confirmation}" if cell.confirmation else "")
        for k, v in counts.items():
            suite.set(k, str(v))
            totals[k] += v
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ------------------------------------------------------------------------------------ JSON, CSV

def render_json(report: RegressionReport) -> str:
    """regressions.json: RegressionReport.to_dict() (schema_version, summary, baseline, candidate, cells...)."""
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"


def render_csv(report: RegressionReport) -> str:
    import csv

    buf = io.StringIO()
    cols = ["device", "workload", "variant", "options_hash", "verdict", "confirmed", "latency_verdict",
            "baseline_median_ms", "candidate_median_ms", "ratio", "ci_low", "ci_high", "p_value", "n_baseline",
            "n_candidate", "noise_gate", "history_shift", "memory_verdicts", "reason"]
    w = csv.writer(buf)
    w.writerow(cols)
    for c in report.cells:
        lat = c.latency
        w.writerow([c.key.device, c.key.workload, c.key.variant, c.key.options_hash, c.verdict, c.confirmed,
                    lat.verdict, lat.baseline_median, lat.candidate_median, lat.ratio, lat.ci_low, lat.ci_high,
                    lat.p_value, lat.n_baseline, lat.n_candidate, lat.noise_gate, lat.history_shift,
                    ";".join(f"{m}={v.verdict}" for m, v in c.memory.items()), lat.reason])
    return buf.getvalue()


# ------------------------------------------------------------------------------------ plots

def trend_png(cell: CellResult) -> bytes | None:
    """The cell's nightly medians, the candidate marked by its verdict, change points and re-baseline marked."""
    if len(cell.trend) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(len(cell.trend)))
    ys = [p["median_ms"] for p in cell.trend]
    fig, ax = plt.subplots(figsize=(4.4, 2.0), dpi=90)
    ax.plot(xs, ys, "-o", color="#607d8b", markersize=3, linewidth=1, label="nightly median")
    lat = cell.latency
    index = {p["run_id"]: i for i, p in enumerate(cell.trend)}
    if lat.noise_gate is not None and lat.history_shift is not None and lat.baseline_median and lat.candidate_median:
        # The history gate as the verdict recorded it: centre = candidate - shift, half-width = gate.
        centre = lat.candidate_median - lat.history_shift * lat.baseline_median
        half = lat.noise_gate * lat.baseline_median
        ax.axhspan(centre - half, centre + half, color="#90a4ae", alpha=0.18, linewidth=0, label="history gate")
    for cp in cell.change_points:
        ax.axvline(cp["index"] - 0.5, color="#ef6c00", linestyle="--", linewidth=1.2)
        ax.annotate(f"{cp['rel_change'] * 100:+.1f}%", (cp["index"] - 0.5, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -10), textcoords="offset points", color="#ef6c00", fontsize=7)
    if cell.rebaseline and cell.rebaseline.get("run_id") in index:
        ax.axvline(index[cell.rebaseline["run_id"]] - 0.5, color="#1565c0", linestyle=":", linewidth=1.2)
    last = cell.trend[-1]
    if last.get("candidate"):
        ax.plot([xs[-1]], [ys[-1]], marker="D", markersize=7, color=COLORS[cell.verdict], linestyle="none",
                label=f"candidate ({cell.verdict})")
    ticks = sorted({0, len(xs) - 1, *range(0, len(xs), max(1, len(xs) // 5))})
    ax.set_xticks(ticks)
    ax.set_xticklabels([dt.datetime.fromtimestamp(cell.trend[i]["started_at"]).strftime("%m-%d") for i in ticks],
                       fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("median ms", fontsize=7)
    ax.grid(alpha=0.25)
    ax.margins(x=0.03, y=0.25)
    fig.tight_layout(pad=0.4)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------------------------ HTML

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("harness.report", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)

# Temperature-like keys first in the device-state table.
_STATE_FIRST = ("temp", "thermal", "throttl", "freq", "battery", "load")


def _state_keys(cells: list[CellResult]) -> list[str]:
    keys = {k for c in cells for s in (c.state_before, c.state_after) for k, v in s.items()
            if isinstance(v, (int, float, str, bool))}
    return sorted(keys, key=lambda k: (next((i for i, w in enumerate(_STATE_FIRST) if w in k.lower()),
                                            len(_STATE_FIRST)), k))


def _device_state(cells: list[CellResult]) -> dict[str, Any] | None:
    keys = _state_keys(cells)
    if not keys:
        return None
    rows = []
    for c in cells:
        values = []
        for k in keys:
            b, a = c.state_before.get(k), c.state_after.get(k)
            if b is None and a is None:
                values.append("—")
            elif b is not None and a is not None and b != a:
                values.append(f"{fmt_state_value(k, b)} → {fmt_state_value(k, a)}")
            else:
                values.append(fmt_state_value(k, a if a is not None else b))
        rows.append({"label": c.label, "values": values, "throttled": c.throttled})
    return {"keys": keys, "rows": rows}


def _op_table(cells: list[CellResult]) -> dict[str, Any] | None:
    cats: list[str] = []
    for c in cells:
        for d in c.op_deltas:
            if d["category"] not in cats:
                cats.append(d["category"])
    if not cats:
        return None
    cats.sort(key=lambda k: (k == "other", k))
    rows = []
    for c in cells:
        by = {d["category"]: d for d in c.op_deltas}
        if not by:
            continue
        values = []
        for k in cats:
            d = by.get(k)
            if d is None:
                values.append({"text": "—", "cls": ""})
                continue
            change = (d["ratio"] - 1.0) if d["ratio"] is not None else 0.0
            cls = "up" if change >= 0.05 else "down" if change <= -0.05 else ""
            values.append({"text": f"{fmt_ms(d['baseline_ms'])} → {fmt_ms(d['candidate_ms'])} ({fmt_pct(d['ratio'])})",
                           "cls": cls})
        rows.append({"label": c.label, "values": values})
    return {"categories": cats, "rows": rows}


def render_html(report: RegressionReport) -> str:
    """A self-contained page: summary, per-device Table-1 comparison, trends, op deltas, device state, metadata."""
    status, sentence = headline(report)
    sections = []
    for title, cells in groups(report):
        trends = []
        for c in cells:
            png = trend_png(c)
            trends.append({
                "title": c.label, "verdict": c.verdict, "cls": CSS_CLASS[c.verdict],
                "png": base64.b64encode(png).decode() if png else None, "n": len(c.trend),
                "changes": [f"{cp['rel_change'] * 100:+.1f}% at {cp['run_id']} ({fmt_time(cp['started_at'])}, "
                            f"p={cp['p_value']:.2g})" for cp in c.change_points],
                "rebaseline": c.rebaseline,
            })
        sections.append({
            "title": title,
            "rows": [{"f": cell_fields(c), "cls": CSS_CLASS[c.verdict], "cell": c} for c in cells],
            "trends": trends, "ops": _op_table(cells), "state": _device_state(cells),
        })
    regs = [{"f": cell_fields(c), "cell": c} for c in report.regressions()]
    attention = [{"f": cell_fields(c), "cell": c, "cls": CSS_CLASS[c.verdict]}
                 for c in report.cells if c.verdict in (UNSTABLE, INCONCLUSIVE)]
    improvements = [{"f": cell_fields(c), "cell": c} for c in report.cells if c.verdict == IMPROVEMENT]
    runs_meta = [("Candidate", report.candidate)] + ([("Rerun", report.rerun_run)] if report.rerun_run else [])
    runs_meta += [("Baseline", r) for r in report.baseline_runs]
    return _env.get_template("regression.html.j2").render(
        report=report, status=status, status_cls=STATUS_STYLE[status][2], sentence=sentence,
        counts=report.counts(), marks=MARKS,
        css=CSS_CLASS, colors=COLORS, headers=[h for _, h in TABLE_COLUMNS], columns=[n for n, _ in TABLE_COLUMNS],
        sections=sections, regressions=regs, attention=attention, improvements=improvements,
        runs_meta=runs_meta, fmt_time=fmt_time, baseline_text=_baseline_text(report),
        sampling=[{"f": cell_fields(c), "cell": c, "cls": CSS_CLASS[c.verdict], "text": sampling_text(c),
                   "looks": (c.sampling or {}).get("looks") or []} for c in report.cells if c.sampling],
        generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
    )


# ------------------------------------------------------------------------------------ files

def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write through a temp file in the same folder and rename, so readers never see half a file.
    The file gets the mode a plain open() would give it (0666 less the umask; mkstemp's is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


RENDERERS = {"md": render_markdown, "junit": render_junit, "json": render_json, "html": render_html,
             "csv": render_csv}


def write_outputs(report: RegressionReport, **paths: str | os.PathLike | None) -> list[Path]:
    """write_outputs(report, junit=..., markdown=..., json=..., html=..., csv=...): the files written."""
    alias = {"markdown": "md"}
    written = []
    for name, path in paths.items():
        if path is None:
            continue
        kind = alias.get(name, name)
        if kind not in RENDERERS:
            raise ValueError(f"unknown output {name!r}; known: junit, markdown, json, html, csv")
        written.append(write_text_atomic(path, RENDERERS[kind](report)))
    return written
