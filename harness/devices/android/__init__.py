"""Android phones over ADB running LiteRT's `benchmark_model`, split the way adbutils splits its device:

- `settings.py` farm.yaml's `android:` settings, adb servers, network phones to connect;
- `units.py` compute units (GPU, CPU, NNAPI, vendor delegates) and benchmark_model's flags;
- `transport.py` every adbutils call of a job (push, md5, launch, poll, kill, collect);
- `kind.py` discovery; `device.py` the device on the remote-agent template; `e2e.py` the e2e composition;
- `graphs.py` the .tflite graphs a job names; `readings.py` and `parse*.py` the device's text, parsed.

This module re-exports what the CLI, the tests and the other kinds use.
"""
from __future__ import annotations

from harness.devices.android.device import AndroidDevice
from harness.devices.android.e2e import E2E_TIMING_METHOD, component_ms
from harness.devices.android.graphs import E2E_COMPONENTS, GRAPHS_HINT, TFLITE_IDENTIFIER, check_tflite, given_graph
from harness.devices.android.kind import AndroidKind
from harness.devices.android.readings import device_state, exact_samples_ms, split_meminfo_samples, summary_ms
from harness.devices.android.settings import (
    BENCHMARK_MODEL_HELP, DEFAULT_DEVICE_DIR, AndroidConfigError, AndroidSettings, Cooldown, adb_servers,
    check_benchmark_model, connect_targets, is_network_serial, parse_adb_server, settings_for,
)
from harness.devices.android.transport import AGENT_SCRIPT, AdbTransport, adb_connect
from harness.devices.android.units import (
    ANDROID_RUNTIMES, OPTION_KEYS, ComputeUnit, benchmark_flags, is_compiled_model_tool, runtime_of, unit_of,
    unit_ran, unit_used,
)
from harness.devices.base import JobFailure

__all__ = [
    "AGENT_SCRIPT", "ANDROID_RUNTIMES", "BENCHMARK_MODEL_HELP", "DEFAULT_DEVICE_DIR", "E2E_COMPONENTS",
    "E2E_TIMING_METHOD", "GRAPHS_HINT", "OPTION_KEYS", "TFLITE_IDENTIFIER", "AdbTransport", "AndroidConfigError",
    "AndroidDevice", "AndroidKind", "AndroidSettings", "ComputeUnit", "Cooldown", "JobFailure", "adb_connect",
    "adb_servers", "benchmark_flags", "check_benchmark_model", "check_tflite", "component_ms", "connect_targets",
    "device_state", "exact_samples_ms", "given_graph", "is_compiled_model_tool", "is_network_serial",
    "parse_adb_server", "runtime_of", "settings_for", "split_meminfo_samples", "summary_ms", "unit_of", "unit_ran",
    "unit_used",
]
