"""The wire to one iPhone: every pymobiledevice3 call of a job, as the remote-agent template's transport.

All pymobiledevice3 calls go through one small adapter (`Pmd3Services`): its attributes are
pymobiledevice3's own functions and classes. `HARNESS_IOS_SERVICES=module:factory` swaps in
another adapter with the same signatures (the tests' fake, tests/fakes/ios_fake.py).

pymobiledevice3 11.x is asyncio; the template is not: a job's session (lockdownd, the tunnel's RSD on
iOS 17+, the agent's container through house_arrest, DVT's process control) lives on one event loop
(`asyncio.Runner`) from its start to its end, and each template step runs one coroutine on it. Pushes
are skipped when the `.sha256` marker next to a package holds its hash; the agent IPA is installed
when its hash differs from the one recorded in the container. A call that fails because the phone
went away raises DeviceDisconnectedError; a locked or unpaired phone DeviceUnavailableError.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import re
from importlib.metadata import version
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from harness.devices.base import DeviceDisconnectedError, DeviceError, DeviceInfo, DeviceUnavailableError, JobFailure
from harness.devices.ios.agent import (
    AGENT_MARK, DONE, JOBS_DIR, RESULT, STATUS, STDERR, file_sha256, ipa_info, tree_sha256,
)
from harness.devices.ios.settings import (
    AGENT_HINT, DDI_HINT, LOCKED_HINT, PAIR_HINT, PMD3_VERSION, TUNNEL_HINT, IOSConfigError, IOSSettings,
)
from harness.devices.remote import AgentRun, Poll, RemoteFile, Transport

SERVICES_ENV = "HARNESS_IOS_SERVICES"


class Pmd3Services:
    """The only place that touches pymobiledevice3 (11.x). Each attribute is pymobiledevice3's own
    function or class, so the code above reads like pymobiledevice3 usage and a fake with the same
    signatures can stand in (tests/test_ios.py compares the signatures with the installed package)."""

    name = "pymobiledevice3"

    def __init__(self) -> None:
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


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3]) or (0,)


class UsbmuxTransport(Transport):
    """One phone through usbmuxd (and tunneld on iOS 17+), driving the agent app `bundle_id`."""

    def __init__(self, info: DeviceInfo, udid: str, settings: IOSSettings, pmd: Any, bundle_id: str):
        self.id, self.info, self.udid, self.settings, self.pmd = info.id, info, udid, settings, pmd
        self.serial = str(info.extra.get("serial") or udid)
        self.bundle_id = bundle_id
        self.agent_report: dict[str, Any] | None = None
        self._agent_checked = False
        self._runner: asyncio.Runner | None = None
        self._lockdown: Any = None
        self._dvt_provider: Any = None  # the lockdown (iOS < 17) or the tunnel's RSD (iOS 17+)
        self._afc: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._pc: Any = None

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

    def _run(self, coro: Any) -> Any:
        assert self._runner is not None, "a device call outside the transport's session"
        return self._runner.run(coro)

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[tuple[Any, Any]]:
        """(lockdown, DVT provider) of the phone, closed on leaving."""
        s = self.settings
        lockdown = await self._op("connecting to lockdownd", self.pmd.create_using_usbmux(
            serial=self.serial, autopair=False, connection_type=self.info.extra.get("connection_type"),
            usbmux_address=self.info.extra.get("usbmux_address")))
        rsd = None
        try:
            if not lockdown.paired:
                raise DeviceUnavailableError(f"{self.id} is not paired: {PAIR_HINT}")
            if version_tuple(lockdown.product_version) >= (17,):
                host, _, port = s.tunneld.rpartition(":")
                try:
                    rsd = await self._op("asking tunneld for the phone's tunnel", self.pmd.get_tunneld_device_by_udid(
                        self.udid, tunneld_address=(host, int(port))))
                except (self.pmd.exc.TunneldConnectionError, DeviceDisconnectedError):
                    raise DeviceUnavailableError(f"{self.id}: no tunneld at {s.tunneld}. {TUNNEL_HINT}") from None
                if rsd is None:
                    raise DeviceUnavailableError(f"{self.id}: tunneld at {s.tunneld} has no tunnel for it; replug the "
                                                 "phone (unlocked). " + TUNNEL_HINT)
            yield lockdown, rsd or lockdown
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

    async def _open(self, stack: contextlib.AsyncExitStack) -> None:
        self._lockdown, self._dvt_provider = await stack.enter_async_context(self._connect())
        if not self._agent_checked:
            self.agent_report = await self._ensure_agent(self._lockdown)
            self._agent_checked = True
        self._afc = await stack.enter_async_context(self._container(self._lockdown))

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """The phone's lockdown session, its agent installed, and the agent's container, for one job."""
        with asyncio.Runner() as runner:
            self._runner = runner
            self._stack = stack = contextlib.AsyncExitStack()
            try:
                runner.run(self._open(stack))
                yield
            finally:
                try:
                    runner.run(stack.aclose())
                finally:
                    self._runner = self._stack = self._lockdown = self._dvt_provider = self._afc = self._pc = None

    async def _read(self, path: str) -> bytes | None:
        try:
            return await self._op(f"reading {path}", self._afc.get_file_contents(path))
        except self.pmd.exc.AfcFileNotFoundError:
            return None

    # ---- the agent app

    async def _ensure_agent(self, lockdown: Any) -> dict[str, Any]:
        """Install the agent IPA unless the container records the same sha256. Returns what was done."""
        s = self.settings
        async with self.pmd.InstallationProxyService(lockdown) as ip:
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
                async with self._container(lockdown) as afc:
                    try:
                        mark = await self._op(f"reading {AGENT_MARK}", afc.get_file_contents(AGENT_MARK))
                    except self.pmd.exc.AfcFileNotFoundError:
                        mark = None
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
        async with self._container(lockdown) as afc:
            await self._op("recording the agent's hash", afc.makedirs(AGENT_MARK.rsplit("/", 1)[0]))
            await self._op("recording the agent's hash", afc.set_file_contents(AGENT_MARK, sha.encode()))
        return {"installed": True, "sha256": sha, "bytes": ipa.stat().st_size}

    # ---- files

    def local_hash(self, path: Path) -> str:
        return tree_sha256(path)

    def remote_hashes(self, paths: list[str]) -> dict[str, str | None]:
        """What the `.sha256` marker next to each package holds."""
        async def go() -> dict[str, str | None]:
            out: dict[str, str | None] = {}
            for path in paths:
                mark = await self._read(f"{path}.sha256")
                out[path] = None if mark is None else mark.decode(errors="replace").strip()
            return out

        return self._run(go())

    def push(self, file: RemoteFile) -> int:
        """Push a package (a folder, file by file; a file alone) to file.remote, then its marker."""
        local, remote, afc = file.local, file.remote, self._afc
        marker = f"{remote}.sha256"

        async def go() -> int:
            await self._op(f"removing a partial {remote}", afc.rm(remote, force=True))
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
                               timeout=self.settings.op_timeout_s + size / 2e6)
                total += size
            digest = file.digest or tree_sha256(local)
            await self._op(f"writing {marker}", afc.set_file_contents(marker, digest.encode()))
            return total

        return self._run(go())

    # ---- the agent

    def clear_jobs(self) -> None:
        self._run(self._op("removing old job directories", self._afc.rm(JOBS_DIR, force=True)))

    def launch(self, run: AgentRun) -> None:
        """Write the job's JobSpec (run.payload) into its folder and launch the app with `--job-id`."""
        pmd, afc, job_dir, job_id = self.pmd, self._afc, run.job_dir, run.spec.job_id

        async def go() -> int:
            await self._op(f"creating {job_dir}", afc.makedirs(job_dir))
            await self._op("writing job.json", afc.set_file_contents(f"{job_dir}/job.json", run.payload.encode()))
            try:
                if self._pc is None:
                    dvt = await self._stack.enter_async_context(pmd.DvtProvider(self._dvt_provider))
                    self._pc = await self._stack.enter_async_context(pmd.ProcessControl(dvt))
                try:
                    return await self._op("launching the agent app", self._pc.launch(
                        self.bundle_id, arguments=["--job-id", job_id], environment={"HARNESS_JOB_ID": job_id},
                        kill_existing=True))
                except (pmd.DTXNsError, AssertionError) as exc:
                    text = str(exc)
                    if "lock" in text.lower():
                        raise DeviceUnavailableError(f"{self.id} refused to launch the agent: {text}. {LOCKED_HINT}") from None
                    raise JobFailure("device", f"{self.id} refused to launch {self.bundle_id}: {text or 'no pid'}. Is "
                                      "the phone unlocked, and is the developer certificate trusted (Settings > "
                                      "General > VPN & Device Management)?") from None
            except (pmd.exc.InvalidServiceError, pmd.exc.StartServiceError,
                    pmd.exc.DeveloperModeIsNotEnabledError) as exc:
                raise DeviceUnavailableError(f"{self.id}: the developer services did not start ({exc}). {DDI_HINT}; "
                                             f"on iOS 17+: {TUNNEL_HINT}") from None

        run.pid = self._run(go())

    def poll(self, run: AgentRun) -> Poll:
        """DONE, else the app's heartbeat (status.json: {phase, done, total}) and whether it still runs."""
        done = f"{run.job_dir}/{DONE}"

        async def go() -> Poll:
            if await self._op("polling for DONE", self._afc.exists(done)):
                return Poll("done")
            status = await self._read(f"{run.job_dir}/{STATUS}")
            running = await self._op("checking the agent's process",
                                     self._pc.process_identifier_for_bundle_identifier(self.bundle_id))
            run.info["running"] = running
            if not running:
                return Poll("done" if await self._op("polling for DONE", self._afc.exists(done)) else "gone")
            progress = None
            if status is not None:
                try:
                    doc = json.loads(status)
                    progress = (str(doc.get("phase", "run")), int(doc.get("done", 0)), int(doc.get("total", 0)))
                except (ValueError, TypeError, AttributeError):
                    pass
            return Poll("running", heartbeat=status, progress=progress)

        return self._run(go())

    def kill(self, run: AgentRun) -> None:
        async def go() -> None:
            with contextlib.suppress(DeviceError, self.pmd.exc.PyMobileDevice3Exception):
                await self._op("killing the agent app", self._pc.kill(run.info.get("running") or run.pid))

        self._run(go())

    def cancel(self, run: AgentRun) -> None:
        """Kill the agent app through a fresh connection (the job's own loop runs in the job's thread)."""
        async def kill() -> None:
            async with self._connect() as (_, dvt_provider):
                async with self.pmd.DvtProvider(dvt_provider) as dvt, self.pmd.ProcessControl(dvt) as pc:
                    pid = await pc.process_identifier_for_bundle_identifier(self.bundle_id)
                    if pid:
                        await pc.kill(pid)

        with contextlib.suppress(Exception):
            asyncio.run(asyncio.wait_for(kill(), 15))

    def collect(self, run: AgentRun) -> dict[str, Any]:
        """status.json, result.json and the app's stderr (None: absent), copied into run.local_dir; the job's
        folder is removed from the phone."""
        async def go() -> dict[str, Any]:
            run.local_dir.mkdir(parents=True, exist_ok=True)
            files: dict[str, bytes | None] = {}
            for name in (STATUS, RESULT, STDERR):
                data = await self._read(f"{run.job_dir}/{name}")
                files[name] = data
                if data is not None:
                    (run.local_dir / name).write_bytes(data)
            await self._op("removing the job's files", self._afc.rm(run.job_dir, force=True))
            return files

        return self._run(go())
