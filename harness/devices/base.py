"""The Device interface, the explicit registry of device kinds, and the device error tree.

A device id is `KIND` (every ready device of that kind) or `KIND:SERIAL`. `host` is the machine the
controller runs on. The controller talks to a device only through this interface: info, prepare
(push what the jobs need), run_job (one JobSpec in, one JobResult out), close.
"""
from __future__ import annotations

import importlib
import traceback
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from harness.protocol import JobResult, JobSpec


class DeviceError(Exception):
    """Base of every device error."""


class UnknownDeviceError(DeviceError):
    """A device id that names no known kind or no attached device (an input error: exit code 2)."""


class DeviceUnavailableError(DeviceError):
    """A device that exists but cannot run jobs now (offline, unauthorized, locked)."""


class DeviceDisconnectedError(DeviceError):
    """The device went away in the middle of an operation; the job may be retried."""


class JobFailure(Exception):
    """A failure that becomes the job's JobResult (not a device drop): kind (JobError.kind), message, detail
    (e.g. the tool's stderr), transient (the runner may retry it), extra (diagnostics kept on the result)."""

    def __init__(self, kind: str, message: str, detail: str | None = None, transient: bool = False,
                 extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind, self.message, self.detail, self.transient = kind, message, detail, transient
        self.extra = extra or {}


@dataclass
class Artifact:
    """What a device runs for one job: a host file (.tflite) or folder (.mlpackage), its sha256 and size, and
    where it came from: "export" (the export cache; `meta` is the cache's record, `key` its cache key),
    "graph"/"path" (given by the user)."""
    local: Path
    sha256: str
    size_bytes: int
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    key: str | None = None


def memoized_artifact(memo: dict[str, Any], key: str, resolve: Callable[[], Artifact]) -> Artifact:
    """A device's artifact for `key`, resolved once per session: a resolved one is reused while its file (or
    .mlpackage folder) exists; a failure is remembered and raised again, so a variant that cannot be exported
    fails each of its jobs at once instead of exporting again."""
    cached = memo.get(key)
    if isinstance(cached, JobFailure):
        raise cached
    if cached is not None and cached.local.exists():
        return cached
    try:
        memo[key] = resolve()
    except JobFailure as failure:
        memo[key] = failure
        raise
    return memo[key]


def positive_seconds(where: str, value: Any, error: type[Exception]) -> float:
    """A farm.yaml / options duration: a number of seconds > 0, else `error` naming `where` and the value."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise error(f"{where}: expected a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise error(f"{where}: must be > 0, got {seconds}")
    return seconds


def export_failure(exc: Exception, what: str, fmt_label: str) -> JobFailure:
    """One mapping, for every device kind, of a failed export (harness.export.ExportError.kind) to the job's
    error: `input` stays input, a reference check that failed is `reference_mismatch`, the rest `export`."""
    kind = {"input": "input", "check": "reference_mismatch"}.get(getattr(exc, "kind", "") or "", "export")
    detail = getattr(exc, "detail", None) or traceback.format_exc()
    return JobFailure(kind, f"exporting {what} to {fmt_label} failed: {type(exc).__name__}: {exc}", detail=str(detail))


@dataclass
class DeviceInfo:
    id: str  # `kind:serial`, or `host`
    kind: str
    state: str = "ready"  # ready | offline | unauthorized | unpaired | locked | ...
    name: str = ""
    model: str = ""
    soc: str = ""
    gpu: str = ""
    os_version: str = ""
    ram_bytes: int | None = None
    hint: str = ""  # what to do when the state is not ready
    extra: dict[str, Any] = field(default_factory=dict)
    # A note from discovery, not a device: an adb server or usbmuxd that could not be reached (the hint
    # says how to fix it). `harness devices` prints it under the table; no --device names it.
    note: bool = False
    # What makes this device a stand-in, not a real phone (harness.standin: "fake phone", "Android emulator",
    # "iOS API stand-in"); [] for a real device. Every job on it carries these labels.
    stand_in: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A callback for progress inside a job: (phase, done, total).
ProgressFn = Callable[[str, int, int], None]


@dataclass
class DeviceContext:
    """What a device kind needs from the command line and the farm config."""

    cache_dir: Path | None = None
    adb_servers: list[str] = field(default_factory=list)  # HOST:PORT
    benchmark_model: str | None = None
    ios_agent: str | None = None  # the agent app's IPA (--ios-agent), installed when its sha256 differs
    farm: dict[str, Any] = field(default_factory=dict)  # the parsed farm.yaml (--farm), {} without one
    farm_path: Path | None = None  # where farm.yaml lies: its relative paths are relative to it
    extra: dict[str, Any] = field(default_factory=dict)


class Device(ABC):
    kind: ClassVar[str]

    def __init__(self, info: DeviceInfo, ctx: DeviceContext):
        self.info = info
        self.ctx = ctx

    @property
    def id(self) -> str:
        return self.info.id

    def prepare(self, specs: list[JobSpec]) -> None:
        """Put on the device what these jobs need (agent, artifacts); skip what is already there."""

    @abstractmethod
    def run_job(self, spec: JobSpec, workdir: Path, progress: ProgressFn | None = None) -> JobResult:
        """Run one job to completion and return its result; failures are results, not exceptions,
        except DeviceDisconnectedError and KeyboardInterrupt."""

    def cancel(self) -> None:
        """Stop the job in flight (called from the controller on Ctrl-C)."""

    def close(self) -> None:
        pass


class DeviceKind(ABC):
    """A pluggable kind of device: lists attached devices and opens one."""

    name: ClassVar[str]

    @abstractmethod
    def discover(self, ctx: DeviceContext) -> list[DeviceInfo]:
        ...

    @abstractmethod
    def open(self, info: DeviceInfo, ctx: DeviceContext) -> Device:
        ...


# The registry: kind name -> "module:class". Imported lazily so a kind's dependencies load only
# when it is used.
KINDS: dict[str, str] = {
    "host": "harness.devices.host:HostKind",
    "android": "harness.devices.android:AndroidKind",
    "ios": "harness.devices.ios:IOSKind",
    "aihub": "harness.devices.aihub:AiHubKind",  # Qualcomm AI Hub's cloud phones (qai-hub client)
}


def get_kind(name: str) -> DeviceKind:
    if name not in KINDS:
        raise UnknownDeviceError(f"unknown device kind {name!r}; known kinds: {', '.join(KINDS)} "
                                 "(ids look like host, android:SERIAL, ios:UDID, aihub:DEVICE NAME)")
    module, cls = KINDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def discover_all(ctx: DeviceContext, kinds: list[str] | None = None) -> list[DeviceInfo]:
    infos: list[DeviceInfo] = []
    for name in kinds or list(KINDS):
        infos.extend(get_kind(name).discover(ctx))
    return infos


def expand_device_ids(ids: list[str], farm: dict[str, Any] | None) -> list[str]:
    """Apply farm.yaml's `aliases: {NAME: ID}` and `pools: {NAME: [ID or alias, ...]}`:
    `--device pool:flagship` names every device of the pool, `--device pixel8` its alias's id."""
    farm = farm or {}
    aliases = farm.get("aliases") or {}
    pools = farm.get("pools") or {}
    if not isinstance(aliases, dict) or not isinstance(pools, dict):
        raise UnknownDeviceError("farm.yaml: aliases and pools must be mappings (aliases: {pixel8: android:SERIAL}, "
                                 "pools: {flagship: [pixel8, ios:UDID]})")
    out: list[str] = []
    for dev_id in ids:
        if dev_id.startswith("pool:"):
            name = dev_id[5:]
            if name not in pools:
                known = ", ".join(pools) or "none (add `pools:` to farm.yaml)"
                raise UnknownDeviceError(f"unknown device pool {name!r}; pools in the farm file: {known}")
            members = pools[name] or []
            out.extend(str(aliases.get(m, m)) for m in members)
        else:
            out.append(str(aliases.get(dev_id, dev_id)))
    return list(dict.fromkeys(out))


def resolve_devices(ids: list[str], ctx: DeviceContext) -> list[DeviceInfo]:
    """Device ids from a suite or the command line -> the devices they name, checked to exist."""
    out: list[DeviceInfo] = []
    expanded = expand_device_ids(ids, getattr(ctx, "farm", None))
    ctx.extra["device_ids"] = expanded  # kinds may act on the ids named (android: `adb connect HOST:PORT`)
    for dev_id in expanded:
        kind_name, _, serial = dev_id.partition(":")
        kind = get_kind(kind_name)
        found = kind.discover(ctx)
        notes = "".join(f"; {n.hint or n.state}" for n in found if n.note)
        found = [d for d in found if not d.note]
        if not serial:
            # every device of the kind, ready or not: the runner fails a not-ready device's jobs with
            # its state and what to do, so that a phone that is offline is never skipped silently
            if not found:
                raise UnknownDeviceError(f"no {kind_name} device attached{notes}")
            out.extend(d for d in found if d.id not in {o.id for o in out})
            continue
        match = [d for d in found if d.id == dev_id]
        if not match and hasattr(kind, "select"):  # a kind that also picks a device by a property (AI Hub: chipset)
            match = kind.select(serial, found)
        if not match:
            known = ", ".join(d.id for d in found) or "none"
            raise UnknownDeviceError(f"device {dev_id!r} not found: no such {kind_name} device is attached "
                                     f"(attached {kind_name} devices: {known}){notes}. "
                                     "Run `harness devices` to list them")
        info = match[0]
        if not info.ready:
            raise UnknownDeviceError(f"device {dev_id!r} is {info.state}: {info.hint}")
        if info.id not in {o.id for o in out}:
            out.append(info)
    return out


def open_device(info: DeviceInfo, ctx: DeviceContext) -> Device:
    return get_kind(info.kind).open(info, ctx)
