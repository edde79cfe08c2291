"""Pure parsers over an Android system's own text: ``getprop``, ``dumpsys SurfaceFlinger``, ``dumpsys
meminfo <pid>``, ``/proc/meminfo``, sysfs thermal zones and the battery (the rules of `parse`: typed
frozen results, ParseError quoting text that is not recognized, never zeros for unknown text).

``dumpsys meminfo <pid>``: ``ActivityThread.dumpMemInfoTable`` (``HEAP_COLUMN`` rows such as
``GL mtrack``/``EGL mtrack``/``Gfx dev``/``TOTAL``, then the "App Summary" with ``Graphics:`` and
``TOTAL PSS:``). Rows whose values are all zero are not printed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from harness.devices.android.parse import ParseError, parse_failure


# --------------------------------------------------------------------------- getprop

_PROP_START_RE = re.compile(r"^\[([^\]]+)\]: \[(.*)$")


def parse_getprop(text: str) -> dict[str, str]:
    """Parse the full ``getprop`` listing (``[ro.product.model]: [Pixel 8]`` lines).

    A value that spans lines (rare, but legal) is joined with newlines.
    """
    if not text or not text.strip():
        raise ParseError("getprop output is empty")
    props: dict[str, str] = {}
    key: str | None = None
    parts: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if key is not None:  # inside a multi-line value
            if line.endswith("]"):
                parts.append(line[:-1])
                props[key] = "\n".join(parts)
                key = None
            else:
                parts.append(line)
            continue
        if not line.strip():
            continue
        m = _PROP_START_RE.match(line)
        if m is None:
            raise parse_failure("unrecognized line in getprop output", line)
        rest = m[2]
        if rest.endswith("]"):
            props[m[1]] = rest[:-1]
        else:
            key, parts = m[1], [rest]
    if key is not None:
        raise parse_failure(f"getprop value of {key} is not terminated by ']'", "\n".join(parts))
    return props


# --------------------------------------------------------------------------- SurfaceFlinger


@dataclass(frozen=True)
class GlesInfo:
    vendor: str  # "Qualcomm"
    renderer: str  # "Adreno (TM) 740"
    version: str  # "OpenGL ES 3.2 V@0615.65 (GIT@...)"


_GLES_RE = re.compile(r"^\s*GLES: (.+?)\s*$", re.MULTILINE)


def parse_devices_gles(text: str) -> str | None:
    """The text after ``GLES: `` in ``dumpsys SurfaceFlinger`` (vendor, renderer, version).

    Returns None when the dump has no GLES line (e.g. a Vulkan RenderEngine); raises ParseError
    for empty text or when dumpsys could not reach SurfaceFlinger.
    """
    if not text or not text.strip():
        raise ParseError("dumpsys SurfaceFlinger output is empty")
    if "Can't find service" in text or "Permission Denial" in text:
        raise parse_failure("dumpsys could not dump SurfaceFlinger", text)
    m = _GLES_RE.search(text)
    return m[1] if m else None


def split_gles(gles: str) -> GlesInfo:
    """Split a GLES line's value into vendor, renderer and version (the version may hold commas)."""
    parts = [p.strip() for p in gles.split(",", 2)]
    if len(parts) != 3 or not all(parts):
        raise parse_failure("a GLES line is 'vendor, renderer, version'", gles)
    return GlesInfo(*parts)


# --------------------------------------------------------------------------- dumpsys meminfo


@dataclass(frozen=True)
class GpuMemory:
    """GPU-related memory of one process from ``dumpsys meminfo <pid>``, all in KiB (PSS).

    ``graphics_kb`` is the App Summary's Graphics (GL mtrack + EGL mtrack + Gfx dev). The mtrack
    rows are None when the dump had no per-category table (``dumpsys meminfo -s``) and 0 when the
    table was there without that row (dumpsys omits all-zero rows).
    """

    graphics_kb: int
    gl_mtrack_kb: int | None
    egl_mtrack_kb: int | None
    total_pss_kb: int
    gfx_dev_kb: int | None = None
    pid: int | None = None
    process: str | None = None


_MEMINFO_HEADER_RE = re.compile(r"\*\* MEMINFO in pid (\d+) \[(.*?)\] \*\*")
_MEMINFO_ROW_RE = re.compile(r"^\s*(GL mtrack|EGL mtrack|Gfx dev|TOTAL)\s+(\d+)\b", re.MULTILINE)
_MEMINFO_GRAPHICS_RE = re.compile(r"^\s*Graphics:\s+(\d+)", re.MULTILINE)
_MEMINFO_TOTAL_PSS_RE = re.compile(r"TOTAL PSS:\s+(\d+)")


