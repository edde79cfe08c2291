"""Render a run's Table-1 view: terminal (rich), Markdown, CSV, self-contained HTML."""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
from pathlib import Path

import jinja2
import pandas as pd

from harness import standin
from harness.compare import DEFAULT_CV_MAX
from harness.protocol import json_safe
from harness.report import e2e as e2e_report
from harness.report.plots import latency_bars, memory_bars, sample_strips
from harness.report.table1 import (device_stand_in, failure_note, markdown_note, pivot, pivot_rows, print_note,
                                   row_samples, table1)
from harness.store import RunRecord

FORMATS = ("table", "json", "md", "csv", "html", "terminal")  # terminal: the old name of table

# (column, header, formatter) for the human-readable tables.
DISPLAY = [
    ("label", "Row", str),
    ("latency_ms", "Latency ms", lambda v: f"{v:,.1f}"),
    ("change_pct", "vs base", lambda v: f"{v:+.1f}%"),
    ("tensor_mb_measured", "Tensor MB meas.", lambda v: f"{v:,.1f}"),
    ("tensor_mb_planned", "Tensor MB plan", lambda v: f"{v:,.1f}"),
    ("weight_mb", "Weight MB", lambda v: f"{v:,.1f}"),
    ("n", "n", lambda v: str(int(v))),
    ("iqr_ms", "IQR ms", lambda v: f"{v:,.1f}"),
    ("cv", "CV", lambda v: f"{v * 100:.1f}%"),
]


def _unstable(cv) -> bool:
    """A row whose CV exceeds the default cv_max of `harness compare`: too noisy to judge (UNSTABLE)."""
    return cv is not None and not pd.isna(cv) and float(cv) > DEFAULT_CV_MAX


