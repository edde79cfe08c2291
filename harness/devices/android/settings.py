"""Android settings: the `android:` section of farm.yaml and its `devices: {SERIAL: ...}` entries
(merged by harness.devices.settings), the adb servers to ask and the network phones to `adb connect`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from harness.devices.base import DeviceContext, DeviceError
from harness.devices.settings import DeviceSettings, check_keys, host_path, merge_settings, seconds

DEFAULT_DEVICE_DIR = "/data/local/tmp/harness"
DEFAULT_ADB_PORT = 5037
DEFAULT_COOLDOWN_TIMEOUT_S = 300.0

BENCHMARK_MODEL_HELP = (
    "No pip package ships LiteRT's native benchmark_model: give the Android build with "
    "--benchmark-model PATH (or `benchmark_model:` under `android:` in farm.yaml). Get the prebuilt "
    "nightly android_aarch64 binary that Google publishes (https://storage.googleapis.com/"
    "tensorflow-nightly-public/prod/tensorflow/release/lite/tools/nightly/latest/"
    "android_aarch64_benchmark_model), or build it from the LiteRT source: "
    "`bazel build -c opt --config=android_arm64 //tflite/tools/benchmark:benchmark_model` "
    "(TensorFlow: //tensorflow/lite/tools/benchmark:benchmark_model). See README, 'Android'."
)
UNAUTHORIZED_HINT = (
    "unlock the phone and accept the 'Allow USB debugging?' prompt (tick 'Always allow from this "
    "computer'); no prompt: Developer options > Revoke USB debugging authorizations, then replug"
)
OFFLINE_HINT = (
    "the phone is attached but not answering adb: unplug and replug it, or run `adb reconnect "
    "offline` on the adb server's host; if it stays offline, reboot the phone"
)
COOLDOWN_KEYS = ("max_temp_c", "max_battery_c", "timeout_s", "poll_s", "zones")


class AndroidConfigError(DeviceError):
    """Bad Android settings (farm.yaml, --adb, options.extra); the message names the fix."""


# ------------------------------------------------------------------------------------ adb servers

def parse_adb_server(text: str) -> tuple[str, int]:
    """`HOST:PORT` (or `[IPv6]:PORT`) -> (host, port). Raises ValueError with the expected form."""
    text = text.strip()
    m = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\s]+):(\d+)", text)
    if not m:
        raise ValueError(f"adb server {text!r} is not HOST:PORT (e.g. 127.0.0.1:5037 or farm-host:5037)")
    host, port = (m[1], m[2]) if m[1] else (m[3], m[4])
    if not 0 < int(port) < 65536:
        raise ValueError(f"adb server {text!r}: port {port} is not in 1..65535")
    return host, int(port)


def server_label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def adb_servers(ctx: DeviceContext) -> list[tuple[str, int, bool]]:
    """(host, port, explicit) of every adb server to ask: --adb and farm.yaml, else the default."""
    given = list(ctx.adb_servers) + list(_farm(ctx).get("adb_servers") or [])
    out: list[tuple[str, int, bool]] = []
    for text in given:
        try:
            host, port = parse_adb_server(str(text))
        except ValueError as exc:
            raise AndroidConfigError(str(exc)) from None
        if (host, port, True) not in out:
            out.append((host, port, True))
    if not out:
        host = os.environ.get("ANDROID_ADB_SERVER_HOST") or "127.0.0.1"
        port = int(os.environ.get("ANDROID_ADB_SERVER_PORT") or DEFAULT_ADB_PORT)
        out.append((host, port, False))
    return out


def connect_targets(ctx: DeviceContext) -> list[str]:
    """`HOST:PORT` of every network phone to `adb connect`: farm.yaml's `connect:` and the
    `android:HOST:PORT` device ids named for this run."""
    given = _farm(ctx).get("connect") or []
    if isinstance(given, str) or not isinstance(given, list):
        raise AndroidConfigError("farm connect: must be a list of HOST:PORT (e.g. connect: [10.0.0.5:5555])")
    out: list[str] = []
    for text in given:
        try:
            out.append(server_label(*parse_adb_server(str(text))))
        except ValueError as exc:
            raise AndroidConfigError(f"farm connect: {exc}".replace("adb server", "phone")) from None
    for dev_id in (getattr(ctx, "extra", None) or {}).get("device_ids") or []:
        kind, _, serial = str(dev_id).partition(":")
        if kind == "android" and is_network_serial(serial):
            out.append(serial)
    return list(dict.fromkeys(out))


def is_network_serial(serial: str) -> bool:
    """True for a serial adb gives a phone reached over TCP (`HOST:PORT`)."""
    try:
        parse_adb_server(serial)
        return True
    except ValueError:
        return False


def _farm(ctx: DeviceContext) -> dict[str, Any]:
    farm = getattr(ctx, "farm", None) or {}
    if not isinstance(farm, dict):
        raise AndroidConfigError(f"the farm config must be a YAML mapping ({AndroidSettings.farm_keys})")
    return farm


# ------------------------------------------------------------------------------------ settings

class Cooldown(BaseModel):
    """Wait before each job until the device is cool, or pause for a fixed time."""

    model_config = ConfigDict(frozen=True)

    max_temp_c: float | None = None  # hottest thermal zone (of those matching `zones`)
    max_battery_c: float | None = None
    timeout_s: float | None = None  # None: measure.cooldown_seconds, else DEFAULT_COOLDOWN_TIMEOUT_S
    poll_s: float = 5.0
    zones: str | None = None  # regex over zone types, e.g. "cpu|gpu"; None: every zone

    @property
    def thermal(self) -> bool:
        return self.max_temp_c is not None or self.max_battery_c is not None


def cooldown_from(section: str, data: Any, base: Cooldown, base_dir: Path | None = None) -> Cooldown:
    """A cooldown setting over `base`: a number (a fixed pause of that many seconds) or a mapping of
    COOLDOWN_KEYS (thresholds)."""
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return base.model_copy(update={"max_temp_c": None, "max_battery_c": None, "timeout_s": float(data)})
    values = check_keys(section, data, COOLDOWN_KEYS, AndroidConfigError)
    for key in ("max_temp_c", "max_battery_c", "timeout_s", "poll_s"):
        if key in values and values[key] is not None:
            try:
                values[key] = float(values[key])
            except (TypeError, ValueError):
                raise AndroidConfigError(f"{section}.{key}: expected a number, got {values[key]!r}") from None
    if values.get("zones") is not None:
        try:
            re.compile(str(values["zones"]))
        except re.error as exc:
            raise AndroidConfigError(f"{section}.zones: not a regular expression: {exc}") from None
        values["zones"] = str(values["zones"])
    return base.model_copy(update=values)


def check_affinity(where: str, mask: Any) -> str | None:
    if mask is None or mask == "":
        return None
    text = format(mask, "x") if isinstance(mask, int) and not isinstance(mask, bool) else str(mask)
    text = text.lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{1,16}", text) or int(text, 16) == 0:
        raise AndroidConfigError(f"{where}: affinity {mask!r} is not a non-zero hex CPU mask (taskset), "
                                 "e.g. f0 for CPUs 4-7")
    return text


def check_device_dir(where: str, value: Any) -> str:
    text = str(value).rstrip("/")
    if not text.startswith("/") or text in ("", "/") or "\0" in text or "\n" in text or \
            any(part == ".." for part in text.split("/")):
        raise AndroidConfigError(f"{where}: {value!r} must be an absolute directory on the device other than / "
                                 "(default /data/local/tmp/harness), without '..' or newlines")
    return text


class AndroidSettings(DeviceSettings):
    """Per-device settings: defaults < farm.yaml `android:` < farm.yaml `devices: {SERIAL: ...}`."""

    section: ClassVar[str] = "android"
    farm_keys: ClassVar[str] = "adb_servers:, android:, devices:"
    error: ClassVar[type[Exception]] = AndroidConfigError

    benchmark_model: str | None = None
    device_dir: str = DEFAULT_DEVICE_DIR
    affinity: str | None = None
    cooldown: Cooldown = Field(default_factory=Cooldown)
    meminfo_interval_s: float = 0.5
    poll_s: float = 2.0  # longest single wait for the DONE marker (one shell call)
    reconnect_timeout_s: float = 30.0
    socket_timeout_s: float = 60.0


AndroidSettings.parsers = {
    "benchmark_model": host_path,
    "device_dir": lambda section, value, current, base_dir: check_device_dir(f"{section}.device_dir", value),
    "affinity": lambda section, value, current, base_dir: check_affinity(section, value),
    "cooldown": lambda section, value, current, base_dir: cooldown_from(f"{section}.cooldown", value, current),
    **{key: seconds(key, AndroidConfigError)
       for key in ("meminfo_interval_s", "poll_s", "reconnect_timeout_s", "socket_timeout_s")},
}
SETTINGS_KEYS = AndroidSettings.keys()  # of the `android:` section and of a `devices: {SERIAL: ...}` entry


def settings_for(ctx: DeviceContext, serial: str | None = None) -> AndroidSettings:
    """The effective settings of one device (serial None: the farm-wide ones). --benchmark-model wins."""
    settings = merge_settings(AndroidSettings(), ctx, serial)
    if ctx.benchmark_model:
        settings = settings.model_copy(update={"benchmark_model": str(Path(ctx.benchmark_model).expanduser())})
    return settings


def check_benchmark_model(ctx: DeviceContext, serials: list[str]) -> None:
    """Raise AndroidConfigError unless every device has a benchmark_model file to push."""
    for serial in serials or [None]:  # type: ignore[list-item]
        path = settings_for(ctx, serial).benchmark_model
        if not path:
            raise AndroidConfigError(f"no benchmark_model for android:{serial}. {BENCHMARK_MODEL_HELP}")
        if not Path(path).is_file():
            raise AndroidConfigError(f"benchmark_model {path!r} (android:{serial}) is not a file. {BENCHMARK_MODEL_HELP}")

