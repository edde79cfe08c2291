"""A fake of pymobiledevice3 11.x at its service boundary, with emulated iPhones and agent app.

`harness.devices.ios` reaches pymobiledevice3 only through one adapter (`Pmd3Services`). This
module's `FakeServices` has the same attributes with the same signatures (tests/test_ios.py checks
them against the installed pymobiledevice3 with `inspect.signature`) and raises pymobiledevice3's
own exceptions, so the harness runs unchanged against it:

    HARNESS_IOS_SERVICES=tests.fakes.ios_fake:FakeServices HARNESS_IOS_FAKE=world.json harness ...

The world file (JSON, `write_world`) names each usbmuxd's devices and the fake root directory:

    {"root": DIR, "tunneld": true, "app": "mirror" | "host", "heartbeat_s": 0.1,
     "usbmux": {"local": [DEVICE, ...], "10.0.0.5:27015": [...]},   # "local": the default usbmuxd
    }
    DEVICE = {"udid", "product_type", "version", "build", "name", "paired", "developer_mode",
              "locked", "ddi", "connection_type", "faults": [{"kind": ..., "times": N, "skip": M}]}

A device's state lives under ROOT/UDID: `installed.json` (the installed apps) and
`containers/BUNDLE_ID/` (the app's container: Documents/, Library/Caches/), which house_arrest's
AFC paths map into ("/Documents/x" is containers/BUNDLE_ID/Documents/x). Fault use is counted in
ROOT/UDID/faults_used.json, so a fault with "times": 1 fires once per test even across processes.

The agent app is emulated by a thread that follows the Swift agent's file protocol
(device_agents/ios): read Documents/jobs/ID/job.json, write status.json heartbeats, result.json,
then DONE, and end. `app: "mirror"` (default) mirrors the Swift agent's own loop in Python (compile
cache by hash, random inputs of the model's input shapes read from the .mlpackage with coremltools'
protobuf, warm-ups and timed iterations of a stand-in computation: Core ML itself runs only on
Apple hardware); `app: "host"` runs the host agent's `run()` (device_agents/host/agent.py) on the
job, for real workload numbers.

Faults (`kind`): `hang` (the app stops heartbeating and never writes DONE), `crash` (the app
writes a Swift trap to its stderr.txt and ends without DONE), `malformed` (result.json is not JSON), `disconnect_on_pull` (the AFC
connection drops while result.json is read), `launch_locked` (the launch is refused: locked).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import plistlib
import resource
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from pymobiledevice3 import exceptions as exc
from pymobiledevice3.dtx import DTXNsError
from pymobiledevice3.dtx.ns_types import NSError

WORLD_ENV = "HARNESS_IOS_FAKE"
REPO = Path(__file__).resolve().parents[2]
_PIDS = itertools.count(1000)

# A few entries of pymobiledevice3's device table (irecv_devices) the fake devices use.
_PRODUCTS = {
    "iPhone15,3": ("d74ap", 0x8120, "iPhone 14 Pro Max"),
    "iPhone15,2": ("d73ap", 0x8120, "iPhone 14 Pro"),
    "iPhone16,2": ("d84ap", 0x8130, "iPhone 15 Pro Max"),
    "iPhone14,5": ("d17ap", 0x8110, "iPhone 13"),
}


def write_world(path: Path, root: Path, devices: dict[str, list[dict[str, Any]]], **kw: Any) -> Path:
    """Write a world file (see the module docstring) and return its path."""
    world = {"root": str(root), "tunneld": True, "app": "mirror", "heartbeat_s": 0.1, "usbmux": devices, **kw}
    path.write_text(json.dumps(world, indent=2))
    return path


def device(udid: str, **kw: Any) -> dict[str, Any]:
    """A ready iPhone 14 Pro Max on iOS 16.6 unless told otherwise."""
    out = {"udid": udid, "product_type": "iPhone15,3", "version": "16.6", "build": "20G75", "name": "Lab iPhone",
           "paired": True, "developer_mode": True, "locked": False, "ddi": True, "connection_type": "USB",
           "faults": []}
    out.update(kw)
    return out


def make_ipa(path: Path, bundle_id: str = "org.harness.HarnessAgent", version: str = "1") -> Path:
    """An .ipa as installation_proxy sees one: Payload/HarnessAgent.app/{Info.plist, HarnessAgent}."""
    info = {"CFBundleIdentifier": bundle_id, "CFBundleVersion": version, "CFBundleShortVersionString": "1.0",
            "CFBundleExecutable": "HarnessAgent"}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("Payload/HarnessAgent.app/Info.plist", plistlib.dumps(info, fmt=plistlib.FMT_BINARY))
        zf.writestr("Payload/HarnessAgent.app/HarnessAgent", b"\xcf\xfa\xed\xfe fake arm64 executable")
    return path


# ------------------------------------------------------------------------------------ the world

class FakeDevice:
    """One emulated phone: its lockdown values, its state on disk, its running app."""

    def __init__(self, world: "World", cfg: dict[str, Any]):
        self.world, self.cfg = world, cfg
        self.udid: str = cfg["udid"]
        self.dir = Path(world.root) / self.udid
        self.dir.mkdir(parents=True, exist_ok=True)
        self.processes: dict[int, "EmulatedApp"] = {}

    @property
    def version(self) -> str:
        return str(self.cfg["version"])

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def lockdown_values(self) -> dict[str, Any]:
        values = {"UniqueDeviceID": self.udid, "ProductType": self.cfg["product_type"],
                  "ProductVersion": self.version, "DeviceClass": "iPhone",
                  "HarnessStandIn": "iOS API stand-in"}  # not a real iPhone: reports label it (harness.standin)
        if self.cfg.get("paired", True):  # an unpaired lockdownd answers only a few values
            values.update({"BuildVersion": self.cfg.get("build"), "DeviceName": self.cfg.get("name"),
                           "UniqueChipID": 0x1A2B3C4D5E6F70, "CPUArchitecture": "arm64e"})
        return values

    # installed apps and containers

    def installed(self) -> dict[str, dict[str, Any]]:
        path = self.dir / "installed.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def install(self, info: dict[str, Any]) -> None:
        apps = self.installed()
        apps[info["CFBundleIdentifier"]] = info
        (self.dir / "installed.json").write_text(json.dumps(apps, indent=2))
        self.container(info["CFBundleIdentifier"]).joinpath("Documents").mkdir(parents=True, exist_ok=True)

    def container(self, bundle_id: str) -> Path:
        return self.dir / "containers" / bundle_id

    # faults

    def take_fault(self, kind: str) -> bool:
        """True (and counted) when a `kind` fault is configured and has uses left. A fault with
        "skip": N lets its first N chances pass."""
        specs = [f for f in self.cfg.get("faults", []) if f.get("kind") == kind]
        if not specs:
            return False
        wanted = sum(int(f.get("times", 1)) for f in specs)
        skip = sum(int(f.get("skip", 0)) for f in specs)
        path = self.dir / "faults_used.json"
        used = json.loads(path.read_text()) if path.is_file() else {}
        seen = used.pop(f"{kind}#seen", 0) + 1
        fire = seen > skip and used.get(kind, 0) < wanted
        if fire:
            used[kind] = used.get(kind, 0) + 1
        path.write_text(json.dumps({**used, f"{kind}#seen": seen}))
        return fire

    def faults_used(self) -> dict[str, int]:
        """kind -> how often it fired."""
        path = self.dir / "faults_used.json"
        used = json.loads(path.read_text()) if path.is_file() else {}
        return {k: v for k, v in used.items() if "#" not in k}


class World:
    def __init__(self, path: str | os.PathLike):
        data = json.loads(Path(path).read_text())
        self.root = data["root"]
        self.tunneld = bool(data.get("tunneld", True))
        self.app = data.get("app", "mirror")
        self.heartbeat_s = float(data.get("heartbeat_s", 0.1))
        self.usbmux: dict[str, list[FakeDevice]] = {
            addr: [FakeDevice(self, cfg) for cfg in devices] for addr, devices in data.get("usbmux", {}).items()}

    def find(self, udid: str) -> FakeDevice:
        for devices in self.usbmux.values():
            for dev in devices:
                if dev.udid.replace("-", "") == udid.replace("-", ""):
                    return dev
        raise exc.DeviceNotFoundError(udid)


# ------------------------------------------------------------------------------------ usbmux, lockdown, tunneld

@dataclass
class FakeMuxDevice:
    devid: int
    serial: str
    connection_type: str

    @property
    def is_usb(self) -> bool:
        return self.connection_type == "USB"

    @property
    def is_network(self) -> bool:
        return self.connection_type == "Network"

    def matches_udid(self, udid: str) -> bool:
        return self.serial.replace("-", "") == udid.replace("-", "")


class FakeLockdown:
    """What harness.devices.ios reads of a UsbmuxLockdownClient."""

    def __init__(self, dev: FakeDevice):
        self.device = dev
        self.all_values = dev.lockdown_values()
        self.udid = self.all_values["UniqueDeviceID"]
        self.identifier = self.udid
        self.product_type = self.all_values["ProductType"]
        self.paired = bool(dev.cfg.get("paired", True))
        self.closed = False

    @property
    def product_version(self) -> str:
        return self.all_values.get("ProductVersion") or "1.0"

    @property
    def has_developer_mode(self) -> bool:
        return self.device.major >= 16

    def _product(self) -> tuple[str, int, str] | None:
        return _PRODUCTS.get(self.product_type)

    @property
    def display_name(self) -> Optional[str]:
        p = self._product()
        return p[2] if p else None

    @property
    def hardware_model(self) -> Optional[str]:
        p = self._product()
        return p[0] if p else None

    @property
    def chip_id(self) -> Optional[int]:
        p = self._product()
        return p[1] if p else None

    def _require_paired(self) -> None:
        if not self.paired:
            raise exc.NotPairedError()

    async def get_value(self, domain: Optional[str] = None, key: Optional[str] = None) -> Any:
        self._require_paired()
        if domain == "com.apple.security.mac.amfi" and key == "DeveloperModeStatus":
            return bool(self.device.cfg.get("developer_mode", True))
        return self.all_values if key is None else self.all_values.get(key)

    async def get_developer_mode_status(self) -> bool:
        return bool(await self.get_value(domain="com.apple.security.mac.amfi", key="DeveloperModeStatus"))

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> "FakeLockdown":
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()


class FakeRsd:
    """The RemoteServiceDiscoveryService a tunnel gives (iOS 17+)."""

    def __init__(self, dev: FakeDevice):
        self.device = dev
        self.udid = dev.udid
        self.product_type = dev.cfg["product_type"]

    @property
    def product_version(self) -> str:
        return self.device.version

    async def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------ lockdown services

class _Service:
    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()

    async def connect(self) -> None:
        dev = self.lockdown.device
        if isinstance(self.lockdown, FakeLockdown):
            self.lockdown._require_paired()
        if dev.cfg.get("locked"):
            raise exc.PasswordRequiredError("The device is protected with a passcode. Unlock it and try again.")

    async def close(self) -> None:
        pass


class FakeInstallationProxyService(_Service):
    def __init__(self, lockdown: Any, service_name: Optional[str] = None, is_developer_service: bool = False,
                 service: Optional[Any] = None, include_escrow_bag: bool = False) -> None:
        self.lockdown = lockdown

    async def get_apps(self, application_type: str = "Any", calculate_sizes: bool = False,
                       bundle_identifiers: Optional[list[str]] = None,
                       show_placeholders: bool = False) -> dict[str, dict[str, Any]]:
        await self.connect()
        apps = self.lockdown.device.installed()
        return {k: v for k, v in apps.items() if bundle_identifiers is None or k in bundle_identifiers}

    async def install_from_local(self, package_path: Path, cmd: str = "Install", options: Optional[dict[str, Any]] = None,
                                 handler: Optional[Any] = None, developer: bool = False, *args: Any) -> None:
        await self.connect()
        try:
            with zipfile.ZipFile(package_path) as zf:
                names = [n for n in zf.namelist() if n.startswith("Payload/") and n.endswith(".app/Info.plist")]
                if not names:
                    raise exc.AppInstallError("PackageInspectionFailed: no Payload/*.app/Info.plist")
                info = plistlib.loads(zf.read(names[0]))
        except zipfile.BadZipFile:
            raise exc.AppInstallError("PackageExtractionFailed: not a zip archive") from None
        self.lockdown.device.install(info)


class FakeMobileImageMounterService(_Service):
    def __init__(self, lockdown: Any):
        self.lockdown = lockdown

    async def is_image_mounted(self, image_type: str) -> bool:
        await self.connect()
        return bool(self.lockdown.device.cfg.get("ddi", True))


def fake_image_type_for_device(lockdown: Any) -> str:
    return "Personalized" if lockdown.device.major >= 17 else "Developer"


class FakeHouseArrestService(_Service):
    """AFC over the app's container directory. Paths are container paths ("/Documents/x")."""

    def __init__(self, lockdown: Any, documents_only: bool = False):
        self.lockdown = lockdown
        self.documents_only = documents_only
        self.root: Path | None = None
        self.closed = False

    @classmethod
    async def create(cls, lockdown: Any, bundle_id: str, documents_only: bool = False) -> "FakeHouseArrestService":
        service = cls(lockdown, documents_only=documents_only)
        await service.send_command(bundle_id, "VendDocuments" if documents_only else "VendContainer")
        return service

    async def send_command(self, bundle_id: str, cmd: str = "VendContainer") -> None:
        await self.connect()
        if bundle_id not in self.lockdown.device.installed():
            raise exc.AppNotInstalledError(f"No app with bundle ID {bundle_id} is installed.")
        self.root = self.lockdown.device.container(bundle_id)

    async def aclose(self) -> None:
        self.closed = True

    async def close(self) -> None:
        self.closed = True

    def _local(self, path: str) -> Path:
        assert self.root is not None, "house_arrest: no container vended"
        parts = [p for p in str(path).split("/") if p not in ("", ".")]
        if ".." in parts:
            raise exc.AfcException(f"bad path {path}", 7, str(path))
        return self.root.joinpath(*parts)

    def _live(self) -> None:
        if self.closed:
            raise exc.ConnectionTerminatedError()

    async def stat(self, filename: str) -> dict[str, Any]:
        self._live()
        p = self._local(filename)
        if not p.exists():
            raise exc.AfcFileNotFoundError(f"No such file on the device: {filename}", 8, filename)
        st = p.stat()
        return {"st_size": st.st_size, "st_ifmt": "S_IFDIR" if p.is_dir() else "S_IFREG",
                "st_mtime": datetime.fromtimestamp(st.st_mtime), "st_nlink": 1, "st_blocks": 0}

    async def exists(self, filename: str):
        self._live()
        return self._local(filename).exists()

    async def makedirs(self, filename: str):
        self._live()
        self._local(filename).mkdir(parents=True, exist_ok=True)
        return b""

    async def listdir(self, filename: str) -> list[str]:
        self._live()
        p = self._local(filename)
        if not p.is_dir():
            raise exc.AfcFileNotFoundError(f"No such directory on the device: {filename}", 8, filename)
        return sorted(q.name for q in p.iterdir())

    async def get_file_contents(self, filename: str) -> bytes:
        self._live()
        p = self._local(filename)
        if p.name == "result.json" and p.is_file() and self.lockdown.device.take_fault("disconnect_on_pull"):
            self.closed = True
            raise exc.ConnectionTerminatedError()
        if not p.exists():
            raise exc.AfcFileNotFoundError(f"No such file on the device: {filename}", 8, filename)
        if not p.is_file():
            raise exc.AfcException(f"Not a regular file: {filename}", 7, filename)
        return p.read_bytes()

    async def set_file_contents(self, filename: str, data: bytes, progress: Optional[Any] = None) -> None:
        self._live()
        p = self._local(filename)
        if not p.parent.is_dir():
            raise exc.AfcFileNotFoundError(f"No such directory on the device: {p.parent}", 8, filename)
        p.write_bytes(data)

    async def push(self, local_path: str, remote_path: str, callback: Optional[Any] = None, progress_bar: bool = True):
        self._live()
        src, dst = Path(local_path), self._local(remote_path)
        if src.is_dir():
            shutil.copytree(src, dst / src.name, dirs_exist_ok=True)
            return
        if dst.is_dir():
            dst = dst / src.name
        if not dst.parent.is_dir():
            raise exc.AfcFileNotFoundError(f"No such directory on the device: {remote_path}", 8, remote_path)
        shutil.copyfile(src, dst)

    async def rm(self, filename: str, match: Optional[Any] = None, force: bool = False) -> list[str]:
        self._live()
        p = self._local(filename)
        if not p.exists():
            if force:
                return [filename]
            raise exc.AfcFileNotFoundError(f"No such file on the device: {filename}", 8, filename)
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
        return []

    async def rename(self, source: str, target: str) -> None:
        self._live()
        os.replace(self._local(source), self._local(target))


