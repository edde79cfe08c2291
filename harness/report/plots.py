"""Plots for reports, rendered with matplotlib (Agg) to PNG bytes."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def latency_bars(df: pd.DataFrame, title: str = "UNet iteration latency per ladder step") -> bytes:
    """Grouped bars: one group per ladder step, one bar per device (and sweep combination, named in the
    legend), the IQR as error bars."""
    ok = df[df["latency_ms"].notna()]
    combo = ok["combination"] if "combination" in ok else pd.Series([""] * len(ok), index=ok.index)
    series = list(dict.fromkeys(zip(ok["device"], combo)))
    one_device = len({d for d, _ in series}) == 1
    labels = list(dict.fromkeys(df.sort_values("step")["label"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels) + 0.3 * len(series)), 4 + 0.25 * max(0, len(series) - 4)),
                           dpi=100)
    width = 0.8 / max(1, len(series))
    for i, (device, comb) in enumerate(series):
        sub = ok[(ok["device"] == device) & (combo == comb)].set_index("label")
        xs, ys, errs = [], [], []
        for li, label in enumerate(labels):
            if label in sub.index:
                xs.append(li + i * width - 0.4 + width / 2)
                ys.append(float(sub.loc[label, "latency_ms"]))
                iqr = sub.loc[label, "iqr_ms"]
                errs.append(0.0 if iqr is None or pd.isna(iqr) else float(iqr) / 2)
        name = (comb if one_device else f"{device} — {comb}") if comb else device
        ax.bar(xs, ys, width=width, yerr=errs, capsize=3, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=15, ha="right")
    ax.set_ylabel("median latency (ms)")
    ax.set_title(title)
    if series:
        ax.legend(fontsize="x-small" if len(series) > 3 else "small")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def e2e_breakdown_bars(df: pd.DataFrame, reference_s: float | None = None,
                       title: str = "End-to-end generation: where the time goes") -> bytes:
    """Stacked bars, one per device and ladder row (harness.report.e2e.e2e_table rows): text encoder,
    UNet, scheduler, decoder, other, in seconds; composed rows hatched; the paper's figure as a line."""
    from harness.composition import COMPOSED_LABEL
    from harness.report.e2e import PAPER_REFERENCE_LABEL, PAPER_REFERENCE_S, SEGMENTS

    reference_s = PAPER_REFERENCE_S if reference_s is None else reference_s
    ok = df[df["total_s"].notna()].reset_index(drop=True)
    labels = [f"{r['device']}\n{r['label']}" + (f"\n{r['combination']}" if r.get("combination") else "")
              for _, r in ok.iterrows()]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(labels) + 3.5), 4.5), dpi=100)
    bottoms = [0.0] * len(ok)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for si, (col, name) in enumerate(SEGMENTS):
        heights = [0.0 if v is None or pd.isna(v) else float(v) / 1000.0 for v in ok[col]]
        hatches = ["//" if m == "composed" else "" for m in ok["method"]]
        bars = ax.bar(range(len(ok)), heights, bottom=bottoms, color=colors[si % len(colors)], label=name,
                      edgecolor="white", linewidth=0.5)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.axhline(reference_s, color="black", linestyle="--", linewidth=1)
    ax.text(0.99, reference_s, f"{PAPER_REFERENCE_LABEL}: {reference_s:g} s", transform=ax.get_yaxis_transform(),
            va="bottom", ha="right", fontsize="small")
    ax.set_xticks(range(len(ok)))
    ax.set_xticklabels(labels, rotation=15, ha="right", fontsize="small")
    ax.set_ylabel("seconds per image")
    subtitle = " (hatched: " + COMPOSED_LABEL + ")" if (ok["method"] == "composed").any() else ""
    ax.set_title(title + subtitle, fontsize="medium")
    ax.set_ylim(0, max([reference_s * 1.15] + [b * 1.1 for b in bottoms]))
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _series(df: pd.DataFrame) -> list[tuple[str, str]]:
    combo = df["combination"] if "combination" in df else pd.Series([""] * len(df), index=df.index)
    return list(dict.fromkeys(zip(df["device"], combo)))


