"""The end-to-end view of a run: one row per device and ladder row, with the per-component breakdown.

Pure: a RunRecord in, a pandas DataFrame out (`e2e_table`); the renderers format it. Two kinds of
`components_ms` feed it (JobResult.components_ms of an `e2e` job):

* measured (the host's real loop, `harness.workloads.e2e`): method="measured", steps, unet_evals and
  raw per-image lists: text_encoder_ms [image], unet_ms [image][call], scheduler_ms [image][step],
  decoder_ms [image], prepare_ms, postprocess_ms, total_ms [image]. The row's figures are medians over
  the timed images.
* composed (devices that measure the components in separate runs, e.g. Android): method="composed",
  the `harness.composition.composed_components(...)` dict: scalar text_encoder_ms, unet_ms (per step), scheduler_ms (per
  step, the host's measured cost), decoder_ms, steps, total_ms = `compose_e2e(...)`. Such rows are
  labelled COMPOSED_LABEL wherever they appear.
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import pandas as pd

from harness import standin
from harness.composition import COMPOSED_LABEL, flatten
from harness.report.table1 import failure_note, markdown_note, print_note
from harness.store import RunRecord
from harness.variants import LADDER_LABELS

MB = 1024 * 1024
# The paper's headline: SD 1.4, 512x512, 20 iterations, Samsung S23 Ultra GPU (arXiv 2304.11267).
PAPER_REFERENCE_S = 11.5
PAPER_REFERENCE_LABEL = "Paper: S23 Ultra (arXiv 2304.11267)"

COLUMNS = [
    "device", "step", "variant", "label", "status", "method", "total_s", "text_ms", "unet_step_ms",
    "unet_total_ms", "steps", "unet_evals", "decoder_ms", "scheduler_ms", "other_ms", "peak_mb", "peak_kind",
    "n", "scheduler", "prompt_tokens", "weights", "image_path", "image_note", "timing_method", "error", "error_detail",
    "runtime", "dtype", "accelerator", "combination", "combination_index",  # sweep (harness.report.table1)
    "stand_in",  # harness.standin labels of the row (", "-joined; "" for a real device and tool)
]
# The breakdown that adds up to total (plots stack these): (column, legend label).
SEGMENTS = [("text_ms", "text encoder"), ("unet_total_ms", "UNet"), ("scheduler_ms", "scheduler + guidance"),
            ("decoder_ms", "VAE decoder"), ("other_ms", "other")]


# ------------------------------------------------------------------------------------ the table

def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _per_image(value: Any) -> list[float]:
    """A per-image figure: a list (one per image) or a scalar."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return [float(value)]


def summarize_components(components: dict[str, Any], samples_ms: list[float]) -> dict[str, Any]:
    """The row figures (ms; total in s) of one e2e result, measured or composed."""
    method = components.get("method", "measured")
    steps = components.get("steps")
    row: dict[str, Any] = {"method": method, "steps": steps, "unet_evals": components.get("unet_evals", steps)}
    if method == "composed":
        n_steps = int(steps or 0)
        unet, sched = components.get("unet_ms"), components.get("scheduler_ms")
        total = components.get("total_ms")
        row.update(text_ms=components.get("text_encoder_ms"), unet_step_ms=unet,
                   unet_total_ms=None if unet is None else unet * n_steps,
                   scheduler_ms=None if sched is None else sched * n_steps,
                   decoder_ms=components.get("decoder_ms"), n=None,
                   total_s=None if total is None else total / 1000.0)
        parts = [row[c] for c, _ in SEGMENTS[:-1]]
        row["other_ms"] = (max(0.0, total - sum(parts))
                           if total is not None and all(p is not None for p in parts) else None)
        return row
    unet = components.get("unet_ms") or []
    sched = components.get("scheduler_ms") or []
    unet_images = [list(flatten(u)) for u in unet] if unet and isinstance(unet[0], (list, tuple)) else [list(flatten(unet))]
    sched_images = ([list(flatten(s)) for s in sched] if sched and isinstance(sched[0], (list, tuple))
                    else [list(flatten(sched))])
    totals = list(samples_ms) or _per_image(components.get("total_ms"))
    text, dec = _per_image(components.get("text_encoder_ms")), _per_image(components.get("decoder_ms"))
    others = []
    for i, total in enumerate(totals):
        try:
            others.append(total - text[i] - sum(unet_images[i]) - sum(sched_images[i]) - dec[i])
        except IndexError:
            break
    row.update(
        total_s=None if not totals else _median(totals) / 1000.0,
        text_ms=_median(text), unet_step_ms=_median([v for img in unet_images for v in img]),
        unet_total_ms=_median([sum(img) for img in unet_images if img]),
        scheduler_ms=_median([sum(img) for img in sched_images if img]), decoder_ms=_median(dec),
        other_ms=_median(others), n=len(totals),
    )
    return row