# ------------------------------------------------------------------------------------ DVT

class FakeDvtProvider:
    def __init__(self, lockdown: Any, strip_ssl: Optional[bool] = None, dtx: Optional[Any] = None) -> None:
        self.lockdown = lockdown

    async def __aenter__(self) -> "FakeDvtProvider":
        dev = self.lockdown.device
        if dev.major >= 17 and not isinstance(self.lockdown, FakeRsd):
            raise exc.InvalidServiceError("lockdownd failed StartService: InvalidService", dev.udid, dev.version,
                                          error="InvalidService")
        if not dev.cfg.get("ddi", True):
            raise exc.InvalidServiceError("lockdownd failed StartService: InvalidService", dev.udid, dev.version,
                                          error="InvalidService")
        return self

    async def __aexit__(self, *args: Any) -> None:
        pass


class FakeProcessControl:
    def __init__(self, provider: Any, service: Optional[Any] = None) -> None:
        self.provider = provider

    async def __aenter__(self) -> "FakeProcessControl":
        return self

    async def __aexit__(self, *args: Any) -> None:
        pass

    @property
    def _device(self) -> FakeDevice:
        return self.provider.lockdown.device

    async def launch(self, bundle_id: str, arguments: Optional[list[str]] = None, kill_existing: bool = True,
                     start_suspended: bool = False, environment: Optional[dict[str, Any]] = None,
                     extra_options: Optional[dict[str, Any]] = None) -> int:
        dev = self._device
        if dev.take_fault("launch_locked"):
            raise DTXNsError(NSError(1, "FBSOpenApplicationServiceErrorDomain",
                                     {"NSLocalizedFailureReason": "Unable to launch because the device was not, or "
                                      "could not be, unlocked."}))
        if bundle_id not in dev.installed():
            raise DTXNsError(NSError(4, "FBSOpenApplicationServiceErrorDomain",
                                     {"NSLocalizedDescription": f"The application {bundle_id} is not installed."}))
        if kill_existing:
            for app in dev.processes.values():
                if app.bundle_id == bundle_id and app.alive:
                    app.kill()
        args = list(arguments or [])
        job_id = args[args.index("--job-id") + 1] if "--job-id" in args else (environment or {}).get("HARNESS_JOB_ID")
        app = EmulatedApp(dev, bundle_id, str(job_id), next(_PIDS))
        dev.processes[app.pid] = app
        app.start()
        return app.pid

    async def process_identifier_for_bundle_identifier(self, app_bundle_identifier: str) -> int:
        for pid, app in self._device.processes.items():
            if app.bundle_id == app_bundle_identifier and app.alive:
                return pid
        return 0

    async def kill(self, pid: int):
        app = self._device.processes.get(pid)
        if app is not None:
            app.kill()


