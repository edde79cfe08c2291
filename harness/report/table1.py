"""The Table-1 view of a run: one row per ladder step per device, derived from the raw samples.

Pure: a RunRecord in, a pandas DataFrame out. Renderers (harness.report.render) format it and
never recompute a statistic.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from harness import standin
from harness.stats import summarize
from harness.store import RunRecord
from harness.variants import LADDER_LABELS

MB = 1024 * 1024  # the paper's MB (weights of 859.5M fp16 parameters: 1,639 MB)

COLUMNS = [
    "device", "step", "variant", "label", "status", "latency_ms", "change_pct", "n", "iqr_ms", "cv",
    "tensor_mb_measured", "tensor_mb_planned", "weight_mb", "tensor_method", "timing_method",
    "first_run_ms", "init_ms", "check_rel_error", "error", "error_detail", "runtime", "dtype", "accelerator", "latency_source",
    # Flags whose blocks the model lacks (result execution.na_flags); na_change: this row's only change from
    # the row above is such a flag, so its "vs base" is n/a (the same network as the row above).
    "na_flags", "na_change",
    # Peak memory against the device's per-app limit (harness.headroom): ok | over | unknown.
    "peak_mb", "mem_limit_mb", "headroom", "headroom_note",
    # The compute unit the row really ran on, as the device reported it (execution.unit_used, e.g. Android:
    # "gpu", "cpu (the NNAPI delegate took no node)", "gpu (partial: 7 delegate kernels, ...)").
    "unit",
    # GPU memory the row's process held (memory.gpu_bytes: NVML on a host GPU, dumpsys Graphics on Android).
    "gpu_mb",
    # The sweep combination (harness.suite Suite.sweep): its label ("model=tiny, options.dtype=int8"; "" when
    # the run has no sweep), its plan order, and one "axis:<path>" column per axis (added per run).
    "combination", "combination_index",
    # What in the row was a stand-in, not a real phone, tool or GPU (harness.standin labels, ", "-joined; "" real).
    "stand_in",
]
AXIS_PREFIX = "axis:"
NOT_RUN = "not run"  # a pivot cell whose combination has no job for that row in the run


def axis_value_label(value) -> str:
    """A sweep value as a short string: a model object by its derived name, lists/dicts compactly."""
    if isinstance(value, dict):
        if value.get("factory"):
            return f"factory:{value['factory']}"
        if value.get("unet_config"):
            return f"config:{Path(str(value['unet_config'])).stem}"
        if value.get("name") and len(value) == 1:
            return str(value["name"])
        return ", ".join(f"{k}: {axis_value_label(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(axis_value_label(v) for v in value) + "]"
    return str(value)


def combination_label(axes: dict) -> str:
    """"model=tiny, options.dtype=int8" for a job's sweep coordinates; "" when the job was not swept."""
    return ", ".join(f"{k}={axis_value_label(v)}" for k, v in (axes or {}).items())


def job_combinations(run: RunRecord) -> tuple[list[str], dict[str, int]]:
    """The run's sweep axes (the suite's order) and each combination label's plan order (jobs are stored
    as they finish, so combinations are ranked by their first job's plan index)."""
    axes: list[str] = list((run.suite or {}).get("sweep") or {})
    first: dict[str, int] = {}
    for job in run.jobs:
        axes += [k for k in job.axes if k not in axes]
        label = combination_label(job.axes)
        idx = job.job_index if job.job_index is not None else job.id
        first[label] = min(first.get(label, idx), idx)
    return axes, {label: i for i, label in enumerate(sorted(first, key=lambda lb: first[lb]))}


def add_axes(df: pd.DataFrame, rows_axes: list[dict], axes: list[str]) -> pd.DataFrame:
    """One "axis:<path>" column per sweep axis (the value's label), in the axes' order, before the rest."""
    for i, key in enumerate(axes):
        df.insert(min(i, len(df.columns)), AXIS_PREFIX + key,
                  [axis_value_label(a[key]) if key in a else None for a in rows_axes])
    return df