def e2e_table(run: RunRecord, workload: str = "e2e") -> pd.DataFrame:
    """One row per device, sweep combination and variant of the run's e2e jobs, in plan order: the
    combinations in order, each in ladder order (with one "axis:<path>" column per sweep axis)."""
    from harness.report.table1 import add_axes, combination_label, job_combinations, row_stand_in

    axes, order = job_combinations(run)
    rows, rows_axes = [], []
    for job in run.jobs:
        if job.workload != workload:
            continue
        res = job.result
        extra, ex = res.extra, res.execution
        mem = res.memory
        peak, kind = (mem.gpu_bytes, "GPU") if mem.gpu_bytes is not None else (mem.peak_rss_bytes, "RSS")
        row: dict[str, Any] = {
            "device": job.device_id, "step": job.variant_index, "variant": job.variant,
            "label": LADDER_LABELS.get(job.variant, job.variant), "status": job.status,
            "runtime": ex.runtime, "dtype": job.options.get("dtype"), "accelerator": ex.accelerator,
            "peak_mb": None if peak is None else peak / MB, "peak_kind": kind if peak is not None else None,
            "scheduler": extra.get("scheduler"), "prompt_tokens": extra.get("prompt_tokens"),
            "weights": extra.get("weights"), "image_path": extra.get("image_path"),
            "image_note": extra.get("image_note"), "timing_method": ex.timing_method,
            "error": f"{res.error.kind}: {res.error.message}" if res.error else None,
            "error_detail": res.error.detail if res.error else None,  # the tail of the device's stderr
            "method": None, "total_s": None, "n": 0,
            "combination": combination_label(job.axes), "combination_index": order.get(combination_label(job.axes), 0),
            "stand_in": row_stand_in(run, job),
        }
        rows_axes.append(job.axes)
        if res.components_ms:
            row.update(summarize_components(res.components_ms, res.samples_ms))
        rows.append(row)
    df = add_axes(pd.DataFrame(rows, columns=COLUMNS), rows_axes, axes)
    if df.empty:
        return df
    df = df.drop_duplicates(subset=["device", "combination", "variant"], keep="last")
    return df.sort_values(["device", "combination_index", "step"], kind="stable").reset_index(drop=True)


PIVOT_TITLE = "side by side: image total s per row (columns: sweep combinations)"


def pivot_display(df: pd.DataFrame) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Per device of a sweep: the image-total pivot (rows of the ladder x combinations), formatted."""
    from harness.report.table1 import pivot, pivot_rows

    return {device: pivot_rows(table, lambda v: f"{v:,.2f}") for device, table in pivot(df, "total_s").items()}


# ------------------------------------------------------------------------------------ display

def _fmt_ms(v: float) -> str:
    return f"{v:,.1f}"


def display_columns(df: pd.DataFrame) -> list[tuple[str, str, Any]]:
    """(column, header, formatter) of the e2e tables; the UNet total says its step count."""
    steps = sorted({int(s) for s in df["steps"].dropna()}) if not df.empty else []
    unet_total = f"UNet ms ×{steps[0]}" if len(steps) == 1 else "UNet ms × steps"
    return [
        ("label", "Row", str),
        ("total_s", "Total s", lambda v: f"{v:,.2f}"),
        ("text_ms", "Text enc. ms", _fmt_ms),
        ("unet_step_ms", "UNet ms/step", _fmt_ms),
        ("unet_total_ms", unet_total, _fmt_ms),
        ("decoder_ms", "Decoder ms", _fmt_ms),
        ("scheduler_ms", "Scheduler ms", _fmt_ms),
        ("other_ms", "Other ms", _fmt_ms),
        ("peak_mb", "Peak MB", lambda v: f"{v:,.0f}"),
        ("n", "n", lambda v: str(int(v))),
        ("method", "How", lambda v: COMPOSED_LABEL if v == "composed" else str(v)),
    ]


def _cell(value: Any, fmt, status: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "failed" if status == "failed" else "n/a"
    return fmt(value)


def display_rows(df: pd.DataFrame) -> dict[tuple[str, str], list[list[str]]]:
    """Per (device, sweep combination label; "" without a sweep): formatted cells in display_columns order."""
    cols = display_columns(df)
    out: dict[tuple[str, str], list[list[str]]] = {}
    for key, group in df.groupby(["device", "combination"], sort=False):
        out[key] = [[_cell(r[c], fmt, r["status"]) for c, _, fmt in cols] for _, r in group.iterrows()]
    return out


def _group(df: pd.DataFrame, device: str, combination: str) -> pd.DataFrame:
    return df[(df["device"] == device) & (df["combination"] == combination)]


def reference_row(df: pd.DataFrame) -> list[str]:
    """The paper's figure as a table row: total only."""
    return [PAPER_REFERENCE_LABEL, f"{PAPER_REFERENCE_S:.2f}"] + ["—"] * (len(display_columns(df)) - 2)


