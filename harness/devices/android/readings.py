"""What run_job.sh leaves on the phone, read into figures: per-run times from benchmark_model's stat
lines, thermal zones and battery, `dumpsys meminfo` samples. Pure functions over the agent's text."""
from __future__ import annotations

import math
from typing import Any

from harness.devices.android.parse import ParseError, RunStats
from harness.devices.android.parse_device import parse_battery_temp, parse_thermal_zones


def exact_samples_ms(stats: RunStats) -> list[float]:
    """Per-run times implied exactly by a stat line: one run, two runs (first, curr), all the same."""
    if stats.count == 0:
        return []
    if stats.count == 1:
        return [stats.curr_us / 1000.0]
    if stats.count == 2:
        return [stats.first_us / 1000.0, stats.curr_us / 1000.0]
    if stats.min_us == stats.max_us:
        return [stats.min_us / 1000.0] * stats.count
    return []


def summary_ms(stats: RunStats) -> dict[str, Any]:
    out: dict[str, Any] = {"n": stats.count}
    for key in ("first", "curr", "min", "max", "avg", "std", "p5", "median", "p95"):
        value = getattr(stats, f"{key}_us")
        out[key] = None if value is None or math.isnan(value) or not stats.count else value / 1000.0
    return out


def device_state(thermal_text: str | None, battery_text: str | None) -> dict[str, Any]:
    """Thermal zones and battery temperature as recorded by run_job.sh (unreadable parts left out)."""
    state: dict[str, Any] = {}
    if thermal_text and thermal_text.strip():
        try:
            zones = parse_thermal_zones(thermal_text)
        except ParseError as exc:
            state["thermal_error"] = str(exc)
        else:
            temps: dict[str, float] = {}
            for z in zones:
                if z.temp_c is None:
                    continue
                key = z.type or z.zone
                temps[key if key not in temps else f"{key}#{z.zone}"] = z.temp_c
            state["thermal_c"] = temps
            plausible = {k: v for k, v in temps.items() if -30.0 < v < 150.0}
            if plausible:
                hottest = max(plausible, key=plausible.__getitem__)
                state["hottest_zone"], state["hottest_c"] = hottest, plausible[hottest]
    if battery_text and battery_text.strip():
        try:
            state["battery_c"] = parse_battery_temp(battery_text)
        except ParseError as exc:
            state["battery_error"] = str(exc)
    return state


def split_meminfo_samples(text: str) -> list[tuple[float | None, str]]:
    """run_job.sh's meminfo.txt -> [(unix seconds, one `dumpsys meminfo` text)]."""
    samples: list[tuple[float | None, str]] = []
    current: list[str] | None = None
    stamp: float | None = None
    for line in text.splitlines():
        if line.startswith("@@sample "):
            if current is not None:
                samples.append((stamp, "\n".join(current)))
            parts = line.split()
            stamp = float(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            current = []
        elif current is not None:
            current.append(line)
    if current is not None:
        samples.append((stamp, "\n".join(current)))
    return samples