# ------------------------------------------------------------------------------------ the adapter

class FakeServices:
    """Stands in for harness.devices.ios.Pmd3Services (attribute for attribute)."""

    name = "ios_fake"
    exc = exc
    DTXNsError = DTXNsError
    InstallationProxyService = FakeInstallationProxyService
    HouseArrestService = FakeHouseArrestService
    MobileImageMounterService = FakeMobileImageMounterService
    image_type_for_device = staticmethod(fake_image_type_for_device)
    DvtProvider = FakeDvtProvider
    ProcessControl = FakeProcessControl

    def __init__(self) -> None:
        path = os.environ.get(WORLD_ENV)
        if not path:
            raise RuntimeError(f"{WORLD_ENV} must name the fake world file (tests.fakes.ios_fake.write_world)")
        self.world = World(path)
        self.version = "11.45.0 (fake)"

    def _devices_at(self, usbmux_address: Optional[str]) -> list[FakeDevice]:
        addr = usbmux_address or os.environ.get("USBMUXD_SOCKET_ADDRESS") or "local"
        if addr not in self.world.usbmux:
            raise exc.ConnectionFailedToUsbmuxdError()
        return self.world.usbmux[addr]

    async def list_devices(self, usbmux_address: Optional[str] = None) -> list[FakeMuxDevice]:
        return [FakeMuxDevice(i + 1, d.udid, d.cfg.get("connection_type", "USB"))
                for i, d in enumerate(self._devices_at(usbmux_address))]

    async def create_using_usbmux(self, serial: Optional[str] = None, identifier: Optional[str] = None,
                                  label: str = "pymobiledevice3", autopair: bool = True,
                                  connection_type: Optional[str] = None, pair_timeout: Optional[float] = None,
                                  local_hostname: Optional[str] = None, pair_record: Optional[dict[str, Any]] = None,
                                  pairing_records_cache_folder: Optional[Path] = None, port: int = 62078,
                                  usbmux_address: Optional[str] = None) -> FakeLockdown:
        for dev in self._devices_at(usbmux_address):
            if serial is None or dev.udid.replace("-", "") == serial.replace("-", ""):
                if not dev.cfg.get("paired", True) and autopair:
                    raise exc.PairingDialogResponsePendingError()  # what a phone does: wait for Trust
                return FakeLockdown(dev)
        raise exc.ConnectionFailedError()

    async def get_tunneld_device_by_udid(self, udid: str, tunneld_address: tuple[str, int] = ("127.0.0.1", 49151),
                                         bridge: Optional[bool] = None) -> Optional[FakeRsd]:
        if not self.world.tunneld:
            raise exc.TunneldConnectionError()
        dev = self.world.find(udid)
        return FakeRsd(dev) if dev.major >= 17 else None