def device_title(run: RunRecord, device: str, df: pd.DataFrame, combination: str = "") -> str:
    info = run.devices.get(device, {})
    group = _group(df, device, combination)
    sub = (group if not group.empty else df[df["device"] == device]).iloc[0]
    gpu = info.get("gpu") or ""
    what = [info.get("model") or "", gpu if gpu and "none" not in gpu else ""]
    setup = ", ".join(str(x) for x in (sub["runtime"], sub["dtype"], sub["accelerator"], sub["scheduler"]) if x)
    from harness.report.table1 import device_stand_in

    name = standin.marked(f"{device} ({', '.join(w for w in what if w)})", device_stand_in(run, df, device, combination))
    return f"{name} — {setup}" + (f" — {combination}" if combination else "")


def notes(run: RunRecord, df: pd.DataFrame) -> list[str]:
    out = [f"Reference: {PAPER_REFERENCE_S} s for one 512x512 image in 20 iterations on a Samsung S23 Ultra "
           "(mobile GPU, SD 1.4, no int8), the paper's headline (arXiv 2304.11267)."]
    measured = df[df["method"] == "measured"]
    if not measured.empty:
        timings = sorted(set(measured["timing_method"].dropna()))
        out.append("Total: median over the timed images (n) of the wall time from the prompt to the 8-bit RGB "
                   "image" + (f", timed with {', '.join(timings)}" if timings else "") + " (on CUDA the "
                   "device is synchronized at each component boundary). UNet ms/step: median of every UNet "
                   "call (batch 2, classifier-free guidance); the UNet total is the sum per image (PNDM "
                   "makes steps + 1 calls). Scheduler: all steps' non-UNet work (input scaling, guidance, "
                   "scheduler.step). Other: token ids, timesteps, initial noise, conversion to 8 bits.")
    kinds = sorted(set(df[df["method"] != "composed"]["peak_kind"].dropna()))
    if kinds:
        out.append("Peak MB: " + "; ".join({"RSS": "RSS = the job process's peak resident set (every component, "
                                                   "the reference check included)",
                                            "GPU": "GPU = torch.cuda.max_memory_allocated over the images"}[k]
                                           for k in kinds) + ".")
    for device in df[df["method"] == "composed"]["device"].unique():
        out.append(f"{device}: {COMPOSED_LABEL}: text encoder + steps × (UNet iteration + the host's measured "
                   "scheduler cost) + decoder, each measured on the device in its own run (the median of its "
                   "timed runs). Peak MB: the largest of the three component runs' peaks (GPU = dumpsys meminfo "
                   "Graphics, else RSS = benchmark_model's peak resident set).")
    if "stand_in" in df and (df["stand_in"].fillna("") != "").any():
        out.append(standin.NOTE)
    if (df["prompt_tokens"] == "random").any():
        out.append("Prompt: no tokenizer without --weights (offline), so the prompt is seeded random token ids "
                   "(one per word); the text encoder runs the same 77-token shapes.")
    weights = df["weights"].dropna()
    if (weights == "random").any() or (weights.empty and not run.suite.get("model", {}).get("weights")):
        out.append("Images: random weights, so the generated images are noise (pass --weights DIR, a local "
                   "SD 1.4 diffusers checkpoint, for a real picture); latency does not depend on weight values.")
    for _, r in df[df["status"] == "failed"].iterrows():
        combo = f" [{r['combination']}]" if r["combination"] else ""
        out.append(failure_note(f"{r['device']}{combo} / {r['label']}", r["error"], r.get("error_detail")))
    return out


