"""Plots for reports, rendered with matplotlib (Agg) to PNG bytes."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def latency_bars(df: pd.DataFrame, title: str = "UNet iteration latency per ladder step") -> bytes:
    """Grouped bars: one group per ladder step, one bar per device, the IQR as error bars."""
    ok = df[df["latency_ms"].notna()]
    devices = list(dict.fromkeys(ok["device"]))
    labels = list(dict.fromkeys(df.sort_values("step")["label"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 4), dpi=100)
    width = 0.8 / max(1, len(devices))
    for i, device in enumerate(devices):
        sub = ok[ok["device"] == device].set_index("label")
        xs, ys, errs = [], [], []
        for li, label in enumerate(labels):
            if label in sub.index:
                xs.append(li + i * width - 0.4 + width / 2)
                ys.append(float(sub.loc[label, "latency_ms"]))
                iqr = sub.loc[label, "iqr_ms"]
                errs.append(0.0 if iqr is None or pd.isna(iqr) else float(iqr) / 2)
        ax.bar(xs, ys, width=width, yerr=errs, capsize=3, label=device)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=15, ha="right")
    ax.set_ylabel("median latency (ms)")
    ax.set_title(title)
    if devices:
        ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