# ------------------------------------------------------------------------------------ the emulated app

def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class EmulatedApp:
    """The agent app on the fake phone: a thread following the Swift agent's file protocol."""

    def __init__(self, dev: FakeDevice, bundle_id: str, job_id: str, pid: int):
        self.dev, self.bundle_id, self.job_id, self.pid = dev, bundle_id, job_id, pid
        self.container = dev.container(bundle_id)
        self.job_dir = self.container / "Documents" / "jobs" / job_id
        self.alive = True
        self.killed = threading.Event()
        self._beat = threading.Event()
        self._status = {"phase": "launch", "done": 0, "total": 1}
        self._seq = 0

    def start(self) -> None:
        self.fault = next((k for k in ("hang", "crash", "malformed") if self.dev.take_fault(k)), None)
        self.interval = self.dev.world.heartbeat_s
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # the agent reads job.json first
            self.interval = float(json.loads((self.job_dir / "job.json").read_text())["options"]["extra"]["heartbeat_s"])
        threading.Thread(target=self._main, name=f"fake-app-{self.pid}", daemon=True).start()

    def kill(self) -> None:
        """SIGKILL: the app stops at once (recorded in ROOT/UDID/killed.log for the tests)."""
        if self.alive:
            with (self.dev.dir / "killed.log").open("a") as fh:
                fh.write(f"{self.pid} {self.job_id}\n")
        self.killed.set()
        self._beat.set()
        self.alive = False

    def status(self, phase: str, done: int, total: int) -> None:
        self._status = {"phase": phase, "done": done, "total": total}

    def _write_status(self) -> None:
        self._seq += 1
        doc = {**self._status, "seq": self._seq, "t": time.time(), "pid": self.pid}
        with contextlib.suppress(OSError):
            _write_atomic(self.job_dir / "status.json", json.dumps(doc).encode())

    def _heartbeat(self) -> None:
        while not self._beat.wait(self.interval):
            self._write_status()

    def _main(self) -> None:
        self._write_status()  # the first beat before any work, as Heartbeat.init does
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        beat.start()
        try:
            if self.fault == "hang":
                self._beat.set()  # heartbeats stop; DONE never comes; only kill() ends it
                self.killed.wait(600)
                return
            if self.fault == "crash":  # what the Swift agent's redirected stderr holds when Swift traps
                (self.job_dir / "stderr.txt").write_text(
                    f"HarnessAgent: job {self.job_id}: loading the model\n"
                    "HarnessAgentCore/JobRunner.swift:88: Fatal error: Unexpectedly found nil while unwrapping an "
                    "Optional value\n")
                time.sleep(3 * self.dev.world.heartbeat_s)
                return
            if self.fault == "malformed":
                _write_atomic(self.job_dir / "result.json", b'{"schema_version": 1, "job_id": "x", "status": ')
                (self.job_dir / "DONE").write_text("0")
                return
            from harness.protocol import parse_spec

            spec = parse_spec((self.job_dir / "job.json").read_text())
            result = run_host(spec) if self.dev.world.app == "host" else run_mirror(spec, self.container, self.status)
            if self.killed.is_set():
                return
            _write_atomic(self.job_dir / "result.json", json.dumps(result, indent=2, sort_keys=True).encode())
            (self.job_dir / "DONE").write_text("0")
        finally:
            self._beat.set()
            self.alive = False


