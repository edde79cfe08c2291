"""iOS settings (farm.yaml `ios:` and `devices: {UDID: ...}`, merged by harness.devices.settings), and what
the harness tells the user to do when a phone is not ready."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from harness.devices.base import DeviceContext, DeviceError
from harness.devices.settings import DeviceSettings, host_path, merge_settings, seconds

PMD3_VERSION = "11.45.0"  # what the project installs (`make setup`); any 11.x has the APIs used here
DEFAULT_BUNDLE_ID = "org.harness.HarnessAgent"  # device_agents/ios/project.yml
DEFAULT_TUNNELD = "127.0.0.1:49151"

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


class IOSConfigError(DeviceError):
    """Bad iOS settings (farm.yaml `ios:`, --ios-agent, options.extra); the message names the fix."""


def _usbmux(section: str, raw: Any, current: Any, base_dir: Path | None) -> tuple[str | None, ...]:
    addrs: list[str | None] = []
    for item in raw if isinstance(raw, list) else [raw]:
        if item in (None, "", "local"):
            addrs.append(None)
        elif isinstance(item, str) and (re.fullmatch(r"[^:\s/]+:\d{1,5}", item) or item.startswith("/")):
            addrs.append(item)
        else:
            raise IOSConfigError(f"{section}.usbmux: {item!r} is not HOST:PORT, a socket path or 'local'")
    return tuple(addrs) or (None,)


def _tunneld(section: str, value: Any, current: Any, base_dir: Path | None) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[^:\s]+:\d{1,5}", value):
        raise IOSConfigError(f"{section}.tunneld: {value!r} is not HOST:PORT (default {DEFAULT_TUNNELD})")
    return value


class IOSSettings(DeviceSettings):
    """Per-device settings: defaults < farm.yaml `ios:` < `devices: {UDID: ...}` < --ios-agent."""

    section: ClassVar[str] = "ios"
    farm_keys: ClassVar[str] = "ios:, devices:"
    error: ClassVar[type[Exception]] = IOSConfigError

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


IOSSettings.parsers = {
    "usbmux": _usbmux,
    "tunneld": _tunneld,
    "agent": host_path,
    "bundle_id": lambda section, value, current, base_dir: str(value) if value else current,
    **{key: seconds(key, IOSConfigError) for key in ("poll_s", "heartbeat_s", "heartbeat_timeout_s",
                                                      "launch_timeout_s", "probe_timeout_s", "op_timeout_s")},
}
SETTINGS_KEYS = IOSSettings.keys()


def settings_for(ctx: DeviceContext, udid: str | None = None) -> IOSSettings:
    """The effective settings of one phone (udid None: the farm-wide ones). --ios-agent wins."""
    settings = merge_settings(IOSSettings(), ctx, udid)
    if ctx.ios_agent:
        settings = settings.model_copy(update={"agent": str(Path(ctx.ios_agent).expanduser())})
    return settings
