"""iPhones and iPads over usbmux with pymobiledevice3 11.x (asyncio), driving the Swift agent app.

An iPhone runs no shell: the harness installs its agent app (device_agents/ios, built and signed on
a Mac) and talks to it through files in the app's container.

Discovery: every usbmuxd the controller can reach (the local one; a remote one through
`USBMUXD_SOCKET_ADDRESS=host:port`; or the `usbmux:` list of farm.yaml's `ios:` section) lists its
devices; each is opened with `create_using_usbmux(autopair=False)`, so nothing waits on a trust
dialog. A device that is not ready shows as a state with the fix: `unpaired`, `developer-mode-off`,
`locked`, `no-developer-image`, `no-tunnel` (iOS 17+ reaches developer services only through a
tunnel: `pymobiledevice3 remote tunneld`), `unresponsive`.

A job on a phone:
1. install the agent IPA (`--ios-agent PATH` or farm `ios: {agent: PATH}`) through
   InstallationProxyService when its sha256 differs from the one recorded in the container;
2. push the variant's .mlpackage (from `harness.export.ensure_artifact(fmt="coreml")`, or the host
   directory named by `options.extra.mlpackage`) into `Documents/models/<sha16>.mlpackage` through
   house_arrest (VendContainer), skipped when the `.sha256` marker next to it holds the same hash;
3. write `Documents/jobs/<job id>/job.json` (the JobSpec with runtime `coreml`, the compute units
   and the container-relative model paths);
4. launch the app through DvtProvider + ProcessControl.launch with `--job-id <id>` (and
   HARNESS_JOB_ID); on iOS 17+ over the tunneld RSD;
5. poll for the DONE marker; the app's `status.json` heartbeats feed the progress bar; a heartbeat
   that stops changing for `heartbeat_timeout_s` gets the app killed (a `timeout` failure), and an
   app that is gone without DONE is a `crash`;
6. pull `result.json` (and `status.json`) into the job's workdir, validate it with
   `harness.protocol.parse_result`, remove the job's directory from the phone.

A connection that drops raises DeviceDisconnectedError (the runner retries the job).

All pymobiledevice3 calls go through one small adapter (`Pmd3Services`): its attributes are
pymobiledevice3's own functions and classes. `HARNESS_IOS_SERVICES=module:factory` swaps in
another adapter with the same signatures (the tests' fake, tests/fakes/ios_fake.py).

Runtime options (`options.extra` of a suite): `mlpackage` (host .mlpackage to run instead of
exporting the variant), `mlpackages` ({text_encoder, unet, vae_decoder}: host .mlpackage dirs for
e2e), `compute_units` (or `options.compute_units`: cpuAndGPU (default, the paper's GPU rows) | all |
cpuOnly | cpuAndNeuralEngine).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import os
import plistlib
import re
import time
import traceback
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, AsyncIterator

from harness import standin
from harness.devices.base import (
    Device, DeviceContext, DeviceDisconnectedError, DeviceError, DeviceInfo, DeviceKind,
    DeviceUnavailableError, JobFailure, Artifact, ProgressFn, export_failure, memoized_artifact, positive_seconds,
)
from harness.protocol import JobResult, JobSpec, ProtocolError, error_tail, parse_result, write_json_atomic

SERVICES_ENV = "HARNESS_IOS_SERVICES"
PMD3_VERSION = "11.45.0"  # what the project installs (`make setup`); any 11.x has the APIs used here
DEFAULT_BUNDLE_ID = "org.harness.HarnessAgent"  # device_agents/ios/project.yml
DEFAULT_TUNNELD = "127.0.0.1:49151"
COMPUTE_UNITS = ("cpuAndGPU", "all", "cpuOnly", "cpuAndNeuralEngine")
DEFAULT_COMPUTE_UNITS = "cpuAndGPU"
E2E_COMPONENTS = ("text_encoder", "unet", "vae_decoder")

# The app's container as house_arrest vends it (AFC paths) and as the app sees it (relative paths).
JOBS_DIR = "/Documents/jobs"
MODELS_DIR = "/Documents/models"
AGENT_MARK = "/Documents/harness/agent.sha256"
STATUS, RESULT, DONE = "status.json", "result.json", "DONE"
STDERR = "stderr.txt"  # the agent app's stderr (it redirects it there when a job starts)

INSTALL_HINT = ("pymobiledevice3 is not installed: `make setup` installs it (pip install --no-deps "
                f"pymobiledevice3=={PMD3_VERSION} plus the `ios` extra; README 'iOS' says why --no-deps)")
PAIR_HINT = ("not paired with this computer: unlock the phone, then run `pymobiledevice3 lockdown pair` and tap "
             "Trust (enter the passcode); the harness never starts pairing by itself")
LOCKED_HINT = ("the phone is locked: unlock it and keep it unlocked during runs (Settings > Display & Brightness > "
               "Auto-Lock > Never)")
DEVMODE_HINT = ("Developer Mode is off: Settings > Privacy & Security > Developer Mode > On (the phone restarts; "
                "unlock it and confirm), or `pymobiledevice3 amfi enable-developer-mode`")
DDI_HINT = "no developer disk image is mounted: run `pymobiledevice3 mounter auto-mount` (needs Developer Mode)"
TUNNEL_HINT = ("iOS 17+ reaches developer services (app launch) only through a tunnel: run `sudo pymobiledevice3 "
               "remote tunneld` on the host the phone is plugged into (a remote one: `tunneld: HOST:PORT` under "
               "`ios:` in farm.yaml)")
AGENT_HINT = ("build and sign the agent app on a Mac (`make ios-agent`, README 'iOS') and pass "
              "--ios-agent build/ios/HarnessAgent.ipa (or `agent:` under `ios:` in farm.yaml)")

# Apple SoC names by chip id (pymobiledevice3's device table gives the id); others print as the
# internal name, e.g. "Apple T8150".
CHIP_NAMES = {
    0x8010: "A10 Fusion", 0x8011: "A10X Fusion", 0x8015: "A11 Bionic", 0x8020: "A12 Bionic",
    0x8027: "A12X/A12Z Bionic", 0x8030: "A13 Bionic", 0x8101: "A14 Bionic", 0x8103: "M1", 0x8110: "A15 Bionic",
    0x8112: "M2", 0x8120: "A16 Bionic", 0x8122: "M3", 0x8130: "A17 Pro", 0x8132: "M4", 0x8140: "A18",
}

SETTINGS_KEYS = ("usbmux", "tunneld", "agent", "bundle_id", "poll_s", "heartbeat_s", "heartbeat_timeout_s",
                 "launch_timeout_s", "probe_timeout_s", "op_timeout_s")
OPTION_KEYS = ("mlpackage", "mlpackages", "compute_units")
# The protocol version the agent app speaks (Protocol.swift's schemaVersion): its job.json is written at it
# (the JobSpec is the same in versions 1 and 2) and its result.json is upgraded as it is parsed.
AGENT_SCHEMA_VERSION = 1


class IOSConfigError(DeviceError):
    """Bad iOS settings (farm.yaml `ios:`, --ios-agent, options.extra); the message names the fix."""


# ------------------------------------------------------------------------------------ the service layer

class Pmd3Services:
    """The only place that touches pymobiledevice3 (11.x). Each attribute is pymobiledevice3's own
    function or class, so the code above reads like pymobiledevice3 usage and a fake with the same
    signatures can stand in (tests/test_ios.py compares the signatures with the installed package)."""

    name = "pymobiledevice3"

    def __init__(self) -> None:
        from importlib.metadata import version

        from pymobiledevice3 import exceptions, usbmux
        from pymobiledevice3.dtx import DTXNsError
        from pymobiledevice3.lockdown import create_using_usbmux
        from pymobiledevice3.services.dvt.instruments.dvt_provider import DvtProvider
        from pymobiledevice3.services.dvt.instruments.process_control import ProcessControl
        from pymobiledevice3.services.house_arrest import HouseArrestService
        from pymobiledevice3.services.installation_proxy import InstallationProxyService
        from pymobiledevice3.services.mobile_image_mounter import MobileImageMounterService, image_type_for_device
        from pymobiledevice3.tunneld.api import get_tunneld_device_by_udid

        self.version = version("pymobiledevice3")
        if not self.version.startswith("11."):
            raise IOSConfigError(f"pymobiledevice3 {self.version} is installed; the harness is written against 11.x "
                                 f"(`pip install --no-deps pymobiledevice3=={PMD3_VERSION}`)")
        self.exc = exceptions
        self.DTXNsError = DTXNsError
        self.list_devices = usbmux.list_devices
        self.create_using_usbmux = create_using_usbmux
        self.get_tunneld_device_by_udid = get_tunneld_device_by_udid
        self.InstallationProxyService = InstallationProxyService
        self.HouseArrestService = HouseArrestService
        self.MobileImageMounterService = MobileImageMounterService
        self.image_type_for_device = image_type_for_device
        self.DvtProvider = DvtProvider
        self.ProcessControl = ProcessControl


def load_services() -> Any:
    """The service layer: $HARNESS_IOS_SERVICES (`module:factory`) or pymobiledevice3. ImportError
    when pymobiledevice3 is missing."""
    spec = os.environ.get(SERVICES_ENV)
    if spec:
        module, _, attr = spec.partition(":")
        try:
            return getattr(importlib.import_module(module), attr or "Services")()
        except (ImportError, AttributeError) as exc:
            raise IOSConfigError(f"{SERVICES_ENV}={spec!r} does not name a factory (module:callable): {exc}") from None
    return Pmd3Services()


# ------------------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class IOSSettings:
    """Per-device settings: defaults < farm.yaml `ios:` < `devices: {UDID: ...}` < --ios-agent."""

    usbmux: tuple[str | None, ...] = (None,)  # None: $USBMUXD_SOCKET_ADDRESS, else the platform's usbmuxd
    tunneld: str = DEFAULT_TUNNELD
    agent: str | None = None  # the agent IPA on this host
    bundle_id: str | None = None  # None: the IPA's CFBundleIdentifier, else DEFAULT_BUNDLE_ID
    poll_s: float = 1.0
    heartbeat_s: float = 1.0  # how often the app writes status.json
    heartbeat_timeout_s: float = 30.0  # an unchanged status.json for this long: the app hangs, kill it
    launch_timeout_s: float = 60.0  # no status.json this long after launch: kill it
    probe_timeout_s: float = 10.0  # each discovery probe
    op_timeout_s: float = 60.0  # each AFC/DVT call (pushes get more per MB)


def _farm(ctx: DeviceContext) -> dict[str, Any]:
    farm = getattr(ctx, "farm", None) or {}
    if not isinstance(farm, dict):
        raise IOSConfigError("the farm config must be a YAML mapping (ios:, devices:)")
    return farm


def _merge(settings: IOSSettings, section: str, data: Any, base_dir: Path | None, strict: bool) -> IOSSettings:
    if data is None:
        return settings
    if not isinstance(data, dict):
        raise IOSConfigError(f"{section} must be a mapping with keys {', '.join(SETTINGS_KEYS)}")
    if strict:
        unknown = sorted(set(data) - set(SETTINGS_KEYS))
        if unknown:
            raise IOSConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(SETTINGS_KEYS)}")
    values = {k: v for k, v in data.items() if k in SETTINGS_KEYS}
    out = settings
    if "usbmux" in values:
        raw = values["usbmux"]
        items = raw if isinstance(raw, list) else [raw]
        addrs: list[str | None] = []
        for item in items:
            if item in (None, "", "local"):
                addrs.append(None)
            elif isinstance(item, str) and (re.fullmatch(r"[^:\s/]+:\d{1,5}", item) or item.startswith("/")):
                addrs.append(item)
            else:
                raise IOSConfigError(f"{section}.usbmux: {item!r} is not HOST:PORT, a socket path or 'local'")
        out = replace(out, usbmux=tuple(addrs) or (None,))
    if "tunneld" in values:
        if not isinstance(values["tunneld"], str) or not re.fullmatch(r"[^:\s]+:\d{1,5}", values["tunneld"]):
            raise IOSConfigError(f"{section}.tunneld: {values['tunneld']!r} is not HOST:PORT (default {DEFAULT_TUNNELD})")
        out = replace(out, tunneld=values["tunneld"])
    if values.get("agent"):
        path = Path(str(values["agent"])).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        out = replace(out, agent=str(path))
    if values.get("bundle_id"):
        out = replace(out, bundle_id=str(values["bundle_id"]))
    for key in ("poll_s", "heartbeat_s", "heartbeat_timeout_s", "launch_timeout_s", "probe_timeout_s", "op_timeout_s"):
        if key in values:
            out = replace(out, **{key: positive_seconds(f"{section}.{key}", values[key], IOSConfigError)})
    return out


def settings_for(ctx: DeviceContext, udid: str | None = None) -> IOSSettings:
    farm = _farm(ctx)
    farm_path = getattr(ctx, "farm_path", None)
    base_dir = Path(farm_path).parent if farm_path else None
    settings = _merge(IOSSettings(), "farm ios", farm.get("ios"), base_dir, strict=True)
    devices = farm.get("devices") or {}
    if udid is not None and isinstance(devices, dict) and isinstance(devices.get(udid), dict):
        settings = _merge(settings, f"farm devices.{udid}", devices[udid], base_dir, strict=False)
    if ctx.ios_agent:
        settings = replace(settings, agent=str(Path(ctx.ios_agent).expanduser()))
    return settings


# ------------------------------------------------------------------------------------ pure helpers

def ipa_info(path: str | os.PathLike) -> dict[str, Any]:
    """CFBundleIdentifier, CFBundleVersion and CFBundleShortVersionString of an .ipa (Payload/*.app/Info.plist)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if re.fullmatch(r"Payload/[^/]+\.app/Info\.plist", n)]
            if not names:
                raise IOSConfigError(f"{path}: not an iOS app archive (no Payload/NAME.app/Info.plist); {AGENT_HINT}")
            info = plistlib.loads(zf.read(names[0]))
    except (OSError, zipfile.BadZipFile, plistlib.InvalidFileException) as exc:
        raise IOSConfigError(f"{path}: cannot read the agent IPA ({exc}); {AGENT_HINT}") from None
    if not info.get("CFBundleIdentifier"):
        raise IOSConfigError(f"{path}: Info.plist has no CFBundleIdentifier")
    return {k: info.get(k) for k in ("CFBundleIdentifier", "CFBundleVersion", "CFBundleShortVersionString")}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(path: Path) -> str:
    """The hash of a file, or of a directory tree: SHA-256 over one "relative/path\\0<file sha256>\\n"
    line per file, sorted by path (the agent app computes the same: JobRunner.swift treeSHA256)."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for rel, p in sorted((q.relative_to(path).as_posix(), q) for q in path.rglob("*") if q.is_file()):
        h.update(f"{rel}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def tree_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(q.stat().st_size for q in path.rglob("*") if q.is_file())


def compute_units_of(spec: JobSpec) -> str:
    units = spec.options.extra.get("compute_units") or spec.options.compute_units or DEFAULT_COMPUTE_UNITS
    if units not in COMPUTE_UNITS:
        raise JobFailure("input", f"compute units {units!r} are not Core ML's; use one of {', '.join(COMPUTE_UNITS)}")
    return str(units)


def check_runtime(spec: JobSpec) -> None:
    """iOS runs Core ML only (harness.runtimes); `torch` (the suite default, which phones cannot run)
    means Core ML."""
    from harness.runtimes import UnknownRuntimeError, get_runtime

    try:
        get_runtime(spec.options.runtime).on("ios")
    except UnknownRuntimeError as exc:
        raise JobFailure("input", f"{exc} (or leave the suite's torch, which means Core ML on a phone)") from None


def device_spec(spec: JobSpec, model_paths: dict[str, str], heartbeat_s: float,
                token_ids: list[list[int]] | None = None) -> JobSpec:
    """The JobSpec the agent app reads: runtime coreml, its compute units, container-relative model
    paths (`artifact` is the UNet), the heartbeat interval and, for e2e, the prompt's token ids."""
    extra = {k: v for k, v in spec.options.extra.items() if k not in ("mlpackage", "mlpackages")}
    extra["models"] = dict(model_paths)
    extra["heartbeat_s"] = heartbeat_s
    if token_ids is not None:
        extra["token_ids"] = token_ids
    options = spec.options.model_copy(update={"runtime": "coreml", "compute_units": compute_units_of(spec),
                                              "extra": extra})
    return spec.model_copy(update={"options": options, "artifact": model_paths.get("unet"),
                                   "schema_version": AGENT_SCHEMA_VERSION})


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:120] or "_"


def _os_name(values: dict[str, Any]) -> str:
    return "iPadOS" if values.get("DeviceClass") == "iPad" else "iOS"


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3]) or (0,)


# ------------------------------------------------------------------------------------ the kind

class IOSKind(DeviceKind):
    name = "ios"

    def discover(self, ctx: DeviceContext) -> list[DeviceInfo]:
        settings = settings_for(ctx)
        try:
            pmd = load_services()
        except ImportError:
            return [DeviceInfo(id="ios", kind="ios", state="no-pymobiledevice3", name="iOS devices", hint=INSTALL_HINT,
                               note=True)]
        return asyncio.run(self._discover(ctx, pmd, settings))

    async def _discover(self, ctx: DeviceContext, pmd: Any, settings: IOSSettings) -> list[DeviceInfo]:
        infos: list[DeviceInfo] = []
        seen: set[str] = set()
        for addr in settings.usbmux:
            label = addr or os.environ.get("USBMUXD_SOCKET_ADDRESS") or "local"
            try:
                devices = await asyncio.wait_for(pmd.list_devices(usbmux_address=addr), settings.probe_timeout_s)
            except (pmd.exc.MuxException, OSError, asyncio.TimeoutError, EOFError) as exc:
                infos.append(DeviceInfo(
                    id=f"ios@{label}", kind="ios", state="no-usbmuxd", name=f"usbmuxd {label}", note=True,
                    hint=(f"no usbmuxd at {label} ({type(exc).__name__}: {exc}): on Linux `apt install usbmuxd` "
                          "and plug a phone in (macOS has it built in); a farm host's: expose it as TCP there "
                          "(`socat TCP-LISTEN:27015,reuseaddr,fork UNIX-CONNECT:/var/run/usbmuxd`) and set "
                          "USBMUXD_SOCKET_ADDRESS=HOST:27015 or `usbmux: [HOST:27015]` under `ios:` in farm.yaml"),
                    extra={"usbmux": label}))
                continue
            best: dict[str, Any] = {}
            for dev in devices:  # one entry per phone, USB preferred over Wi-Fi
                key = dev.serial.replace("-", "")
                if key not in best or (dev.is_usb and not best[key].is_usb):
                    best[key] = dev
            for key, dev in best.items():
                if key in seen:
                    continue  # the same phone through two usbmuxds: the first one is used
                seen.add(key)
                infos.append(await self._describe(pmd, settings_for(ctx, dev.serial), addr, label, dev))
        return infos

    async def _describe(self, pmd: Any, s: IOSSettings, addr: str | None, label: str, mux: Any) -> DeviceInfo:
        info = DeviceInfo(id=f"ios:{mux.serial}", kind="ios", state="ready", name=mux.serial,
                          extra={"usbmux": label, "usbmux_address": addr, "serial": mux.serial,
                                 "connection_type": mux.connection_type})
        try:
            lockdown = await asyncio.wait_for(
                pmd.create_using_usbmux(serial=mux.serial, autopair=False, connection_type=mux.connection_type,
                                        usbmux_address=addr), s.probe_timeout_s)
        except pmd.exc.PasswordRequiredError:
            info.state, info.hint = "locked", LOCKED_HINT
            return info
        except (pmd.exc.PairingError, pmd.exc.NotTrustedError):
            info.state, info.hint = "unpaired", PAIR_HINT
            return info
        except (pmd.exc.PyMobileDevice3Exception, OSError, asyncio.TimeoutError, EOFError) as exc:
            info.state = "unresponsive"
            info.hint = (f"usbmuxd lists the phone but lockdownd did not answer ({type(exc).__name__}: {exc}): "
                         "unplug and replug it; if that does not help, restart it")
            return info
        try:
            await self._fill(pmd, s, lockdown, info)
        except (pmd.exc.PyMobileDevice3Exception, OSError, asyncio.TimeoutError, EOFError) as exc:
            if isinstance(exc, pmd.exc.PasswordRequiredError):
                info.state, info.hint = "locked", LOCKED_HINT
            else:
                info.state = "unresponsive"
                info.hint = f"the phone stopped answering while being probed ({type(exc).__name__}: {exc}): replug it"
        finally:
            await lockdown.close()
        return info

    async def _fill(self, pmd: Any, s: IOSSettings, lockdown: Any, info: DeviceInfo) -> None:
        values = lockdown.all_values or {}
        info.stand_in = standin.from_ios_lockdown(values)  # the pymobiledevice3 stand-in says so
        udid = values.get("UniqueDeviceID") or lockdown.udid or info.name
        version = lockdown.product_version
        chip_id = lockdown.chip_id
        chip = CHIP_NAMES.get(chip_id, f"T{chip_id:04X}") if chip_id else ""
        info.id = f"ios:{udid}"
        info.model = lockdown.product_type or ""
        info.name = lockdown.display_name or values.get("DeviceName") or info.model
        info.soc = f"Apple {chip}" if chip else ""
        info.gpu = f"Apple {chip.split()[0]} GPU" if chip else ""
        build = values.get("BuildVersion")
        info.os_version = f"{_os_name(values)} {version}" + (f" ({build})" if build else "")
        info.extra.update({"udid": udid, "product_type": lockdown.product_type, "hardware_model": lockdown.hardware_model,
                           "chip_id": f"0x{chip_id:04X}" if chip_id else None, "device_name": values.get("DeviceName"),
                           "device_class": values.get("DeviceClass"), "paired": bool(lockdown.paired),
                           "product_version": version})
        if not lockdown.paired:
            info.state, info.hint = "unpaired", PAIR_HINT
            return
        if lockdown.has_developer_mode:
            dev_mode = await asyncio.wait_for(lockdown.get_developer_mode_status(), s.probe_timeout_s)
            info.extra["developer_mode"] = dev_mode
            if not dev_mode:
                info.state, info.hint = "developer-mode-off", DEVMODE_HINT
                return
        bundle = s.bundle_id or (ipa_info(s.agent)["CFBundleIdentifier"] if s.agent and Path(s.agent).is_file()
                                 else DEFAULT_BUNDLE_ID)
        async with pmd.InstallationProxyService(lockdown) as ip:
            apps = await asyncio.wait_for(ip.get_apps(application_type="User", bundle_identifiers=[bundle]),
                                          s.probe_timeout_s)
        info.extra["agent_bundle_id"] = bundle
        info.extra["agent_installed"] = bundle in apps
        if bundle in apps:
            info.extra["agent_version"] = apps[bundle].get("CFBundleVersion")
        async with pmd.MobileImageMounterService(lockdown=lockdown) as mounter:
            mounted = await asyncio.wait_for(mounter.is_image_mounted(pmd.image_type_for_device(lockdown)),
                                             s.probe_timeout_s)
        info.extra["developer_image_mounted"] = mounted
        if not mounted:
            info.state, info.hint = "no-developer-image", DDI_HINT
            return
        if _version_tuple(version) >= (17,):
            host, _, port = s.tunneld.rpartition(":")
            try:
                rsd = await asyncio.wait_for(pmd.get_tunneld_device_by_udid(udid, tunneld_address=(host, int(port))),
                                             s.probe_timeout_s)
            except (pmd.exc.TunneldConnectionError, OSError, asyncio.TimeoutError):
                info.state, info.hint = "no-tunnel", f"no tunneld at {s.tunneld}. {TUNNEL_HINT}"
                return
            if rsd is None:
                info.state = "no-tunnel"
                info.hint = (f"tunneld at {s.tunneld} has no tunnel for {udid}: replug the phone (unlocked) and check "
                             "`pymobiledevice3 remote browse`")
                return
            info.extra["tunnel"] = s.tunneld
            await rsd.close()

    def open(self, info: DeviceInfo, ctx: DeviceContext) -> Device:
        return IOSDevice(info, ctx)


# ------------------------------------------------------------------------------------ the device

class _Artifact(Artifact):
    """An .mlpackage folder (source "export" or "path") and where it goes on the phone."""

    @property
    def remote(self) -> str:  # AFC path
        return f"{MODELS_DIR}/{self.sha256[:16]}.mlpackage"

    @property
    def container_path(self) -> str:  # what the app resolves against its home directory
        return self.remote.lstrip("/")


@dataclass
class _Session:
    lockdown: Any
    dvt_provider: Any  # the lockdown (iOS < 17) or the tunnel's RSD (iOS 17+)


class IOSDevice(Device):
    kind = "ios"

    def __init__(self, info: DeviceInfo, ctx: DeviceContext):
        super().__init__(info, ctx)
        self.udid = info.id.split(":", 1)[1]
        self.serial = str(info.extra.get("serial") or self.udid)
        self.settings = settings_for(ctx, self.udid)
        self.pmd = load_services()
        self.bundle_id = self.settings.bundle_id or DEFAULT_BUNDLE_ID
        if not self.settings.bundle_id and self.settings.agent:
            try:
                self.bundle_id = ipa_info(self.settings.agent)["CFBundleIdentifier"]
            except IOSConfigError:
                pass  # reported by the agent install, as the job's failure
        self.bytes_pushed = 0
        self.files_pushed = 0
        self.prepare_note: str | None = None
        self.agent_report: dict[str, Any] | None = None
        self._agent_checked = False
        self._artifacts: dict[str, _Artifact | JobFailure] = {}
        self._in_flight = False  # the app was launched and not yet seen to end: cancel() kills it

    # ---- plumbing

    def _is_drop(self, exc: BaseException) -> bool:
        e = self.pmd.exc
        if isinstance(exc, e.AfcException):
            return False
        return isinstance(exc, (e.ConnectionTerminatedError, e.MuxException, e.DeviceNotFoundError,
                                e.NoDeviceConnectedError, ConnectionError, EOFError, asyncio.IncompleteReadError,
                                OSError))

    def _as_device_error(self, exc: BaseException, doing: str) -> DeviceError:
        e = self.pmd.exc
        if isinstance(exc, e.PasswordRequiredError):
            return DeviceUnavailableError(f"{self.id} is locked ({doing}): {LOCKED_HINT}")
        if isinstance(exc, e.NotPairedError):
            return DeviceUnavailableError(f"{self.id} is not paired ({doing}): {PAIR_HINT}")
        msg = str(exc).strip() or type(exc).__name__
        return DeviceDisconnectedError(f"the connection to {self.id} closed while {doing} ({type(exc).__name__}: {msg}): "
                                       "the phone dropped; replug it (a locked phone also ends sessions)")

    async def _op(self, doing: str, awaitable: Any, timeout: float | None = None) -> Any:
        """One device call with a timeout; drops become DeviceDisconnectedError."""
        try:
            return await asyncio.wait_for(awaitable, timeout or self.settings.op_timeout_s)
        except asyncio.TimeoutError:
            raise DeviceDisconnectedError(f"{self.id} did not answer within {timeout or self.settings.op_timeout_s:.0f} s "
                                          f"while {doing}; it may have dropped") from None
        except (self.pmd.exc.PasswordRequiredError, self.pmd.exc.NotPairedError) as exc:
            raise self._as_device_error(exc, doing) from exc
        except Exception as exc:  # noqa: BLE001 - classified below
            if self._is_drop(exc):
                raise self._as_device_error(exc, doing) from exc
            raise

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[_Session]:
        s = self.settings
        addr = self.info.extra.get("usbmux_address")
        lockdown = await self._op("connecting to lockdownd", self.pmd.create_using_usbmux(
            serial=self.serial, autopair=False, connection_type=self.info.extra.get("connection_type"),
            usbmux_address=addr))
        rsd = None
        try:
            if not lockdown.paired:
                raise DeviceUnavailableError(f"{self.id} is not paired: {PAIR_HINT}")
            if _version_tuple(lockdown.product_version) >= (17,):
                host, _, port = s.tunneld.rpartition(":")
                try:
                    rsd = await self._op("asking tunneld for the phone's tunnel", self.pmd.get_tunneld_device_by_udid(
                        self.udid, tunneld_address=(host, int(port))))
                except self.pmd.exc.TunneldConnectionError:
                    raise DeviceUnavailableError(f"{self.id}: no tunneld at {s.tunneld}. {TUNNEL_HINT}") from None
                except DeviceDisconnectedError:
                    raise DeviceUnavailableError(f"{self.id}: no tunneld at {s.tunneld}. {TUNNEL_HINT}") from None
                if rsd is None:
                    raise DeviceUnavailableError(f"{self.id}: tunneld at {s.tunneld} has no tunnel for it; replug the "
                                                 "phone (unlocked). " + TUNNEL_HINT)
            yield _Session(lockdown, rsd or lockdown)
        finally:
            for closable in (rsd, lockdown):
                if closable is not None:
                    with contextlib.suppress(Exception):
                        await closable.close()

    @contextlib.asynccontextmanager
    async def _container(self, lockdown: Any) -> AsyncIterator[Any]:
        try:
            afc = await self._op("opening the agent's container (house_arrest)",
                                 self.pmd.HouseArrestService.create(lockdown, self.bundle_id, documents_only=False))
        except self.pmd.exc.AppNotInstalledError:
            raise JobFailure("input", f"the agent app {self.bundle_id} is not installed on {self.id}; {AGENT_HINT}") from None
        except self.pmd.exc.PyMobileDevice3Exception as exc:
            raise JobFailure("device", f"house_arrest refused the container of {self.bundle_id} on {self.id}: {exc}. "
                              "Only a development-signed app's container can be opened: sign the agent with a "
                              "development profile (README 'iOS')") from None
        async with afc:
            yield afc

    async def _read(self, afc: Any, path: str) -> bytes | None:
        try:
            return await self._op(f"reading {path}", afc.get_file_contents(path))
        except self.pmd.exc.AfcFileNotFoundError:
            return None

    # ---- agent app

    async def _ensure_agent(self, sess: _Session) -> dict[str, Any]:
        """Install the agent IPA unless the container records the same sha256. Returns what was done."""
        s = self.settings
        async with self.pmd.InstallationProxyService(sess.lockdown) as ip:
            apps = await self._op("listing installed apps", ip.get_apps(application_type="User",
                                                                        bundle_identifiers=[self.bundle_id]))
            installed = self.bundle_id in apps
            if not s.agent:
                if not installed:
                    raise JobFailure("input", f"the agent app {self.bundle_id} is not installed on {self.id} and no "
                                      f"IPA was given; {AGENT_HINT}")
                return {"installed": False, "note": "no --ios-agent: using the app already on the phone",
                        "version": apps[self.bundle_id].get("CFBundleVersion")}
            ipa = Path(s.agent)
            if not ipa.is_file():
                raise JobFailure("input", f"--ios-agent {str(ipa)!r} is not a file; {AGENT_HINT}")
            try:
                bundle = ipa_info(ipa)["CFBundleIdentifier"]
            except IOSConfigError as exc:
                raise JobFailure("input", str(exc)) from None
            if bundle != self.bundle_id:
                raise JobFailure("input", f"{ipa} holds {bundle}, but this device is set up for {self.bundle_id} "
                                  "(farm.yaml ios.bundle_id): make them agree")
            sha = file_sha256(ipa)
            if installed:
                async with self._container(sess.lockdown) as afc:
                    mark = await self._read(afc, AGENT_MARK)
                if mark is not None and mark.decode(errors="replace").strip() == sha:
                    return {"installed": False, "sha256": sha}
            try:
                await self._op(f"installing {ipa.name}", ip.install_from_local(ipa),
                               timeout=s.op_timeout_s + ipa.stat().st_size / 2e6)
            except self.pmd.exc.AppInstallError as exc:
                raise JobFailure("device", f"installing {ipa} on {self.id} failed: {exc}. Usual causes: the IPA is "
                                  "not signed for this phone (its UDID must be in the provisioning profile), or the "
                                  "signing certificate is not trusted on it (Settings > General > VPN & Device "
                                  "Management)") from None
        async with self._container(sess.lockdown) as afc:
            await self._op("recording the agent's hash", afc.makedirs(AGENT_MARK.rsplit("/", 1)[0]))
            await self._op("recording the agent's hash", afc.set_file_contents(AGENT_MARK, sha.encode()))
        return {"installed": True, "sha256": sha, "bytes": ipa.stat().st_size}

    # ---- artifacts

    def _artifact(self, spec: JobSpec, component: str) -> _Artifact:
        extra = spec.options.extra
        given = (extra.get("mlpackages") or {}).get(component) if isinstance(extra.get("mlpackages"), dict) else None
        if component == "unet" and not given:
            given = extra.get("mlpackage")
        key = f"path:{given}" if given else f"export:{spec.model.model_dump_json()}:{spec.flags}:{spec.options.dtype}:{component}"
        return memoized_artifact(self._artifacts, key, lambda: self._resolve_artifact(spec, component, given))

    def _resolve_artifact(self, spec: JobSpec, component: str, given: Any) -> _Artifact:
        if given:
            local = Path(str(given)).expanduser()
            if not (local / "Manifest.json").is_file():
                raise JobFailure("input", f"options.extra.mlpackage{'s.' + component if component != 'unet' else ''} "
                                  f"{str(given)!r} is not an .mlpackage directory (no Manifest.json)")
            return _Artifact(local, tree_sha256(local), tree_size(local), "path")
        if component != "unet":
            raise JobFailure("input", f"e2e on iOS needs the {component} as Core ML too, and harness.export builds "
                              "the UNet only: give the three packages with --set options.extra.mlpackages."
                              "{text_encoder,unet,vae_decoder}=PATH (coremltools conversions of the pipeline's "
                              "components, README 'iOS')")
        try:
            from harness.export import ensure_artifact
        except ImportError as exc:
            raise JobFailure("input", f"cannot export variant {spec.variant!r} to Core ML: harness.export is not "
                              f"available ({exc}); give an .mlpackage with --set options.extra.mlpackage=PATH") from None
        from harness.variants import Flags

        try:
            art = ensure_artifact(spec.model, Flags.from_dict(spec.flags), "coreml", dtype=spec.options.dtype,
                                  cache_dir=self.ctx.cache_dir, progress=None, variant=spec.variant)
        except Exception as exc:  # noqa: BLE001 - a converter failure fails this variant only
            raise export_failure(exc, f"variant {spec.variant!r}", "Core ML") from None
        return _Artifact(Path(art.path), str(art.sha256), int(art.size_bytes), "export",
                         dict(getattr(art, "meta", None) or {}))

    def _artifacts_for(self, spec: JobSpec) -> dict[str, _Artifact]:
        components = E2E_COMPONENTS if spec.workload == "e2e" else ("unet",)
        return {c: self._artifact(spec, c) for c in components}

    async def _push_tree(self, afc: Any, local: Path, remote: str, timeout: float) -> int:
        """Push a file or a directory tree to `remote` (the directory's own path), file by file."""
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        total = 0
        made: set[str] = set()
        for path in files:
            target = remote if local.is_file() else f"{remote}/{path.relative_to(local).as_posix()}"
            parent = target.rsplit("/", 1)[0]
            if parent not in made:
                await self._op(f"creating {parent}", afc.makedirs(parent))
                made.add(parent)
            size = path.stat().st_size
            await self._op(f"pushing {path.name}", afc.push(str(path), target, progress_bar=False),
                           timeout=timeout + size / 2e6)
            total += size
        return total

    async def _push_models(self, afc: Any, arts: list[_Artifact], progress: ProgressFn | None) -> dict[str, Any]:
        """Push each .mlpackage whose marker (`<remote>.sha256`) does not hold its hash."""
        report: dict[str, Any] = {"bytes_pushed": 0, "models_pushed": [], "models_skipped": 0}
        unique = {a.remote: a for a in arts}
        for i, art in enumerate(unique.values()):
            if progress:
                progress("push", i, len(unique))
            marker = f"{art.remote}.sha256"
            mark = await self._read(afc, marker)
            if mark is not None and mark.decode(errors="replace").strip() == art.sha256:
                report["models_skipped"] += 1
                continue
            await self._op(f"removing a partial {art.remote}", afc.rm(art.remote, force=True))
            n = await self._push_tree(afc, art.local, art.remote, self.settings.op_timeout_s)
            await self._op(f"writing {marker}", afc.set_file_contents(marker, art.sha256.encode()))
            report["bytes_pushed"] += n
            report["models_pushed"].append(art.remote)
            self.bytes_pushed += n
            self.files_pushed += 1
        return report

    def _token_ids(self, spec: JobSpec) -> list[list[int]]:
        """[unconditional, conditional] ids of the prompt, made here (the phone has no tokenizer)."""
        from harness.models.configs import get_model_config
        from harness.models.pipeline import build_tokenizer, random_token_ids, tokenize
        from harness.workloads.e2e import DEFAULT_PROMPT

        cfg = get_model_config(spec.model.name)
        prompt = spec.workload_args.get("prompt", DEFAULT_PROMPT)
        seed = spec.workload_args.get("seed", spec.model.seed)
        if spec.model.weights:
            ids = tokenize(build_tokenizer(spec.model.weights), cfg, prompt)
        else:
            ids = random_token_ids(cfg, prompt, seed)
        return [[int(t) for t in row] for row in ids.tolist()]

    # ---- Device interface

    def prepare(self, specs: list[JobSpec]) -> None:
        """Install the agent and push every model the jobs need (hash-skipped). Problems are kept for
        run_job, which repeats what it needs and turns them into job failures."""
        arts: list[_Artifact] = []
        for spec in specs:
            try:
                check_runtime(spec)
                arts.extend(self._artifacts_for(spec).values())
            except JobFailure:
                continue

        async def go() -> None:
            async with self._session() as sess:
                self.agent_report = await self._ensure_agent(sess)
                self._agent_checked = True
                async with self._container(sess.lockdown) as afc:
                    await self._push_models(afc, arts, None)

        try:
            asyncio.run(go())
        except (JobFailure, DeviceError) as exc:
            self.prepare_note = f"prepare: {exc}"

    def run_job(self, spec: JobSpec, workdir: Path, progress: ProgressFn | None = None) -> JobResult:
        started = time.time()
        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(workdir / "job.json", spec)
        try:
            return asyncio.run(self._run(spec, workdir, progress, started))
        except DeviceDisconnectedError:
            raise
        except DeviceUnavailableError as exc:
            return JobResult.failure(spec.job_id, "device", str(exc), started_at=started, ended_at=time.time())
        except JobFailure as f:
            return JobResult.failure(spec.job_id, f.kind, f.message, detail=f.detail, transient=f.transient,
                                     started_at=started, ended_at=time.time(),
                                     extra={"push": {"bytes_pushed_total": self.bytes_pushed}})
        except KeyboardInterrupt:
            self.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here fails this job, not the run
            return JobResult.failure(spec.job_id, "internal", f"{type(exc).__name__}: {exc}",
                                     detail=traceback.format_exc()[-4000:], started_at=started, ended_at=time.time())

    async def _run(self, spec: JobSpec, workdir: Path, progress: ProgressFn | None, started: float) -> JobResult:
        check_runtime(spec)
        compute_units_of(spec)
        arts = self._artifacts_for(spec)
        token_ids = self._token_ids(spec) if spec.workload == "e2e" else None
        ignored = sorted(set(spec.options.extra) - set(OPTION_KEYS))
        dspec = device_spec(spec, {c: a.container_path for c, a in arts.items()}, self.settings.heartbeat_s, token_ids)
        job_dir = f"{JOBS_DIR}/{_safe_name(spec.job_id)}"
        async with self._session() as sess:
            agent = self.agent_report if self._agent_checked else await self._ensure_agent(sess)
            self.agent_report, self._agent_checked = agent, True
            async with self._container(sess.lockdown) as afc:
                push = await self._push_models(afc, list(arts.values()), progress)
                # what an earlier, abandoned attempt left (a drop mid-job) goes first
                await self._op("removing old job directories", afc.rm(JOBS_DIR, force=True))
                await self._op(f"creating {job_dir}", afc.makedirs(job_dir))
                text = dspec.model_dump_json(indent=2)
                (workdir / "device").mkdir(exist_ok=True)
                (workdir / "device" / "job.json").write_text(text)  # what the phone read, kept with the result
                await self._op("writing job.json", afc.set_file_contents(f"{job_dir}/job.json", text.encode()))
                outcome = await self._launch_and_wait(sess, afc, spec, job_dir, progress)
                self._in_flight = False
                if progress:
                    progress("pull", 0, 1)
                files = await self._pull(afc, job_dir, workdir / "device")
                await self._op("removing the job's files", afc.rm(job_dir, force=True))
        ended = time.time()
        extra = {"push": {**push, "bytes_pushed_total": self.bytes_pushed}, "agent": agent, "bundle_id": self.bundle_id,
                 "models": {c: {"device_path": a.container_path, "sha256": a.sha256, "size_bytes": a.size_bytes,
                                "source": a.source} for c, a in arts.items()},
                 "compute_units": dspec.options.compute_units, "wait": outcome}
        if ignored:
            extra["ignored_options"] = ignored
        if self.prepare_note:
            extra["prepare_note"] = self.prepare_note
        fail_kw = dict(started_at=started, ended_at=ended, extra={"ios": extra})
        status_text = (files.get(STATUS) or b"").decode(errors="replace")
        stderr_text = (files.get(STDERR) or b"").decode(errors="replace")
        # what the app last said on stderr (error_tail bounds it), else its last heartbeat
        said = stderr_text.strip() and stderr_text or status_text or None
        if outcome["end"] == "timeout":
            return JobResult.failure(spec.job_id, "timeout", outcome["message"], detail=said, **fail_kw)
        if outcome["end"] == "gone" or files.get(RESULT) is None:
            return JobResult.failure(spec.job_id, "crash", "the agent app ended without a result (it crashed, was "
                                     "killed by iOS (memory limit: jetsam), or the phone locked); see the device "
                                     "log: `pymobiledevice3 syslog live` / `pymobiledevice3 crash ls`",
                                     detail=said, **fail_kw)
        text = files[RESULT].decode(errors="replace")
        try:
            result = parse_result(text)
        except ProtocolError as exc:
            return JobResult.failure(spec.job_id, "parse", f"the agent's result.json does not parse: {exc}",
                                     detail=text[:4000] or None, **fail_kw)
        if result.job_id != spec.job_id:
            return JobResult.failure(spec.job_id, "parse", f"result.json belongs to job {result.job_id!r}, not "
                                     f"{spec.job_id!r} (a stale file from another run?)", detail=text[:4000], **fail_kw)
        update: dict[str, Any] = {"extra": {**result.extra, "ios": extra}}
        if result.error is not None and not result.error.detail and stderr_text.strip():
            update["error"] = result.error.model_copy(update={"detail": error_tail(stderr_text)})
        return result.model_copy(update=update)

    async def _launch_and_wait(self, sess: _Session, afc: Any, spec: JobSpec, job_dir: str,
                               progress: ProgressFn | None) -> dict[str, Any]:
        """Launch the app and wait for DONE. Returns {end: done|gone|timeout, message, ...}."""
        pmd = self.pmd
        try:
            async with pmd.DvtProvider(sess.dvt_provider) as dvt, pmd.ProcessControl(dvt) as pc:
                if progress:
                    progress("launch", 0, 1)
                self._in_flight = True
                try:
                    pid = await self._op("launching the agent app", pc.launch(
                        self.bundle_id, arguments=["--job-id", spec.job_id],
                        environment={"HARNESS_JOB_ID": spec.job_id}, kill_existing=True))
                except (pmd.DTXNsError, AssertionError) as exc:
                    text = str(exc)
                    self._in_flight = False
                    if "lock" in text.lower():
                        raise DeviceUnavailableError(f"{self.id} refused to launch the agent: {text}. {LOCKED_HINT}") from None
                    raise JobFailure("device", f"{self.id} refused to launch {self.bundle_id}: {text or 'no pid'}. Is "
                                      "the phone unlocked, and is the developer certificate trusted (Settings > "
                                      "General > VPN & Device Management)?") from None
                return await self._wait(afc, pc, pid, spec, job_dir, progress)
        except (pmd.exc.InvalidServiceError, pmd.exc.StartServiceError, pmd.exc.DeveloperModeIsNotEnabledError) as exc:
            raise DeviceUnavailableError(f"{self.id}: the developer services did not start ({exc}). {DDI_HINT}; "
                                         f"on iOS 17+: {TUNNEL_HINT}") from None

    async def _wait(self, afc: Any, pc: Any, pid: int, spec: JobSpec, job_dir: str,
                    progress: ProgressFn | None) -> dict[str, Any]:
        s = self.settings
        t0 = time.monotonic()
        last_status: bytes | None = None
        last_change = t0
        beats = 0
        while True:
            now = time.monotonic()
            if await self._op("polling for DONE", afc.exists(f"{job_dir}/{DONE}")):
                return {"end": "done", "pid": pid, "heartbeats": beats, "wait_s": round(now - t0, 3)}
            status = await self._read(afc, f"{job_dir}/{STATUS}")
            if status is not None and status != last_status:
                last_status, last_change = status, now
                beats += 1
                if progress:
                    try:
                        doc = json.loads(status)
                        progress(str(doc.get("phase", "run")), int(doc.get("done", 0)), int(doc.get("total", 0)))
                    except (ValueError, TypeError, AttributeError):
                        pass
            running = await self._op("checking the agent's process",
                                      pc.process_identifier_for_bundle_identifier(self.bundle_id))
            if not running:
                if await self._op("polling for DONE", afc.exists(f"{job_dir}/{DONE}")):
                    return {"end": "done", "pid": pid, "heartbeats": beats, "wait_s": round(now - t0, 3)}
                return {"end": "gone", "pid": pid, "heartbeats": beats, "wait_s": round(now - t0, 3)}
            stale_after = s.heartbeat_timeout_s if last_status is not None else s.launch_timeout_s
            reason = None
            if now - t0 > spec.measure.timeout_seconds:
                reason = (f"the job ran past its timeout of {spec.measure.timeout_seconds:.0f} s; the agent app was "
                          "killed. Raise measure.timeout_seconds or lower iterations")
            elif now - last_change > stale_after:
                reason = (f"the agent app's heartbeat (status.json) did not change for {stale_after:.0f} s: it hangs, "
                          "or iOS suspended it (phone locked, app sent to the background); it was killed. Keep the "
                          "phone unlocked with the agent in front")
            if reason:
                with contextlib.suppress(DeviceError, self.pmd.exc.PyMobileDevice3Exception):
                    await self._op("killing the agent app", pc.kill(running))
                return {"end": "timeout", "message": reason, "pid": pid, "heartbeats": beats,
                        "wait_s": round(now - t0, 3)}
            await asyncio.sleep(s.poll_s)

    async def _pull(self, afc: Any, job_dir: str, local_dir: Path) -> dict[str, bytes | None]:
        local_dir.mkdir(parents=True, exist_ok=True)
        files: dict[str, bytes | None] = {}
        for name in (STATUS, RESULT, STDERR):
            data = await self._read(afc, f"{job_dir}/{name}")
            files[name] = data
            if data is not None:
                (local_dir / name).write_bytes(data)
        return files

    def cancel(self) -> None:
        """Kill the agent app (a fresh connection: the job's own loop is gone when this runs)."""
        if not self._in_flight:
            return
        self._in_flight = False

        async def kill() -> None:
            async with self._session() as sess:
                async with self.pmd.DvtProvider(sess.dvt_provider) as dvt, self.pmd.ProcessControl(dvt) as pc:
                    pid = await pc.process_identifier_for_bundle_identifier(self.bundle_id)
                    if pid:
                        await pc.kill(pid)

        with contextlib.suppress(Exception):
            asyncio.run(asyncio.wait_for(kill(), 15))
