"""iPhones and iPads, discovered: every usbmuxd the controller can reach (the local one; a remote one
through `USBMUXD_SOCKET_ADDRESS=host:port`; or the `usbmux:` list of farm.yaml's `ios:` section) lists
its devices; each is opened with `create_using_usbmux(autopair=False)`, so nothing waits on a trust
dialog. A device that is not ready shows as a state with the fix: `unpaired`, `developer-mode-off`,
`locked`, `no-developer-image`, `no-tunnel` (iOS 17+ reaches developer services only through a
tunnel: `pymobiledevice3 remote tunneld`), `unresponsive`.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from harness import standin
from harness.devices.base import Device, DeviceContext, DeviceInfo, DeviceKind
from harness.devices.ios.agent import ipa_info
from harness.devices.ios.device import IOSDevice
from harness.devices.ios.settings import (
    DDI_HINT, DEFAULT_BUNDLE_ID, DEVMODE_HINT, INSTALL_HINT, LOCKED_HINT, PAIR_HINT, TUNNEL_HINT, IOSSettings,
    settings_for,
)
from harness.devices.ios.transport import load_services, version_tuple

# Apple SoC names by chip id (pymobiledevice3's device table gives the id); others print as the
# internal name, e.g. "Apple T8150".
CHIP_NAMES = {
    0x8010: "A10 Fusion", 0x8011: "A10X Fusion", 0x8015: "A11 Bionic", 0x8020: "A12 Bionic",
    0x8027: "A12X/A12Z Bionic", 0x8030: "A13 Bionic", 0x8101: "A14 Bionic", 0x8103: "M1", 0x8110: "A15 Bionic",
    0x8112: "M2", 0x8120: "A16 Bionic", 0x8122: "M3", 0x8130: "A17 Pro", 0x8132: "M4", 0x8140: "A18",
}


def _os_name(values: dict[str, Any]) -> str:
    return "iPadOS" if values.get("DeviceClass") == "iPad" else "iOS"


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
        if version_tuple(version) >= (17,):
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