def run_host(spec: Any) -> dict[str, Any]:
    """The host agent's run() on the job (the phone's Core ML settings dropped): real workload numbers."""
    import importlib.util

    mod_spec = importlib.util.spec_from_file_location("harness_host_agent", REPO / "device_agents" / "host" / "agent.py")
    agent = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(agent)
    options = spec.options.model_copy(update={"runtime": "torch", "compute_units": None, "extra": {}})
    result = agent.run(spec.model_copy(update={"options": options, "artifact": None}))
    doc = json.loads(result.model_dump_json())
    doc["extra"]["emulated"] = "tests/fakes/ios_fake.py: the host agent ran the job (no Core ML here)"
    doc["stand_in"] = ["host agent in place of the iOS app (no Core ML)"]
    return doc


def _input_shapes(package: Path) -> list[dict[str, Any]]:
    """Input names and shapes of an .mlpackage, from its model protobuf (coremltools' proto)."""
    from coremltools.proto import Model_pb2

    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["rootModelIdentifier"]
    rel = manifest["itemInfoEntries"][root]["path"]
    model = Model_pb2.Model()
    model.ParseFromString((package / "Data" / rel).read_bytes())
    inputs = [{"name": i.name, "shape": [int(d) for d in i.type.multiArrayType.shape]} for i in model.description.input]
    return sorted(inputs, key=lambda i: i["name"])  # as the agent lists them (JobRunner.swift multiArrayInputs)