def pivot(df: pd.DataFrame, value: str = "latency_ms") -> dict[str, pd.DataFrame]:
    """Per device with more than one combination: rows = ladder rows (label, in step order), columns =
    combinations (plan order), cells = `value`, "failed" where the job failed, NOT_RUN where the run has
    no such job (e.g. it was interrupted), None where the job has no figure.
    The "side by side" view of a sweep; renderers format it."""
    out: dict[str, pd.DataFrame] = {}
    if df.empty or "combination" not in df:
        return out
    for device, group in df.groupby("device", sort=False):
        combos = list(dict.fromkeys(group.sort_values("combination_index", kind="stable")["combination"]))
        if len(combos) < 2:
            continue
        labels = list(dict.fromkeys(group.sort_values("step", kind="stable")["label"]))
        table = pd.DataFrame(NOT_RUN, index=labels, columns=combos, dtype=object)
        for _, r in group.iterrows():
            v = r[value]
            if r["status"] == "failed":
                cell: Any = "failed"
            elif v is None or pd.isna(v):
                cell = None
            else:
                cell = float(v)
            table.at[r["label"], r["combination"]] = cell
        out[device] = table
    return out


def failure_note(where: str, error: Any, detail: Any) -> str:
    """A failed row's note: `WHERE: kind: message`, then the tail of the device's stderr (JobError.detail)
    on the lines below it. note_parts splits it again; each report renders the tail as a block of lines."""
    detail = detail if isinstance(detail, str) and detail.strip() else ""
    return f"{where}: {error}" + (f"\n{detail}" if detail else "")


def note_parts(note: str) -> tuple[str, str]:
    """(the note's first line, the lines below it: a failed row's stderr tail, or "")."""
    head, _, tail = note.partition("\n")
    return head, tail


def markdown_note(note: str) -> list[str]:
    """A note as a Markdown list item; a failed row's stderr tail as a code block inside the item."""
    head, tail = note_parts(note)
    if not tail:
        return [f"- {head}"]
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", tail)), default=0))
    return [f"- {head}", "", f"  {fence}text", *(f"  {line}" for line in tail.splitlines()), f"  {fence}"]


def print_note(console: Any, note: str, details: bool = True) -> None:
    """A note on the terminal (dim); a failed row's stderr tail indented below it (details=False: left out,
    for a caller that prints it itself)."""
    head, tail = note_parts(note)
    console.print(head, style="dim", markup=False, highlight=False)
    if tail and details:
        for line in tail.splitlines():
            console.print(f"    | {line}", style="dim", markup=False, highlight=False)


def row_stand_in(run: RunRecord, job) -> str:
    """A job's stand-in labels (its device's and its own), ", "-joined; "" for a real device and tool."""
    return ", ".join(standin.merge((run.devices.get(job.device_id) or {}).get("stand_in"), job.result.stand_in))


def device_stand_in(run: RunRecord, df: pd.DataFrame, device: str, combination: str | None = None) -> list[str]:
    """The stand-in labels of a device's table (the device's own and its rows'), for its title."""
    rows = df[df["device"] == device] if "device" in df else df.iloc[0:0]
    if combination is not None and "combination" in rows:
        rows = rows[rows["combination"] == combination]
    labels = [x for v in (rows["stand_in"] if "stand_in" in rows else []) if isinstance(v, str) and v
              for x in v.split(", ")]
    return standin.merge((run.devices.get(device) or {}).get("stand_in"), labels)


def row_samples(run: RunRecord, workload: str = "unet_iteration") -> dict[tuple[str, str, str], list[float]]:
    """(device, combination label, variant) -> the job's timed samples, as stored (a retry stored twice: the
    last, as `table1` keeps it). The raw data behind each Table-1 row, for plots of the samples."""
    out: dict[tuple[str, str, str], list[float]] = {}
    for job in run.jobs:
        if job.workload == workload:
            out[(job.device_id, combination_label(job.axes), job.variant)] = list(job.result.samples_ms)
    return out


def _mb(value: int | None) -> float | None:
    return None if value is None else value / MB