def _text(value: Any) -> str | None:
    """A string cell, or None for a missing one (pandas gives NaN for missing strings)."""
    return value if isinstance(value, str) and value else None


def image_href(image_path: Any, report_path: Path | None) -> str | None:
    """How the report links an image: relative to the report's folder, else a file:// URI."""
    image_path = _text(image_path)
    if image_path is None:
        return None
    path = Path(image_path)
    if report_path is not None:
        try:
            return Path(os.path.relpath(path.resolve(), Path(report_path).resolve().parent)).as_posix()
        except ValueError:  # another drive (Windows)
            pass
    return path.resolve().as_uri()


def html_context(run: RunRecord, df: pd.DataFrame, report_path: Path | None = None) -> dict[str, Any] | None:
    """What templates/run.html.j2 renders for the e2e section (None when the run has no e2e jobs)."""
    if df.empty:
        return None
    import base64

    from harness.report.plots import e2e_breakdown_bars

    rows = display_rows(df)
    devices = []
    for (device, combo), cells in rows.items():
        sub = _group(df, device, combo)
        entries = [{"cells": c, "image": image_href(r["image_path"], report_path), "image_note": _text(r["image_note"]) or ""}
                   for c, (_, r) in zip(cells, sub.iterrows())]
        devices.append((device, device_title(run, device, df, combo), entries, combo))
    plot = None
    if df["total_s"].notna().any():
        plot = base64.b64encode(e2e_breakdown_bars(df)).decode()
    return {"headers": [h for _, h, _ in display_columns(df)], "devices": devices, "reference": reference_row(df),
            "notes": notes(run, df), "plot_png_b64": plot,
            "pivots": [(device, f"End-to-end: {device} — {PIVOT_TITLE}", heads, cells)
                       for device, (heads, cells) in pivot_display(df).items()]}


def markdown_lines(run: RunRecord, df: pd.DataFrame, report_path: Path | None = None) -> list[str]:
    if df.empty:
        return []
    cols = display_columns(df)
    lines = ["## End-to-end generation", ""]
    for (device, combo), cells in display_rows(df).items():
        sub = _group(df, device, combo)
        lines += [f"### {device_title(run, device, df, combo)}", "",
                  "| " + " | ".join(h for _, h, _ in cols) + " | Image |",
                  "|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|---|"]
        for c, (_, r) in zip(cells, sub.iterrows()):
            href = image_href(r["image_path"], report_path)
            lines.append("| " + " | ".join(c) + f" | {f'[PNG]({href})' if href else ''} |")
        lines.append("| " + " | ".join(reference_row(df)) + " | |")
        lines.append("")
    for device, (heads, cells) in pivot_display(df).items():
        lines += [f"### End-to-end: {device} — {PIVOT_TITLE}", "", "| " + " | ".join(heads) + " |",
                  "|" + "|".join("---" if i == 0 else "---:" for i in range(len(heads))) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        lines.append("")
    lines += [line for n in notes(run, df) for line in markdown_note(n)]
    lines.append("")
    return lines


def render_terminal(run: RunRecord, df: pd.DataFrame, console, error_details: bool = True) -> None:
    from rich.markup import escape
    from rich.table import Table

    if df.empty:
        return
    cols = display_columns(df)
    for (device, combo), cells in display_rows(df).items():
        table = Table(title=escape(f"End-to-end: {device_title(run, device, df, combo)}"), title_justify="left")
        for i, (_, header, _) in enumerate(cols):
            table.add_column(header, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in cells:
            table.add_row(*row)
        table.add_row(*reference_row(df), style="dim")
        console.print(table)
        for _, r in _group(df, device, combo).iterrows():
            if _text(r["image_path"]):
                console.print(f"[dim]image {r['label']}: {r['image_path']}[/]")
    from harness.report.render import pivot_table

    for device, (heads, cells) in pivot_display(df).items():
        console.print(pivot_table(f"End-to-end: {device} — {PIVOT_TITLE}", heads, cells))
    for note in notes(run, df):
        print_note(console, note, error_details)
