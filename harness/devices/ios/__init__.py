"""iPhones and iPads over usbmux with pymobiledevice3 11.x, driving the Swift agent app:

- `settings.py` farm.yaml's `ios:` settings and the hints for a phone that is not ready;
- `agent.py` the agent app's contract: its JobSpec, container layout, compute units, package hashes;
- `transport.py` every pymobiledevice3 call (one adapter, `Pmd3Services`) as the template's transport;
- `kind.py` discovery; `device.py` the device on the remote-agent template (harness.devices.remote).

This module re-exports what the CLI, the tests and the fixtures use.
"""
from __future__ import annotations

from harness.devices.base import JobFailure
from harness.devices.ios.agent import (
    AGENT_MARK, AGENT_SCHEMA_VERSION, COMPUTE_UNITS, DEFAULT_COMPUTE_UNITS, JOBS_DIR, MODELS_DIR, OPTION_KEYS, check_runtime,
    compute_units_of, device_spec, file_sha256, ipa_info, tree_sha256, tree_size,
)
from harness.devices.ios.device import IOSDevice
from harness.devices.ios.kind import CHIP_NAMES, IOSKind
from harness.devices.ios.settings import DEFAULT_BUNDLE_ID, IOSConfigError, IOSSettings, settings_for
from harness.devices.ios.transport import SERVICES_ENV, Pmd3Services, UsbmuxTransport, load_services

__all__ = [
    "AGENT_MARK", "AGENT_SCHEMA_VERSION", "CHIP_NAMES", "COMPUTE_UNITS", "DEFAULT_BUNDLE_ID", "DEFAULT_COMPUTE_UNITS", "JOBS_DIR",
    "MODELS_DIR", "OPTION_KEYS", "SERVICES_ENV", "IOSConfigError", "IOSDevice", "IOSKind", "IOSSettings",
    "JobFailure", "Pmd3Services", "UsbmuxTransport", "check_runtime", "compute_units_of", "device_spec",
    "file_sha256", "ipa_info", "load_services", "settings_for", "tree_sha256", "tree_size",
]
