"""Per-device settings as pydantic models, merged by one function for every kind.

The effective settings of one device: the model's defaults <- the farm file's section of its kind
(`android:`, `ios:`; unknown keys are errors) <- the device's entry under `devices: {SERIAL: ...}` (an
entry may also hold other kinds' keys, so unknown keys are left alone there). Each kind's model lists
its keys with one parser each; a parser turns a farm value into the field's value, or raises the kind's
config error naming the key and the fix. Command-line options that win over the farm (--benchmark-model,
--ios-agent) are applied by the kind after the merge.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from harness.devices.base import DeviceContext, positive_seconds

# A key's parser: (section, farm value, the current value, folder of the farm file) -> the new value.
Parser = Callable[[str, Any, Any, "Path | None"], Any]


class DeviceSettings(BaseModel):
    """The base of a kind's settings: frozen fields, plus what the merge needs to know of the kind."""

    model_config = ConfigDict(frozen=True)

    section: ClassVar[str]  # the kind's section of farm.yaml
    farm_keys: ClassVar[str]  # the top-level keys the kind reads, for the message on a farm that is no mapping
    error: ClassVar[type[Exception]]  # the kind's config error
    parsers: ClassVar[dict[str, Parser]]  # key -> parser, in the order messages list the keys

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(cls.parsers)


S = TypeVar("S", bound=DeviceSettings)


def check_keys(section: str, data: Any, known: tuple[str, ...], error: type[Exception]) -> dict[str, Any]:
    """A settings mapping (None: empty) whose keys are all `known`, else `error` naming the unknown ones."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{section} must be a mapping with keys {', '.join(known)}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise error(f"{section}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
    return dict(data)


def seconds(key: str, error: type[Exception]) -> Parser:
    """The parser of a duration key: a number of seconds > 0."""
    return lambda section, value, current, base_dir: positive_seconds(f"{section}.{key}", value, error)


def host_path(section: str, value: Any, current: Any, base_dir: Path | None) -> Any:
    """The parser of a host file key: relative to the farm file's folder; empty keeps the current value."""
    if not value:
        return current
    path = Path(str(value)).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return str(path)


def _apply(settings: S, section: str, data: Any, base_dir: Path | None, strict: bool) -> S:
    cls = type(settings)
    known = cls.keys()
    if not strict and isinstance(data, dict):
        data = {k: v for k, v in data.items() if k in known}
    values = check_keys(section, data, known, cls.error)
    update = {key: cls.parsers[key](section, values[key], getattr(settings, key), base_dir)
              for key in known if key in values}
    return settings.model_copy(update=update)


def merge_settings(defaults: S, ctx: DeviceContext, device: str | None = None) -> S:
    """`defaults` <- the farm's section of the kind <- the farm's `devices: {device: ...}` entry (device None:
    the farm-wide settings)."""
    cls = type(defaults)
    farm = getattr(ctx, "farm", None) or {}
    if not isinstance(farm, dict):
        raise cls.error(f"the farm config must be a YAML mapping ({cls.farm_keys})")
    farm_path = getattr(ctx, "farm_path", None)
    base_dir = Path(farm_path).parent if farm_path else None
    settings = _apply(defaults, f"farm {cls.section}", farm.get(cls.section), base_dir, strict=True)
    devices = farm.get("devices") or {}
    if not isinstance(devices, dict):
        raise cls.error("farm devices: must map a serial to its settings")
    if device is not None and devices.get(device):
        entry = devices[device]
        if not isinstance(entry, dict):
            raise cls.error(f"farm devices.{device}: must be a mapping of settings")
        settings = _apply(settings, f"farm devices.{device}", entry, base_dir, strict=False)
    return settings