def table1(run: RunRecord, workload: str = "unet_iteration") -> pd.DataFrame:
    from harness.headroom import headroom, job_peak_bytes

    axes, order = job_combinations(run)
    rows, rows_axes = [], []
    for job in run.jobs:
        if job.workload != workload:
            continue
        res = job.result
        ex = res.execution
        row = {
            "device": job.device_id, "step": job.variant_index, "variant": job.variant,
            "label": LADDER_LABELS.get(job.variant, job.variant), "status": job.status,
            "runtime": ex.runtime, "dtype": job.options.get("dtype"), "accelerator": ex.accelerator,
            "unit": ex.unit_used,
            "tensor_mb_measured": _mb(res.memory.tensor_bytes_measured),
            "tensor_mb_planned": _mb(res.memory.tensor_bytes_planned),
            "weight_mb": _mb(res.memory.weight_bytes), "tensor_method": res.memory.tensor_measure_method,
            "gpu_mb": _mb(res.memory.gpu_bytes),
            "timing_method": ex.timing_method, "first_run_ms": res.first_run_ms, "init_ms": res.init_ms,
            "check_rel_error": res.check.rel_error if res.check else None,
            "error": f"{res.error.kind}: {res.error.message}" if res.error else None,
            "error_detail": res.error.detail if res.error else None,  # the tail of the device's stderr
            "latency_ms": None, "n": 0, "iqr_ms": None, "cv": None, "latency_source": None,
            "na_flags": list(ex.na_flags), "na_change": False, "_flags": job.flags,
            "combination": combination_label(job.axes), "combination_index": order.get(combination_label(job.axes), 0),
            "stand_in": row_stand_in(run, job),
        }
        rows_axes.append(job.axes)
        peak, peak_source = job_peak_bytes(res.memory)
        room = headroom(peak, run.devices.get(job.device_id, {"id": job.device_id}),
                        bool(job.options.get("extra", {}).get("increased_memory_limit")))
        row.update(peak_mb=_mb(room.peak_bytes), mem_limit_mb=_mb(room.limit_bytes), headroom=room.verdict,
                   headroom_note=f"{room.reason} [{peak_source}]" if peak is not None else room.reason)
        summary = ex.latency_summary_ms
        if res.samples_ms:
            s = summarize(res.samples_ms)
            # IQR and CV of fewer than 2 samples are not defined: None (n/a; empty in CSV), not 0
            row.update(latency_ms=s.median, n=s.n, iqr_ms=s.iqr if s.n >= 2 else None,
                       cv=s.cv if s.n >= 2 else None, latency_source="samples")
        elif summary is not None and summary.n:
            # A runtime that reports only a summary (benchmark_model: count/avg/std, median where the
            # build prints percentiles): its median, else its mean, flagged as such.
            center = summary.median if summary.median is not None else summary.avg
            cv = summary.std / summary.avg if summary.std is not None and summary.avg else None
            row.update(latency_ms=center, n=summary.n, cv=cv if summary.n >= 2 else None,
                       latency_source="device median" if summary.median is not None else "device mean")
        rows.append(row)
    df = add_axes(pd.DataFrame(rows, columns=COLUMNS + ["_flags"]), rows_axes, axes)
    if df.empty:
        return df.drop(columns="_flags")
    # A rerun of the same step on the same device (a retry stored twice) keeps the last row.
    df = df.drop_duplicates(subset=["device", "combination", "variant"], keep="last")
    df = df.sort_values(["device", "combination_index", "step"], kind="stable").reset_index(drop=True)
    df["change_pct"] = None
    for _, group in df.groupby(["device", "combination_index"], sort=False):
        prev = None
        for idx in group.index:  # a row that only turns on flags touching nothing in the model: n/a
            flags, na = df.at[idx, "_flags"] or {}, set(df.at[idx, "na_flags"])
            if prev is not None:
                changed = {k for k in set(flags) | set(prev) if flags.get(k) != prev.get(k)}
                df.at[idx, "na_change"] = bool(changed) and changed <= na
            prev = flags
        base = group.iloc[0]["latency_ms"]
        if base is None or pd.isna(base):
            continue
        for idx in group.index:
            lat = df.at[idx, "latency_ms"]
            if lat is not None and not pd.isna(lat):
                df.at[idx, "change_pct"] = (lat / base - 1.0) * 100.0
    return df.drop(columns="_flags")


def pivot_rows(table: pd.DataFrame, fmt, corner: str = "Row") -> tuple[list[str], list[list[str]]]:
    """A pivot (from `pivot`) as headers and formatted cells ("failed", NOT_RUN, "n/a" where a job has no
    figure)."""
    headers = [corner] + [str(c) for c in table.columns]
    rows = [[str(label)] + [v if isinstance(v, str) else
                            "n/a" if v is None or (isinstance(v, float) and pd.isna(v)) else fmt(v)
                            for v in table.loc[label]] for label in table.index]
    return headers, rows