def parse_meminfo_graphics(text: str) -> GpuMemory:
    """Parse ``dumpsys meminfo <pid>`` (one process) into GpuMemory."""
    if not text or not text.strip():
        raise ParseError("dumpsys meminfo output is empty")
    if m := re.search(r"No process found for: ?(.*)", text):
        raise parse_failure(f"dumpsys meminfo found no process {m[1].strip()!r} (has it exited?)", text)
    headers = _MEMINFO_HEADER_RE.findall(text)
    if len(headers) > 1:
        raise parse_failure(
            f"dumpsys meminfo printed {len(headers)} processes; ask for one pid", text
        )
    rows = {label: int(value) for label, value in _MEMINFO_ROW_RE.findall(text)}
    has_table = "TOTAL" in rows
    graphics_m = _MEMINFO_GRAPHICS_RE.search(text)
    total_m = _MEMINFO_TOTAL_PSS_RE.search(text)
    gl = rows.get("GL mtrack", 0) if has_table else None
    egl = rows.get("EGL mtrack", 0) if has_table else None
    gfx = rows.get("Gfx dev", 0) if has_table else None
    if graphics_m:
        graphics = int(graphics_m[1])
    elif has_table:
        graphics = (gl or 0) + (egl or 0) + (gfx or 0)
    else:
        raise parse_failure("no 'Graphics:' summary or per-category table in dumpsys meminfo", text)
    if total_m:
        total = int(total_m[1])
    elif has_table:
        total = rows["TOTAL"]
    else:
        raise parse_failure("no 'TOTAL PSS:' in dumpsys meminfo", text)
    pid = int(headers[0][0]) if headers else None
    process = headers[0][1] if headers else None
    return GpuMemory(graphics, gl, egl, total, gfx, pid, process)


# --------------------------------------------------------------------------- /proc/meminfo


def parse_meminfo_total_ram(text: str) -> int:
    """Total RAM in **bytes** from ``/proc/meminfo`` (its ``MemTotal: N kB`` line x 1024)."""
    if not text or not text.strip():
        raise ParseError("/proc/meminfo text is empty")
    m = re.search(r"^MemTotal:\s+(\d+) kB\s*$", text, re.MULTILINE)
    if m is None:
        raise parse_failure("no 'MemTotal: N kB' line in /proc/meminfo text", text)
    return int(m[1]) * 1024


# --------------------------------------------------------------------------- thermal, battery


@dataclass(frozen=True)
class ThermalZone:
    zone: str  # "thermal_zone0"
    type: str  # "cpu-0-0-usr", "gpuss-0", "battery", ...
    temp_c: float | None  # None when the zone could not be read (some zones refuse reads)


# Run on the device; prints "thermal_zoneN<TAB>type<TAB>millidegrees" per zone. `${z##*/}` keeps
# only the zone's directory name.
THERMAL_ZONES_SHELL_CMD = (
    "for z in /sys/class/thermal/thermal_zone*; do "
    "printf '%s\\t%s\\t%s\\n' \"${z##*/}\" \"$(cat \"$z/type\" 2>/dev/null)\" "
    "\"$(cat \"$z/temp\" 2>/dev/null)\"; done"
)


def parse_thermal_zones(text: str) -> tuple[ThermalZone, ...]:
    """Parse the output of THERMAL_ZONES_SHELL_CMD. Temperatures are sysfs millidegrees C / 1000."""
    if not text or not text.strip():
        raise ParseError("thermal zone listing is empty (no /sys/class/thermal/thermal_zone*?)")
    zones: list[ThermalZone] = []
    for line in text.splitlines():
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not re.fullmatch(r"thermal_zone\d+", fields[0].strip()):
            raise parse_failure("unrecognized thermal zone line (expected 'thermal_zoneN\\ttype\\ttemp')",
                        line)
        zone, ztype, raw = (f.strip() for f in fields)
        temp = int(raw) / 1000.0 if re.fullmatch(r"-?\d+", raw) else None
        zones.append(ThermalZone(zone, ztype, temp))
    return tuple(zones)


def parse_battery_temp(text: str) -> float:
    """Battery temperature in degrees C.

    Accepts ``/sys/class/power_supply/battery/temp`` (tenths of a degree, e.g. ``312``) or
    ``dumpsys battery`` (its ``temperature: 312`` line, also tenths).
    """
    if not text or not text.strip():
        raise ParseError("battery temperature text is empty")
    m = re.search(r"^\s*temperature:\s*(-?\d+)\s*$", text, re.MULTILINE)
    if m is None:
        m = re.fullmatch(r"\s*(-?\d+)\s*", text)
    if m is None:
        raise parse_failure("expected a battery temperature in tenths of a degree C", text)
    return int(m[1]) / 10.0