def _series_rows(df: pd.DataFrame, device: str, comb: str) -> pd.DataFrame:
    combo = df["combination"] if "combination" in df else pd.Series([""] * len(df), index=df.index)
    return df[(df["device"] == device) & (combo == comb)].sort_values("step", kind="stable")


def _series_title(device: str, comb: str) -> str:
    return f"{device} — {comb}" if comb else device


MEMORY_BARS = [("tensor_mb_measured", "tensors, measured"), ("tensor_mb_planned", "tensors, planned"),
               ("weight_mb", "weights")]


def memory_bars(df: pd.DataFrame, title: str = "Memory per row") -> bytes:
    """One panel per device (and sweep combination): per ladder row, the measured and the planned
    intermediate tensors and the weights in MB (the Table-1 memory columns); a missing figure is left out
    and marked n/a."""
    series = _series(df)
    fig, axes = plt.subplots(len(series), 1, figsize=(max(7, 1.7 * df["label"].nunique() + 2), 3.4 * len(series)),
                             dpi=100, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (device, comb) in zip(axes[:, 0], series):
        rows = _series_rows(df, device, comb)
        width = 0.8 / len(MEMORY_BARS)
        for bi, (col, name) in enumerate(MEMORY_BARS):
            for li, (_, r) in enumerate(rows.iterrows()):
                x = li - 0.4 + width * (bi + 0.5)
                v = r[col]
                if v is None or pd.isna(v):
                    ax.text(x, 0, "failed" if r["status"] == "failed" else "n/a", ha="center", va="bottom",
                            fontsize="x-small", rotation=90, color="#777")
                    continue
                ax.bar(x, float(v), width=width, color=colors[bi % len(colors)], label=name if li == 0 else None)
                ax.text(x, float(v), f"{float(v):,.1f}" if float(v) < 100 else f"{float(v):,.0f}", ha="center",
                        va="bottom", fontsize="x-small")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(list(rows["label"]), rotation=15, ha="right")
        ax.set_ylabel("MB (2^20 bytes)")
        ax.set_title(f"{title}: {_series_title(device, comb)}", fontsize="medium")
        _legend_once(ax)
        ax.margins(y=0.15)
    return _png(fig)


def sample_strips(df: pd.DataFrame, samples: dict[tuple[str, str, str], list[float]],
                  title: str = "Raw latency samples per row") -> bytes:
    """One panel per device (and sweep combination): every timed sample of each ladder row as a dot (spread
    sideways by a fixed pattern so equal values stay visible), the row's median (Table 1's figure, from `df`)
    as a bar across. `samples`: (device, combination, variant) -> the samples in timing order."""
    series = _series(df)
    fig, axes = plt.subplots(len(series), 1, figsize=(max(7, 1.6 * df["label"].nunique() + 2), 3.4 * len(series)),
                             dpi=100, squeeze=False)
    for ax, (device, comb) in zip(axes[:, 0], series):
        rows = _series_rows(df, device, comb)
        for li, (_, r) in enumerate(rows.iterrows()):
            values = samples.get((device, comb, r["variant"])) or []
            n = len(values)
            xs = [li + (((i * 0.618) % 1.0) - 0.5) * 0.5 for i in range(n)]  # a fixed low-discrepancy spread
            if values:
                ax.scatter(xs, values, s=14, alpha=0.7, color="C0", label="timed sample" if li == 0 else None,
                           zorder=3)
            med = r["latency_ms"]
            if med is not None and not pd.isna(med):
                ax.hlines(float(med), li - 0.35, li + 0.35, color="C3", linewidth=2,
                          label="median (Table 1)" if li == 0 else None, zorder=4)
            if not values:
                ax.text(li, 0.5, "no per-run samples" if r["status"] == "ok" else "failed",
                        transform=ax.get_xaxis_transform(), ha="center", fontsize="x-small", color="#777")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(list(rows["label"]), rotation=15, ha="right")
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{title}: {_series_title(device, comb)}", fontsize="medium")
        _legend_once(ax)
    return _png(fig)


def _legend_once(ax) -> None:
    """A panel's legend with each label once (bars and dots repeat theirs per row), and a light grid."""
    handles, labels = ax.get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    if by_label:
        ax.legend(by_label.values(), by_label.keys(), fontsize="small")
    ax.grid(axis="y", alpha=0.3)


def _png(fig) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
