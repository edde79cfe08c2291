"""End-to-end figures composed from separately measured components (devices that run the text encoder,
the UNet and the VAE decoder as separate benchmarks, e.g. Android's benchmark_model): pure arithmetic that
the device layer (harness.devices.android) and the reports (harness.report.e2e) share, so that devices
need not import the report layer."""
from __future__ import annotations

import math
import statistics
from typing import Any

COMPOSED_LABEL = "composed from on-device component runs"


def flatten(value: Any):
    """Every number in a nested list (a per-image, per-step figure), as floats."""
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from flatten(v)
    elif value is not None:
        yield float(value)


class CompositionError(ValueError):
    """Component figures that cannot be composed (negative, missing, not finite, steps < 1)."""


def _check_ms(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise CompositionError(f"{name} must be a finite number of milliseconds >= 0, got {value!r}")
    return float(value)


def compose_e2e(text_ms: float, unet_ms: float, decoder_ms: float, scheduler_ms: float, steps: int) -> float:
    """End-to-end ms composed from separately measured components:
    text_ms + steps x (unet_ms + scheduler_ms) + decoder_ms.

    unet_ms: one UNet iteration (batch 2, guidance) measured on the device; scheduler_ms: the
    per-step non-UNet cost (input scaling, guidance, scheduler.step) measured on the host
    (`host_scheduler_ms_per_step`); both are per step. Label the result COMPOSED_LABEL.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CompositionError(f"steps must be an integer >= 1, got {steps!r}")
    text = _check_ms("text_ms", text_ms)
    unet = _check_ms("unet_ms", unet_ms)
    decoder = _check_ms("decoder_ms", decoder_ms)
    sched = _check_ms("scheduler_ms", scheduler_ms)
    return text + steps * (unet + sched) + decoder


def composed_components(text_ms: float, unet_ms: float, decoder_ms: float, scheduler_ms: float, steps: int,
                        sources: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JobResult.components_ms of a composed e2e result (per-step unet_ms and scheduler_ms).
    `sources`: where each figure came from (artifact names, host run id), kept for the record."""
    total = compose_e2e(text_ms, unet_ms, decoder_ms, scheduler_ms, steps)
    out: dict[str, Any] = {
        "method": "composed", "label": COMPOSED_LABEL, "steps": steps, "unet_evals": steps,
        "text_encoder_ms": float(text_ms), "unet_ms": float(unet_ms), "scheduler_ms": float(scheduler_ms),
        "decoder_ms": float(decoder_ms), "total_ms": total,
    }
    if sources:
        out["sources"] = dict(sources)
    return out


def host_scheduler_ms_per_step(components_ms: dict[str, Any]) -> float:
    """The median per-step scheduler cost of a measured e2e result (what compose_e2e takes)."""
    value = components_ms.get("scheduler_ms")
    if value is None:
        raise CompositionError("components_ms has no scheduler_ms; give the result of a host e2e run")
    flat = list(flatten(value))
    if not flat:
        raise CompositionError("components_ms.scheduler_ms is empty; the host e2e run timed no image")
    return float(statistics.median(flat))