def _cell(value, fmt, status: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "failed" if status == "failed" else "n/a"
    return fmt(value)


def _has_headroom(df: pd.DataFrame) -> bool:
    """Show the memory-limit column only when some row has a known limit."""
    return "mem_limit_mb" in df and df["mem_limit_mb"].notna().any()


# Columns shown only when some row has them: GPU memory (litert-gpu: NVML; Android: dumpsys Graphics),
# and the unit a row ran on where it is not simply its accelerator (partial delegation, CPU emulation).
OPTIONAL = [
    ("gpu_mb", "GPU MB", lambda v: f"{v:,.1f}"),
    ("unit", "Unit", str),
]


def _optional(df: pd.DataFrame) -> list[tuple]:
    out = []
    for col, head, fmt in OPTIONAL:
        if col not in df:
            continue
        if col == "unit":
            shown = df["unit"].notna() & (df["unit"].astype(str) != df["accelerator"].astype(str))
            if shown.any():
                out.append((col, head, fmt))
        elif df[col].notna().any():
            out.append((col, head, fmt))
    return out


def headers(df: pd.DataFrame) -> list[str]:
    return ([h for _, h, _ in DISPLAY] + [h for _, h, _ in _optional(df)]
            + (["Peak MB / limit"] if _has_headroom(df) else []))


def _headroom_cell(r) -> str:
    if r["mem_limit_mb"] is None or pd.isna(r["mem_limit_mb"]):
        return "n/a"
    if r["peak_mb"] is None or pd.isna(r["peak_mb"]):
        return f"? / {r['mem_limit_mb']:,.0f}"
    mark = {"over": " OVER", "unknown": " ?"}.get(r["headroom"], "")
    return f"{r['peak_mb']:,.0f} / {r['mem_limit_mb']:,.0f}{mark}"


def display_rows(df: pd.DataFrame) -> dict[tuple[str, str], list[list[str]]]:
    """Per (device, sweep combination label; "" without a sweep): formatted cells in DISPLAY order (the
    one formatting path for every renderer). "vs base" is n/a for a row whose only change is a flag that
    touches nothing in the model."""
    out: dict[tuple[str, str], list[list[str]]] = {}
    room = _has_headroom(df)
    columns = DISPLAY + _optional(df)
    for (device, combo), group in df.groupby(["device", "combination"], sort=False):
        rows = []
        for _, r in group.iterrows():
            cells = [_cell(r[col], fmt, r["status"]) for col, _, fmt in columns]
            if bool(r.get("na_change")):
                cells[[c for c, _, _ in DISPLAY].index("change_pct")] = "n/a"
            if _unstable(r["cv"]):
                cells[[c for c, _, _ in DISPLAY].index("cv")] += " (unstable)"
            rows.append(cells + ([_headroom_cell(r)] if room else []))
        out[(device, combo)] = rows
    return out


def _device_title(run: RunRecord, device: str, df: pd.DataFrame, combination: str = "") -> str:
    """The device, its setup, and the sweep combination the table shows (when the run has a sweep)."""
    info = run.devices.get(device, {})
    sub = df[(df["device"] == device) & (df["combination"] == combination)] if "combination" in df else df
    sub = sub if not sub.empty else df[df["device"] == device]
    what = [info.get("model") or "", info.get("gpu") if info.get("gpu") and "none" not in info.get("gpu", "") else ""]
    opts = sub.iloc[0]
    setup = f"{opts['runtime']}, {opts['dtype']}, {opts['accelerator'] or ''}".rstrip(", ")
    name = standin.marked(f"{device} ({', '.join(w for w in what if w)})",
                          device_stand_in(run, df, device, combination if "combination" in df else None))
    return f"{name} — {setup}" + (f" — {combination}" if combination else "")


PIVOT_TITLE = "side by side: median latency ms per row (columns: sweep combinations)"


def pivot_table(title: str, heads: list[str], rows: list[list[str]]):
    """A sweep's side-by-side view as a rich Table (the row label left, the combinations right)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")  # plain text: "[stand-in: ...]" is no markup
    for i, header in enumerate(heads):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    return table


def pivot_display(df: pd.DataFrame) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per device of a sweep: the latency pivot (rows of the ladder x combinations) as headers and cells."""
    return {device: pivot_rows(table, lambda v: f"{v:,.1f}") for device, table in pivot(df, "latency_ms").items()}


def _where(r) -> str:
    """How notes name a row: device [combination] / row."""
    combo = r.get("combination") if hasattr(r, "get") else None
    return f"{r['device']}{f' [{combo}]' if combo else ''} / {r['label']}"


def sweep_note(run: RunRecord) -> str | None:
    sweep = (run.suite or {}).get("sweep") or {}
    if not sweep:
        return None
    from harness.report.table1 import axis_value_label

    axes = "; ".join(f"{k}: {', '.join(axis_value_label(v) for v in vals)}" for k, vals in sweep.items())
    return (f"Sweep: {axes} — one table per device and combination (vs base: against the combination's first "
            "row), then the combinations side by side.")


def _notes(run: RunRecord, df: pd.DataFrame) -> list[str]:
    notes = [n for n in [sweep_note(run)] if n and not df.empty]
    methods = sorted(set(df["tensor_method"].dropna()))
    if methods:
        notes.append("Tensor MB (measured): peak of intermediate tensors during one iteration, by "
                     + ", ".join(methods) + ". Tensor MB (planned): greedy-by-size buffer plan over the "
                     "traced graph of one iteration (the paper's memory-manager view).")
    timings = sorted(set(df["timing_method"].dropna()))
    if timings:
        notes.append("Latency: median of the timed iterations (vs base: against the first row), timed with " + ", ".join(timings) + ".")
    summarized = sorted(set(df["latency_source"].dropna()) - {"samples"}) if "latency_source" in df else []
    if summarized:
        notes.append("Latency on some devices is the runtime's own " + " / ".join(summarized) + " (benchmark_model "
                     "prints count/avg/std, not each run); their IQR is n/a.")
    model = run.suite.get("model", {})
    if not model.get("weights"):
        notes.append("Weights: random (no --weights given); latency and memory do not depend on weight values.")
    for device, info in run.devices.items():  # a device farm reached at a stand-in endpoint (AI Hub) says so
        if (info.get("extra") or {}).get("endpoint_note") and "device" in df and device in set(df["device"]):
            notes.append(f"{device}: {info['extra']['endpoint_note']}.")
    if "na_change" in df:
        for _, r in df[df["na_change"] == True].iterrows():  # noqa: E712 - pandas mask
            notes.append(f"{_where(r)}: n/a — the flag(s) this row adds "
                         f"({', '.join(r['na_flags'])}) touch no block of this model or cannot be expressed in "
                         "its artifact (README 'Artifacts'), so it runs the same network as the row above; its "
                         "latency is a repeat, not an effect.")
    if "headroom" in df:
        for _, r in df[df["headroom"] == "over"].iterrows():
            notes.append(f"OVER THE MEMORY LIMIT: {_where(r)}: {r['headroom_note']}")
    if "unit" in df and df["unit"].astype(str).str.contains("CPU emulation", regex=False).any():
        notes.append("Unit 'CPU emulation': the row ran on LiteRT's GPU engine over SwiftShader, a Vulkan GPU in "
                     "software on the host CPU (no GPU here): it shows that the graph runs wholly on the GPU engine "
                     "and agrees with the reference; its latency and memory are not a GPU's.")
    if "unit" in df and df["unit"].astype(str).str.contains("partial", regex=False).any():
        notes.append("Unit 'partial': part of the graph ran on the CPU (ops the GPU or NPU refused: allow_cpu_fallback, "
                     "a partial delegate, or AI Hub layers off the asked compute unit); such a row is a split figure, "
                     "not the unit's alone.")
    if "stand_in" in df and (df["stand_in"].fillna("") != "").any():
        notes.append(standin.NOTE)
    unstable = [r for _, r in df.iterrows() if _unstable(r["cv"])] if "cv" in df else []
    if unstable:
        rows = "; ".join(f"{_where(r)} (CV {r['cv'] * 100:.1f}%)" for r in unstable)
        notes.append(f"Unstable: {rows} — CV above {DEFAULT_CV_MAX:.0%} (the default cv_max of `harness compare`, "
                     "which will not judge these rows (UNSTABLE) unless a change is beyond doubt); check the "
                     "device state (cooling, background load) and rerun.")
    failed = df[df["status"] == "failed"]
    for _, r in failed.iterrows():
        notes.append(failure_note(_where(r), r["error"], r.get("error_detail")))
    return notes


def terminal_console(stderr: bool = False):
    """The console a terminal report prints on: a terminal's own width (the tables fit it); piped (a file, a CI
    log) 110 columns at least, so that the tables keep their full layout, unless $COLUMNS says otherwise."""
    import os

    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal and console.width < 110 and not os.environ.get("COLUMNS"):
        console = Console(stderr=stderr, width=110)
    return console


# Columns dropped, in this order, from a run table too wide for the console (each dropped column is named
# under the table); the row label, latency, vs base and CV stay.
_DROP_ORDER = ("Weight MB", "Tensor MB plan", "IQR ms", "n", "Unit", "GPU MB", "Tensor MB meas.", "Peak MB / limit")


def fit_run_table(console, title: str, heads: list[str], rows: list[list[str]]):
    """The run table as today when it fits the console; else each column as narrow as its longest word (a
    header may wrap, a cell stays whole; the row label never wraps), and without the least needed columns
    (_DROP_ORDER) until it fits (harness.report.fit). Returns (table, the headers of the dropped columns)."""
    from harness.report.fit import fit_table

    return fit_table(console, title, heads, rows, _DROP_ORDER)


def render_terminal(run: RunRecord, df: pd.DataFrame, console=None, error_details: bool = True) -> None:
    console = console or terminal_console()
    console.print(f"[bold]Run {run.id}[/] — suite {run.suite_name} ({run.status})")
    for (device, combo), rows in display_rows(df).items():
        table, dropped = fit_run_table(console, _device_title(run, device, df, combo), headers(df), rows)
        console.print(table)
        if dropped:
            console.print(f"[dim]not shown at this width: {', '.join(dropped)} (a wider terminal, or "
                          "`harness report --format md`, shows them)[/]")
    for device, (heads, rows) in pivot_display(df).items():
        console.print(pivot_table(f"{device} — {PIVOT_TITLE}", heads, rows))
    for note in _notes(run, df):
        print_note(console, note, error_details)
    e2e_report.render_terminal(run, e2e_report.e2e_table(run), console, error_details)


def render_markdown(run: RunRecord, df: pd.DataFrame, output: Path | None = None) -> str:
    lines = [f"# Run {run.id}: {run.suite_name}", ""]
    for (device, combo), rows in display_rows(df).items():
        lines += [f"## {_device_title(run, device, df, combo)}", "",
                  "| " + " | ".join(headers(df)) + " |",
                  "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers(df)))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    for device, (heads, rows) in pivot_display(df).items():
        lines += [f"## {device} — {PIVOT_TITLE}", "", "| " + " | ".join(heads) + " |",
                  "|" + "|".join("---" if i == 0 else "---:" for i in range(len(heads))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    lines += [line for n in _notes(run, df) for line in markdown_note(n)]
    lines += [""] + e2e_report.markdown_lines(run, e2e_report.e2e_table(run), output)
    return "\n".join(lines) + "\n"


def _flat_rows(run: RunRecord, df: pd.DataFrame) -> pd.DataFrame:
    """The run's rows as CSV and JSON give them: Table-1 rows, or for an e2e run the end-to-end table."""
    out = df.copy()
    if out.empty:  # an e2e run: its CSV is the end-to-end table
        e2e = e2e_report.e2e_table(run)
        out = e2e.copy() if not e2e.empty else out
    out.insert(0, "run_id", run.id)
    if "cv" in out:  # CV above the default cv_max: the row is too noisy for `harness compare` to judge
        out["cv_unstable"] = [_unstable(v) for v in out["cv"]]
    return out


def render_csv(run: RunRecord, df: pd.DataFrame) -> str:
    buf = io.StringIO()
    _flat_rows(run, df).to_csv(buf, index=False)
    return buf.getvalue()


def render_json(run: RunRecord, df: pd.DataFrame) -> str:
    """One JSON object: the run (id, suite, status, times, tags) and its rows, the same fields as the CSV."""
    import json

    rows = json.loads(_flat_rows(run, df).to_json(orient="records", default_handler=str))
    return json.dumps({"run_id": run.id, "suite": run.suite_name, "status": run.status,
                       "started_at": run.started_at, "ended_at": run.ended_at, "git_commit": run.git_commit,
                       "run_group": run.run_group, "tags": list(run.tags), "rows": rows}, indent=2) + "\n"


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("harness.report", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)




def raw_data(run: RunRecord) -> dict:
    """The run as the store holds it (every job with its full JobResult: raw samples, warm-ups, memory,
    device state, versions, stand-in labels), for the report's download. `harness.store` reads the same."""
    jobs = [{"id": j.id, "job_key": j.job_key, "job_index": j.job_index, "device_id": j.device_id,
             "workload": j.workload, "model": j.model, "variant": j.variant, "variant_index": j.variant_index,
             "flags": j.flags, "options": j.options, "options_hash": j.options_hash, "status": j.status,
             "attempts": j.attempts, "axes": j.axes, "result": j.result.model_dump(mode="json")} for j in run.jobs]
    meta = {"id": run.id, "suite_name": run.suite_name, "status": run.status, "started_at": run.started_at,
            "ended_at": run.ended_at, "git_commit": run.git_commit, "host": run.host, "run_group": run.run_group,
            "tags": run.tags, "suite": run.suite}
    return json_safe({"format": "harness-run", "format_version": 1, "run": meta, "devices": run.devices,
                       "jobs": jobs})


def _value_text(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str) if value else ""
    return "" if value is None else str(value)


def environment(run: RunRecord) -> dict:
    """What the report's environment section shows, from what the store holds: each device's description
    (DeviceInfo), the runtime options and measure policy of the jobs, and the library and tool versions the
    results recorded (each value once, with the number of jobs that reported it)."""
    devices = []
    for device, info in run.devices.items():
        rows = []
        for key, value in info.items():
            if key == "extra" and isinstance(value, dict):
                rows += [(f"extra.{k}", _value_text(v)) for k, v in sorted(value.items()) if _value_text(v)]
            elif key == "ram_bytes" and value:
                rows.append(("RAM", f"{value / 2**30:,.1f} GiB"))
            elif key not in ("id", "note", "hint") and _value_text(value):
                rows.append((key, _value_text(value)))
        devices.append((device, standin.marked(device, info.get("stand_in")), rows))
    versions: dict[str, dict[str, int]] = {}
    options: dict[str, dict[str, int]] = {}
    for job in run.jobs:
        for key, value in job.result.versions.items():
            versions.setdefault(key, {}).setdefault(str(value), 0)
            versions[key][str(value)] += 1
        opts = dict(job.options)
        threads = opts.get("threads")
        if threads == 0:
            opts["threads"] = "0 (the runtime's default)"
        for key, value in sorted(opts.items()):
            text = _value_text(value)
            if text:
                options.setdefault(key, {}).setdefault(text, 0)
                options[key][text] += 1
    n = len(run.jobs)

    def cells(table: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
        return [(k, "; ".join(v if c == n else f"{v} ({c} of {n} jobs)" for v, c in vals.items()))
                for k, vals in sorted(table.items())]

    suite = run.suite or {}
    policy = [(f"measure.{k}", _value_text(v)) for k, v in (suite.get("measure") or {}).items()]
    policy += [(f"check.{k}", _value_text(v)) for k, v in (suite.get("check") or {}).items()]
    return {"devices": devices, "versions": cells(versions), "options": cells(options), "policy": policy}


LATENCY_PLOT_NOTE = ("Bars: the median of each row's timed iterations (Table 1's Latency ms). Error bars: half the "
                     "interquartile range (IQR / 2, the table's IQR ms) either side of the median, a measure of the "
                     "samples' spread, not a confidence interval; none where a row has fewer than 2 samples or the "
                     "device reported only a summary. The raw samples are plotted below.")


def render_html(run: RunRecord, df: pd.DataFrame, output: Path | None = None) -> str:
    plot = base64.b64encode(latency_bars(df)).decode() if df["latency_ms"].notna().any() else None
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    memory_cols = ["tensor_mb_measured", "tensor_mb_planned", "weight_mb"]
    memory_plot = b64(memory_bars(df)) if not df.empty and df[memory_cols].notna().any().any() else None
    samples = row_samples(run)
    strips = b64(sample_strips(df, samples)) if not df.empty and any(samples.values()) else None
    data = json.dumps(raw_data(run), indent=1, allow_nan=False)
    fmt_time = lambda t: dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "—"  # noqa: E731
    return _env.get_template("run.html.j2").render(
        run=run, headers=headers(df),
        devices=[(device, _device_title(run, device, df, combo), rows, run.devices.get(device, {}), combo)
                 for (device, combo), rows in display_rows(df).items()],
        pivots=[(device, f"{device} — {PIVOT_TITLE}", heads, rows)
                for device, (heads, rows) in pivot_display(df).items()],
        notes=_notes(run, df), plot_png_b64=plot, plot_note=LATENCY_PLOT_NOTE, memory_png_b64=memory_plot,
        samples_png_b64=strips, env=environment(run),
        data_json_b64=b64(data.encode()), data_csv_b64=b64(render_csv(run, df).encode()),
        data_name=run.id, data_jobs=len(run.jobs), started=fmt_time(run.started_at),
        ended=fmt_time(run.ended_at), generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        e2e=e2e_report.html_context(run, e2e_report.e2e_table(run), output),
    )


def render(run: RunRecord, fmt: str, output: Path | None = None, console=None,
           error_details: bool = True) -> str | None:
    """Render `run` in `fmt`; write to `output` when given (table prints, on `console`: default stdout; with
    error_details=False a failed row's note leaves out its stderr tail, which the caller prints itself).
    Returns the text."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; known formats: "
                         f"{', '.join(f for f in FORMATS if f != 'terminal')} (terminal: the old name of table)")
    df = table1(run)
    if fmt in ("table", "terminal"):
        render_terminal(run, df, console, error_details=error_details)
        return None
    if fmt in ("csv", "json"):
        text = (render_csv if fmt == "csv" else render_json)(run, df)
    else:  # md and html link the e2e images relative to `output`
        text = {"md": render_markdown, "html": render_html}[fmt](run, df, output)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(text)
        tmp.replace(output)
    return text
