"""Memory headroom: a job's peak memory against what the device lets one app use.

iOS kills an app (jetsam) past a per-app memory limit that depends on the device's RAM, far below the
RAM itself; Android lets an app grow until the low-memory killer acts, so there the device RAM is the
(upper-bound) limit. `headroom()` returns a verdict (ok / over / unknown) with the numbers; the
Table-1 report (harness.report.table1) flags a variant over the limit.

Per-app limits of iPhones by RAM class (default entitlements), with sources:

* 2 GiB RAM: ~1,396 MB (iPhone 6s / 7) and 3 GiB RAM: ~1,392 MB (iPhone X; the iPhone XR reported
  ~1,792 MB, we keep the lower figure) -- measured limits collected in the Stack Overflow thread
  "iOS app maximum memory budget" (https://stackoverflow.com/questions/5887248), by allocating until
  the app is killed.
* 4 GiB RAM: ~2 GiB -- the same thread (iPhone XS 2,040 MB, iPhone 11 2,068 MB) and Draw Things'
  write-up of fitting Stable Diffusion in 2 GiB because "iOS kills an app past about 2 GiB on a 4 GiB
  phone" (https://engineering.drawthings.ai/, cited by issue 10).
* 6 GiB RAM: ~2.8 GiB -- Draw Things, same source ("2.8 GiB on a 6 GiB one").
* 8 GiB RAM and more: no published figure; the verdict is "unknown".
* The `com.apple.developer.kernel.increased-memory-limit` entitlement (Apple developer documentation,
  "Increased Memory Limit", https://developer.apple.com/documentation/bundleresources/entitlements/com.apple.developer.kernel.increased-memory-limit)
  raises the limit on supported devices by an undocumented amount, and `os_proc_available_memory()`
  reports the remainder at run time. With `increased_memory_limit=True` the table's figure is a lower
  bound: a peak under it is ok, a peak over it is "unknown", never "over".

ProductType -> RAM below is from Apple's model identifiers and the RAM published in teardowns
(e.g. iPhone15,2 = iPhone 14 Pro, 6 GiB); a device whose ProductType is not listed falls back to the
RAM it reports (DeviceInfo.ram_bytes), else the verdict is unknown.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

GIB = 1024 ** 3
MB = 1024 * 1024

# iPhone RAM class (GiB) -> per-app limit in bytes (None: not documented). Sources in the module docstring.
IOS_APP_LIMIT_BYTES: dict[int, int | None] = {
    2: 1396 * MB,
    3: 1392 * MB,
    4: 2 * GIB,
    6: int(2.8 * GIB),
    8: None,
}

# ProductType -> RAM in GiB.
IPHONE_RAM_GIB: dict[str, int] = {
    "iPhone9,1": 2, "iPhone9,3": 2, "iPhone9,2": 3, "iPhone9,4": 3,  # 7, 7 Plus
    "iPhone10,1": 2, "iPhone10,4": 2, "iPhone10,2": 3, "iPhone10,5": 3,  # 8, 8 Plus
    "iPhone10,3": 3, "iPhone10,6": 3,  # X
    "iPhone11,2": 4, "iPhone11,4": 4, "iPhone11,6": 4, "iPhone11,8": 3,  # XS, XS Max, XR
    "iPhone12,1": 4, "iPhone12,3": 4, "iPhone12,5": 4, "iPhone12,8": 3,  # 11, 11 Pro, 11 Pro Max, SE 2
    "iPhone13,1": 4, "iPhone13,2": 4, "iPhone13,3": 6, "iPhone13,4": 6,  # 12 mini, 12, 12 Pro, 12 Pro Max
    "iPhone14,4": 4, "iPhone14,5": 4, "iPhone14,2": 6, "iPhone14,3": 6, "iPhone14,6": 4,  # 13 family, SE 3
    "iPhone14,7": 6, "iPhone14,8": 6, "iPhone15,2": 6, "iPhone15,3": 6,  # 14, 14 Plus, 14 Pro, 14 Pro Max
    "iPhone15,4": 6, "iPhone15,5": 6, "iPhone16,1": 8, "iPhone16,2": 8,  # 15, 15 Plus, 15 Pro, 15 Pro Max
    "iPhone17,1": 8, "iPhone17,2": 8, "iPhone17,3": 8, "iPhone17,4": 8, "iPhone17,5": 8,  # 16 family, 16e
}

Verdict = Literal["ok", "over", "unknown"]


@dataclass(frozen=True)
class Headroom:
    """A peak against a limit. headroom_bytes = limit - peak (negative when over)."""

    verdict: Verdict
    peak_bytes: int | None
    limit_bytes: int | None
    headroom_bytes: int | None
    limit_source: str  # how the limit was obtained
    reason: str  # one line for the report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _get(info: Any, key: str, default: Any = None) -> Any:
    return info.get(key, default) if isinstance(info, dict) else getattr(info, key, default)


def ios_app_limit(product_type: str | None, ram_bytes: int | None = None) -> tuple[int | None, str]:
    """(per-app limit in bytes or None, where it came from) for an iPhone."""
    ram_gib = IPHONE_RAM_GIB.get(product_type or "")
    how = f"{product_type}: {ram_gib} GiB RAM class" if ram_gib else ""
    if ram_gib is None and ram_bytes:
        ram_gib = round(ram_bytes / GIB)
        how = f"reported RAM {ram_bytes / GIB:.1f} GiB"
    if ram_gib is None:
        return None, f"iPhone {product_type or '(unknown model)'} not in the RAM table and no RAM reported"
    known = {k: v for k, v in IOS_APP_LIMIT_BYTES.items() if k <= ram_gib}
    if not known:
        return None, f"{how}: no per-app limit documented"
    limit = known[max(known)]  # the largest documented class not above this RAM (conservative)
    if limit is None:
        return None, f"{how}: no per-app limit documented for this RAM class"
    return limit, f"iOS per-app limit, {how} (harness/headroom.py table)"


def device_memory_limit(info: Any) -> tuple[int | None, str]:
    """(limit bytes or None, source) for a device (a DeviceInfo or its dict, as the store keeps it)."""
    kind = _get(info, "kind", "") or ""
    extra = _get(info, "extra", {}) or {}
    ram = _get(info, "ram_bytes")
    if kind == "ios":
        return ios_app_limit(extra.get("product_type") or _get(info, "model"), ram)
    if kind != "android":
        return None, f"no per-app memory limit for a {kind or 'unknown'} device (phones only)"
    if ram:
        return int(ram), "device RAM (Android; an upper bound for one app)"
    return None, "the device did not report its RAM"


def job_peak_bytes(memory: Any) -> tuple[int | None, str]:
    """A job's peak memory from its MemoryFigures (or dict): peak RSS plus GPU driver memory where the
    runtime reports it apart (Android); else weights + measured tensors as an estimate."""
    rss = _get(memory, "peak_rss_bytes")
    gpu = _get(memory, "gpu_bytes")
    if rss:
        return int(rss) + int(gpu or 0), "peak RSS" + (" + GPU driver memory" if gpu else "")
    weights, tensors = _get(memory, "weight_bytes"), _get(memory, "tensor_bytes_measured")
    if weights and tensors:
        return int(weights) + int(tensors), "estimate: weights + peak tensors"
    return None, "no peak memory recorded"


def headroom(peak_bytes: int | None, device_info: Any, increased_memory_limit: bool = False) -> Headroom:
    """Verdict of a peak against the device's per-app limit (see the module docstring for the table)."""
    limit, source = device_memory_limit(device_info)
    if peak_bytes is None:
        return Headroom("unknown", None, limit, None, source, "no peak memory recorded for this job")
    if limit is None:
        return Headroom("unknown", peak_bytes, None, None, source, f"peak {peak_bytes / MB:,.0f} MB; limit unknown: {source}")
    room = limit - peak_bytes
    if room >= 0:
        return Headroom("ok", peak_bytes, limit, room, source,
                        f"peak {peak_bytes / MB:,.0f} MB of {limit / MB:,.0f} MB ({source})")
    if increased_memory_limit and _get(device_info, "kind") == "ios":
        return Headroom("unknown", peak_bytes, limit, room, source,
                        f"peak {peak_bytes / MB:,.0f} MB is over the default {limit / MB:,.0f} MB; with the "
                        "increased-memory-limit entitlement the real limit is higher but undocumented")
    return Headroom("over", peak_bytes, limit, room, source,
                    f"peak {peak_bytes / MB:,.0f} MB is over the limit {limit / MB:,.0f} MB by "
                    f"{-room / MB:,.0f} MB ({source}); the app would be killed")


def job_headroom(result: Any, device_info: Any, increased_memory_limit: bool = False) -> Headroom:
    """`headroom` for a JobResult on a device."""
    peak, _ = job_peak_bytes(_get(result, "memory"))
    return headroom(peak, device_info, increased_memory_limit)
