"""Android phones over ADB, discovered: every adb server asked for its devices, each ready phone
described from getprop, SurfaceFlinger and /proc/meminfo; a phone that is not ready says what to do.

One or more adb servers are asked for their devices (`--adb HOST:PORT`, repeatable, plus the
`adb_servers:` of a farm.yaml; with neither, adbutils' default: $ANDROID_ADB_SERVER_HOST /
$ANDROID_ADB_SERVER_PORT, else 127.0.0.1:5037). A server is checked with a plain TCP connect
before adbutils talks to it, because adbutils answers a failed connect by starting a local adb
server (`adb start-server`).

Network phones (a device farm's, as DeviceFarmer/STF exposes them, serials `HOST:PORT`): the
`connect:` list of farm.yaml and every `--device android:HOST:PORT` are `adb connect`ed through the
first reachable adb server before its devices are listed, and again when such a phone dropped and the
harness waits for it to come back; a target that cannot be connected is listed `unreachable` with
adb's answer.
"""
from __future__ import annotations

import socket

import adbutils
from adbutils.errors import AdbError

from harness import standin
from harness.devices.android.device import AndroidDevice
from harness.devices.android.parse import ParseError
from harness.devices.android.parse_device import parse_devices_gles, parse_getprop, parse_meminfo_total_ram, split_gles
from harness.devices.android.settings import (
    OFFLINE_HINT, UNAUTHORIZED_HINT, adb_servers, connect_targets, server_label, settings_for,
)
from harness.devices.android.transport import adb_connect
from harness.devices.base import Device, DeviceContext, DeviceInfo, DeviceKind


def _reachable(host: str, port: int, timeout_s: float = 2.0) -> str | None:
    """None when a TCP connect to the adb server works, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__


def _state_and_hint(adb_state: str, server: str) -> tuple[str, str]:
    if adb_state == "device":
        return "ready", ""
    if adb_state == "offline":
        return "offline", OFFLINE_HINT
    if adb_state == "unauthorized":
        return "unauthorized", UNAUTHORIZED_HINT
    if "permission" in adb_state:
        return "no-permissions", ("the adb server's user may not open the USB device: add a udev rule for the "
                                  "phone's vendor id (Linux) and replug")
    return adb_state.replace(" ", "-"), (f"adb on {server} reports state {adb_state!r}: boot the phone normally "
                                         "with USB debugging on")


class AndroidKind(DeviceKind):
    name = "android"

    def discover(self, ctx: DeviceContext) -> list[DeviceInfo]:
        settings_for(ctx)  # validate the farm's android section early (exit 2 with the fix)
        infos: list[DeviceInfo] = []
        seen: set[str] = set()
        targets = connect_targets(ctx)
        connected = False
        for host, port, explicit in adb_servers(ctx):
            server = server_label(host, port)
            problem = _reachable(host, port)
            if problem is not None:
                infos.append(DeviceInfo(
                    id=f"android@{server}", kind="android", state="no-server" if not explicit else "unreachable",
                    name=f"adb server {server}", note=True,
                    hint=(f"adb server {server} not reachable ({problem}): start it with `adb start-server` "
                          "(farm host: `adb -a -P PORT nodaemon server`) or pass --adb HOST:PORT"),
                    extra={"adb_server": server}))
                continue
            client = adbutils.AdbClient(host=host, port=port, socket_timeout=settings_for(ctx).socket_timeout_s)
            failed_connects: dict[str, str] = {}
            if not connected:
                connected = True  # network phones are connected through the first reachable server
                for target in targets:
                    problem = adb_connect(client, target)
                    if problem is not None:
                        failed_connects[target] = problem
            try:
                items = client.list(extended=True)
            except (AdbError, OSError, EOFError) as exc:
                infos.append(DeviceInfo(id=f"android@{server}", kind="android", state="unreachable",
                                        name=f"adb server {server}", extra={"adb_server": server}, note=True,
                                        hint=f"the adb server at {server} did not list its devices: {exc}"))
                continue
            for item in items:
                if item.serial in seen:
                    continue  # the same phone through two servers: the first one is used
                seen.add(item.serial)
                infos.append(self._describe(client, server, item))
            for target, problem in failed_connects.items():
                if target not in seen:
                    seen.add(target)
                    infos.append(DeviceInfo(
                        id=f"android:{target}", kind="android", state="unreachable", name=target,
                        extra={"adb_server": server},
                        hint=(f"`adb connect {target}` through {server} failed ({problem}): check that the "
                              "phone is on the network with ADB over TCP on (adb tcpip 5555, or the farm's "
                              "port) and that this host can reach it")))
        return infos

    def _describe(self, client, server: str, item) -> DeviceInfo:
        state, hint = _state_and_hint(item.state, server)
        info = DeviceInfo(id=f"android:{item.serial}", kind="android", state=state, name=item.serial, hint=hint,
                          model=item.tags.get("model", "").replace("_", " ") if item.tags else "",
                          extra={"adb_server": server, "adb_state": item.state,
                                 "transport_id": getattr(item, "transport_id", None)})
        if state != "ready":
            return info
        dev = client.device(item.serial)
        try:
            props = parse_getprop(dev.shell("getprop", timeout=20))
            sf = dev.shell("dumpsys SurfaceFlinger", timeout=20)
            meminfo = dev.shell("cat /proc/meminfo", timeout=20)
        except (AdbError, OSError, EOFError, ParseError) as exc:
            info.state = "unresponsive"
            info.hint = f"the device is listed but did not answer shell commands ({exc}): {OFFLINE_HINT}"
            return info
        info.model = props.get("ro.product.model", info.model)
        info.stand_in = standin.from_android_props(props)  # the fake phones say so; an emulator is one
        manufacturer = props.get("ro.product.manufacturer", "")
        info.name = props.get("ro.product.marketname") or f"{manufacturer} {info.model}".strip()
        info.soc = props.get("ro.soc.model") or props.get("ro.board.platform", "")
        release, sdk = props.get("ro.build.version.release", ""), props.get("ro.build.version.sdk", "")
        info.os_version = f"Android {release} (API {sdk})" if release else ""
        try:
            gles = parse_devices_gles(sf)
        except ParseError:
            gles = None
        if gles:
            try:
                info.gpu = split_gles(gles).renderer
            except ParseError:
                info.gpu = gles
        try:
            info.ram_bytes = parse_meminfo_total_ram(meminfo)
        except ParseError:
            info.ram_bytes = None
        info.extra.update({
            "gles": gles, "abi": props.get("ro.product.cpu.abi"), "board_platform": props.get("ro.board.platform"),
            "soc_manufacturer": props.get("ro.soc.manufacturer"), "fingerprint": props.get("ro.build.fingerprint"),
            "sdk": sdk, "manufacturer": manufacturer,
        })
        return info

    def open(self, info: DeviceInfo, ctx: DeviceContext) -> Device:
        return AndroidDevice(info, ctx)