def _phys_footprint() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_mirror(spec: Any, container: Path, status: Any) -> dict[str, Any]:
    """The Swift agent's unet_iteration/e2e loop in Python, with a stand-in for MLModel.prediction."""
    import numpy as np

    started = time.time()
    before = {"thermal_state": "nominal", "phys_footprint_bytes": _phys_footprint(), "low_power_mode": False}
    result: dict[str, Any] = {"schema_version": 1, "job_id": spec.job_id, "status": "ok", "samples_ms": [],
                              "warmup_ms": [], "timing_method": "perf_counter (ios_fake mirror of mach_absolute_time)",
                              "memory": {}, "device_state_before": before, "op_times_ms": {}, "components_ms": {},
                              "versions": {"agent": "ios_fake", "ios": "fake"}, "started_at": started, "extra": {},
                              "stand_in": ["iOS agent stand-in (no Core ML)"]}
    models = dict(spec.options.extra.get("models") or {"unet": spec.artifact})
    extra = result["extra"]
    extra.update(compute_units=spec.options.compute_units, emulated="tests/fakes/ios_fake.py mirror: no Core ML on "
                 "Linux; the timed work is a stand-in", compiled={})
    loaded: dict[str, list[dict[str, Any]]] = {}
    compile_ms = load_ms = 0.0
    for name, rel in models.items():
        package = container / str(rel)
        if not (package / "Manifest.json").is_file():
            result.update(status="failed", error={"kind": "input", "message": f"no .mlpackage at {rel} in the container"})
            result["ended_at"] = time.time()
            return result
        status("compile", 0, 1)
        marker = package.with_name(package.name + ".sha256")
        digest = marker.read_text().strip() if marker.is_file() else hashlib.sha256(
            (package / "Manifest.json").read_bytes()).hexdigest()
        compiled = container / "Library" / "Caches" / "compiled" / f"{digest[:16]}.mlmodelc"
        t0 = time.perf_counter_ns()
        cached = compiled.is_dir()
        if not cached:
            shutil.copytree(package, compiled)
        t1 = time.perf_counter_ns()
        loaded[name] = _input_shapes(compiled)
        t2 = time.perf_counter_ns()
        compile_ms += (t1 - t0) / 1e6
        load_ms += (t2 - t1) / 1e6
        extra["compiled"][name] = {"cached": cached, "compile_ms": (t1 - t0) / 1e6, "load_ms": (t2 - t1) / 1e6}
    extra.update(compile_ms=compile_ms, load_ms=load_ms, inputs=loaded)
    result["init_ms"] = compile_ms + load_ms
    rng = np.random.default_rng(spec.model.seed)
    inputs = {n: [rng.standard_normal(i["shape"]).astype(np.float32) for i in ins] for n, ins in loaded.items()}

    def predict(name: str) -> float:
        t0 = time.perf_counter_ns()
        for x in inputs[name]:
            float(np.tanh(x).sum())
        return (time.perf_counter_ns() - t0) / 1e6

    m = spec.measure
    e2e = spec.workload == "e2e"
    steps = int(spec.workload_args.get("steps", 20))
    timed_components: list[dict[str, Any]] = []

    def one() -> float:
        if not e2e:
            return predict("unet")
        t0 = time.perf_counter_ns()
        prep = (time.perf_counter_ns() - t0) / 1e6
        te = predict("text_encoder")
        unet, sched = [], []
        for _ in range(steps):
            unet.append(predict("unet"))
            a = time.perf_counter_ns()
            float(np.tanh(inputs["unet"][0]).mean())  # stand-in for guidance + scheduler.step
            sched.append((time.perf_counter_ns() - a) / 1e6)
        dec = predict("vae_decoder")
        total = (time.perf_counter_ns() - t0) / 1e6
        parts = {"prepare_ms": prep, "text_encoder_ms": te, "unet_ms": unet, "scheduler_ms": sched,
                 "decoder_ms": dec, "postprocess_ms": 0.0, "total_ms": total}
        parts["gap_ms"] = max(0.0, total - prep - te - sum(unet) - sum(sched) - dec)
        timed_components.append(parts)
        return total

    for i in range(m.warmup_runs):
        status("warmup", i, m.warmup_runs)
        result["warmup_ms"].append(one())
    timed_components.clear()
    total_s = 0.0
    while (len(result["samples_ms"]) < m.iterations or total_s < m.min_seconds) and \
            (total_s < m.max_seconds or not result["samples_ms"]):
        status("timed", len(result["samples_ms"]), m.iterations)
        ms = one()
        result["samples_ms"].append(ms)
        total_s += ms / 1000
    result["first_run_ms"] = (result["warmup_ms"] or result["samples_ms"])[0]
    if e2e:
        result["components_ms"] = {
            "method": "measured", "steps": steps, "unet_evals": steps,
            **{k: [c[k] for c in timed_components] for k in ("text_encoder_ms", "unet_ms", "scheduler_ms",
                                                              "decoder_ms", "prepare_ms", "postprocess_ms",
                                                              "total_ms", "gap_ms")}}
    weights = [p for rel in models.values() for p in (container / str(rel)).rglob("*") if p.is_file()
               and "weights" in p.parts]
    result["memory"] = {"weight_bytes": sum(p.stat().st_size for p in weights), "peak_rss_bytes": _phys_footprint()}
    result["device_state_after"] = {**before, "phys_footprint_bytes": _phys_footprint()}
    result["ended_at"] = time.time()
    return result


async def _selftest() -> None:  # pragma: no cover - `python -m tests.fakes.ios_fake WORLD`: list the world
    services = FakeServices()
    for dev in await services.list_devices():
        print(dev)


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(_selftest())
