"""Android phones over ADB: discovery, pushing what a job needs, LiteRT `benchmark_model` runs.

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

A job on a phone:
1. push (each file only when its md5 on the device differs): `benchmark_model` (the user's build:
   no pip package ships it), `device_agents/android/run_job.sh`, and the variant's .tflite (from
   `harness.export.ensure_artifact`, or the host file named by `options.extra.graph`);
2. cooldown: wait until the hottest thermal zone and the battery are under their thresholds (with
   a timeout), or a fixed pause (`measure.cooldown_seconds`);
3. start `run_job.sh` in the background (it survives a dropped adb connection), which runs
   benchmark_model with the job's flags (optionally under `taskset MASK`), records thermal zones
   and battery before and after, and samples `dumpsys meminfo PID` while it runs;
4. poll for its DONE marker, pull its files into the job's workdir, parse them
   (`harness.devices.android_parse`) into a JobResult.

An `e2e` job runs steps 2-4 three times in one device session, for the text encoder, the UNet and the
VAE decoder .tflite (`options.extra.graphs.{text_encoder,unet,vae_decoder}`, else
`ensure_artifact(..., component=...)`), and composes the three medians with the host's measured
scheduler cost (`harness.workloads.e2e.measure_scheduler_ms`) into one result
(`harness.composition.composed_components`; README "Android", *End-to-end on a phone*).

Every string that reaches the device shell goes through `shlex.quote`.

Failures are JobResults with an error kind: `crash` (benchmark_model exited non-zero; the stderr
tail is kept), `parse` (output that is not benchmark_model's), `disk_full` (adb refused a push),
`timeout`, `device` (unauthorized), `input` (bad options, no benchmark_model, no artifact),
`export`. A device that drops (connection closed, offline, gone) raises DeviceDisconnectedError,
which the runner retries; before the retry the device is given `reconnect_timeout_s` to come back.

Runtime options (`options.extra` of a suite, e.g. `--set options.extra.gpu_backend=cl`):
`use_gpu`, `gpu_backend` (cl|gl), `gpu_precision_loss_allowed`, `enable_op_profiling`,
`report_peak_memory_footprint` (default true), `run_delay`, `warmup_min_secs` (default 0, so
`measure.warmup_runs` is the number of warm-up runs), `num_threads`, `affinity` (taskset hex mask),
`cooldown` (seconds, or {max_temp_c, max_battery_c, timeout_s, poll_s, zones}), `graph` (a host
.tflite to run instead of exporting the variant), `graphs` (e2e: {text_encoder, unet, vae_decoder}
host .tflite paths, all three), `flags` ({name: value} passed to benchmark_model
as --name=value), `meminfo_interval_s`. From `measure`: iterations -> --num_runs, warmup_runs ->
--warmup_runs, min_seconds -> --min_secs, max_seconds -> --max_secs, timeout_seconds bounds the job,
cooldown_seconds is the pause (or the cooldown wait's timeout when thresholds are set).

Samples: benchmark_model prints no per-run times, only count/first/curr/min/max/avg/std (and
p5/median/p95 in newer builds). `samples_ms` holds exact per-run values only where those imply them
(one run, two runs, or every run the same); the summary is always in `execution.latency_summary_ms`.
"""
from __future__ import annotations

import hashlib
import math
import re
import shlex
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from harness import standin
from harness.resources import agent_path
from harness.devices.android_parse import (
    THERMAL_ZONES_SHELL_CMD,
    BenchmarkModelOutput,
    ParseError,
    RunStats,
    parse_battery_temp,
    parse_benchmark_model,
    parse_devices_gles,
    parse_getprop,
    parse_meminfo_graphics,
    parse_meminfo_total_ram,
    parse_thermal_zones,
    split_gles,
)
from harness.devices.base import (
    Device, DeviceContext, DeviceDisconnectedError, DeviceError, DeviceInfo, DeviceKind,
    DeviceUnavailableError, JobFailure, Artifact, ProgressFn, export_failure, memoized_artifact, positive_seconds,
)
from harness.protocol import Execution, JobResult, JobSpec, LatencySummary, MemoryFigures, write_json_atomic
from harness.runtimes import UnknownRuntimeError, get_runtime, runtimes_of

AGENT_SCRIPT = agent_path("android", "run_job.sh")  # harness.resources
DEFAULT_DEVICE_DIR = "/data/local/tmp/harness"
DEFAULT_ADB_PORT = 5037
THERMAL_DIR = "/sys/class/thermal"
BATTERY_TEMP_FILE = "/sys/class/power_supply/battery/temp"
DEFAULT_COOLDOWN_TIMEOUT_S = 300.0
_STDERR_TAIL_CHARS = 4000

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

# Keys of the `android:` section of farm.yaml and of a `devices: {SERIAL: ...}` entry.
SETTINGS_KEYS = ("benchmark_model", "device_dir", "affinity", "cooldown", "meminfo_interval_s",
                 "poll_s", "reconnect_timeout_s", "socket_timeout_s")
COOLDOWN_KEYS = ("max_temp_c", "max_battery_c", "timeout_s", "poll_s", "zones")
# Keys of `options.extra` this device reads.
OPTION_KEYS = ("use_gpu", "gpu_backend", "gpu_precision_loss_allowed", "allow_cpu_fallback", "precision",
               "enable_op_profiling",
               "report_peak_memory_footprint", "run_delay", "warmup_min_secs", "num_threads",
               "affinity", "cooldown", "graph", "graphs", "flags", "meminfo_interval_s",
               "nnapi_accelerator_name", "external_delegate_path", "external_delegate_options")
# Runtimes an Android job takes (`options.runtime`), each a compute unit benchmark_model reaches:
# the GPU delegate, the CPU (XNNPACK), NNAPI (the vendor's NPU/DSP/GPU driver, optionally one named
# accelerator), or an external delegate library (a vendor NPU delegate such as Qualcomm's QNN
# libQnnTFLiteDelegate.so). `torch`, the suite default phones cannot run, means litert-gpu.
ANDROID_RUNTIMES = runtimes_of("android")  # harness.runtimes: litert-cpu, litert-gpu, litert-nnapi, litert-delegate
# The .tflite components of an `e2e` job, in the order they run (one benchmark_model run each).
E2E_COMPONENTS = ("text_encoder", "unet", "vae_decoder")
E2E_TIMING_METHOD = "composed: benchmark_model medians (text encoder, UNet, VAE decoder) + host scheduler"
GRAPHS_HINT = ("give the three graphs with --set options.extra.graphs.text_encoder=PATH --set "
               "options.extra.graphs.unet=PATH --set options.extra.graphs.vae_decoder=PATH (host .tflite files)")
# Files run_job.sh leaves in its result directory, pulled after the run.
RESULT_FILES = ("exit_code", "stdout.txt", "stderr.txt", "meminfo.txt", "thermal_before.txt",
                "thermal_after.txt", "battery_before.txt", "battery_after.txt", "started_at",
                "ended_at", "agent.log")
RESULT_PROTO = "result.pb"
_FILE_MARK = "@@harness-file"
_PROTO_MARK = "@@harness-result-proto"


class AndroidConfigError(DeviceError):
    """Bad Android settings (farm.yaml, --adb, options.extra); the message names the fix."""


# ------------------------------------------------------------------------------------ settings

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


def _label(host: str, port: int) -> str:
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
        import os

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
            out.append(_label(*parse_adb_server(str(text))))
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


def adb_connect(client, target: str, timeout_s: float = 10.0) -> str | None:
    """`adb connect TARGET` through `client`'s server: None when connected, else adb's answer."""
    from adbutils.errors import AdbError

    try:
        answer = client.connect(target, timeout=timeout_s).strip()
    except (AdbError, OSError, EOFError) as exc:
        return str(exc).strip() or type(exc).__name__
    return None if answer.startswith(("connected to", "already connected to")) else answer


def _farm(ctx: DeviceContext) -> dict[str, Any]:
    farm = getattr(ctx, "farm", None) or {}
    if not isinstance(farm, dict):
        raise AndroidConfigError("the farm config must be a YAML mapping (adb_servers:, android:, devices:)")
    return farm


@dataclass(frozen=True)
class Cooldown:
    """Wait before each job until the device is cool, or pause for a fixed time."""

    max_temp_c: float | None = None  # hottest thermal zone (of those matching `zones`)
    max_battery_c: float | None = None
    timeout_s: float | None = None  # None: measure.cooldown_seconds, else DEFAULT_COOLDOWN_TIMEOUT_S
    poll_s: float = 5.0
    zones: str | None = None  # regex over zone types, e.g. "cpu|gpu"; None: every zone

    @property
    def thermal(self) -> bool:
        return self.max_temp_c is not None or self.max_battery_c is not None


@dataclass(frozen=True)
class AndroidSettings:
    """Per-device settings: defaults < farm.yaml `android:` < farm.yaml `devices: {SERIAL: ...}`."""

    benchmark_model: str | None = None
    device_dir: str = DEFAULT_DEVICE_DIR
    affinity: str | None = None
    cooldown: Cooldown = field(default_factory=Cooldown)
    meminfo_interval_s: float = 0.5
    poll_s: float = 2.0  # longest single wait for the DONE marker (one shell call)
    reconnect_timeout_s: float = 30.0
    socket_timeout_s: float = 60.0


def _check_keys(section: str, data: Any, known: tuple[str, ...]) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AndroidConfigError(f"{section} must be a mapping with keys {', '.join(known)}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise AndroidConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
    return dict(data)


def _cooldown_from(section: str, data: Any, base: Cooldown) -> Cooldown:
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return replace(base, max_temp_c=None, max_battery_c=None, timeout_s=float(data))
    values = _check_keys(section, data, COOLDOWN_KEYS)
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
    return replace(base, **values)


def _check_affinity(where: str, mask: Any) -> str | None:
    if mask is None or mask == "":
        return None
    text = format(mask, "x") if isinstance(mask, int) and not isinstance(mask, bool) else str(mask)
    text = text.lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{1,16}", text) or int(text, 16) == 0:
        raise AndroidConfigError(f"{where}: affinity {mask!r} is not a non-zero hex CPU mask (taskset), "
                                 "e.g. f0 for CPUs 4-7")
    return text


def _merge(settings: AndroidSettings, section: str, data: dict[str, Any], base_dir: Path | None,
           strict: bool = True) -> AndroidSettings:
    """Apply one settings section. `strict`: unknown keys are errors (a `devices:` entry may also hold
    other kinds' keys, so it is not strict)."""
    if not strict and isinstance(data, dict):
        data = {k: v for k, v in data.items() if k in SETTINGS_KEYS}
    values = _check_keys(section, data, SETTINGS_KEYS)
    out = settings
    if "benchmark_model" in values and values["benchmark_model"]:
        path = Path(str(values["benchmark_model"])).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        out = replace(out, benchmark_model=str(path))
    if "device_dir" in values:
        out = replace(out, device_dir=_check_device_dir(f"{section}.device_dir", values["device_dir"]))
    if "affinity" in values:
        out = replace(out, affinity=_check_affinity(section, values["affinity"]))
    if "cooldown" in values:
        out = replace(out, cooldown=_cooldown_from(f"{section}.cooldown", values["cooldown"], out.cooldown))
    for key in ("meminfo_interval_s", "poll_s", "reconnect_timeout_s", "socket_timeout_s"):
        if key in values:
            out = replace(out, **{key: positive_seconds(f"{section}.{key}", values[key], AndroidConfigError)})
    return out


def _check_device_dir(where: str, value: Any) -> str:
    text = str(value).rstrip("/")
    if not text.startswith("/") or text in ("", "/") or "\0" in text or "\n" in text or \
            any(part == ".." for part in text.split("/")):
        raise AndroidConfigError(f"{where}: {value!r} must be an absolute directory on the device other than / "
                                 "(default /data/local/tmp/harness), without '..' or newlines")
    return text


def settings_for(ctx: DeviceContext, serial: str | None = None) -> AndroidSettings:
    """The effective settings of one device (serial None: the farm-wide ones). --benchmark-model wins."""
    farm = _farm(ctx)
    farm_path = getattr(ctx, "farm_path", None)
    base_dir = Path(farm_path).parent if farm_path else None
    settings = _merge(AndroidSettings(), "farm android", farm.get("android") or {}, base_dir)
    devices = farm.get("devices") or {}
    if not isinstance(devices, dict):
        raise AndroidConfigError("farm devices: must map a serial to its settings")
    if serial is not None and devices.get(serial):
        entry = devices[serial]
        if not isinstance(entry, dict):
            raise AndroidConfigError(f"farm devices.{serial}: must be a mapping of settings")
        settings = _merge(settings, f"farm devices.{serial}", entry, base_dir, strict=False)
    if ctx.benchmark_model:
        settings = replace(settings, benchmark_model=str(Path(ctx.benchmark_model).expanduser()))
    return settings


def check_benchmark_model(ctx: DeviceContext, serials: list[str]) -> None:
    """Raise AndroidConfigError unless every device has a benchmark_model file to push."""
    for serial in serials or [None]:  # type: ignore[list-item]
        path = settings_for(ctx, serial).benchmark_model
        if not path:
            raise AndroidConfigError(f"no benchmark_model for android:{serial}. {BENCHMARK_MODEL_HELP}")
        if not Path(path).is_file():
            raise AndroidConfigError(f"benchmark_model {path!r} (android:{serial}) is not a file. {BENCHMARK_MODEL_HELP}")


# ------------------------------------------------------------------------------------ pure helpers

def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise JobFailure("input", f"options.extra.{name} must be true or false, got {value!r}")


def _number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise JobFailure("input", f"options.extra.{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise JobFailure("input", f"options.extra.{name} must be finite, got {value!r}")
    return number


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


@dataclass(frozen=True)
class ComputeUnit:
    """Where an Android job asks benchmark_model to run: the runtime, the unit's label for reports
    ("gpu", "cpu", "nnapi", "nnapi:qti-dsp", "delegate:libQnnTFLiteDelegate.so"), the flags that select
    it, and for an external delegate the library (host path to push, or device path) and the name of
    the delegate benchmark_model reports applying."""

    runtime: str
    label: str
    flags: tuple[tuple[str, Any], ...]
    use_gpu: bool = False
    library_host: str | None = None  # an external delegate .so on the host, pushed to the device
    library_device: str | None = None
    expect_delegate: str | None = None  # "GPU", "NNAPI", "EXTERNAL" (as benchmark_model names them)


def unit_of(spec: JobSpec, device_dir: str = "") -> ComputeUnit:
    """The compute unit of a job (README "Android", *Compute units*). Raises JobFailure (input) for a
    runtime Android lacks or a bad option."""
    runtime = spec.options.runtime
    extra = spec.options.extra
    try:
        get_runtime(runtime).on("android")
    except UnknownRuntimeError as exc:
        raise JobFailure("input", str(exc)) from None
    if runtime == "litert-nnapi":
        accel = extra.get("nnapi_accelerator_name")
        flags: list[tuple[str, Any]] = [("use_gpu", False), ("use_nnapi", True),
                                        ("nnapi_allow_fp16", spec.options.dtype != "fp32")]
        if accel is not None:
            if not re.fullmatch(r"[A-Za-z0-9_.:-]+", str(accel)):
                raise JobFailure("input", f"options.extra.nnapi_accelerator_name {accel!r} is not an NNAPI device "
                                  "name (e.g. qti-dsp, google-edgetpu; `adb shell dumpsys nnapi` lists them)")
            flags.append(("nnapi_accelerator_name", str(accel)))
        return ComputeUnit(runtime, f"nnapi:{accel}" if accel else "nnapi", tuple(flags), expect_delegate="NNAPI")
    if runtime == "litert-delegate":
        lib = extra.get("external_delegate_path")
        if not lib:
            raise JobFailure("input", "runtime litert-delegate needs the vendor delegate library: --set "
                              "options.extra.external_delegate_path=PATH (a .so on this host, pushed to the phone, "
                              "or an absolute path on the phone, e.g. /vendor/lib64/libQnnTFLiteDelegate.so)")
        local = Path(str(lib)).expanduser()
        if local.is_file():
            host, device = str(local), f"{device_dir}/lib/{_safe_name(local.name)}"
        elif str(lib).startswith("/"):
            host, device = None, str(lib)
        else:
            raise JobFailure("input", f"options.extra.external_delegate_path {str(lib)!r} is neither a file on this "
                              "host nor an absolute path on the phone")
        flags = [("use_gpu", False), ("external_delegate_path", device)]
        opts = extra.get("external_delegate_options")
        if opts:
            if isinstance(opts, dict):
                opts = ";".join(f"{k}:{_flag_value(v)}" for k, v in opts.items())
            flags.append(("external_delegate_options", str(opts)))
        return ComputeUnit(runtime, f"delegate:{Path(device).name}", tuple(flags), library_host=host,
                           library_device=device, expect_delegate="EXTERNAL")
    use_gpu = runtime == "litert-gpu" or (runtime == "torch" and spec.options.accelerator != "cpu")
    if "use_gpu" in extra:
        use_gpu = _bool("use_gpu", extra["use_gpu"])
    if use_gpu:
        return ComputeUnit("litert-gpu", "gpu", (("use_gpu", True),), use_gpu=True, expect_delegate="GPU")
    return ComputeUnit("litert-cpu", "cpu", (("use_gpu", False),))


def runtime_of(spec: JobSpec) -> tuple[str, bool]:
    """(runtime name, use_gpu) of a job: `unit_of` in short."""
    unit = unit_of(spec)
    return unit.runtime, unit.use_gpu


def unit_ran(unit: ComputeUnit, delegates: Any) -> str:
    """The unit a run really used, from what benchmark_model said about the delegates it applied:
    the requested label, with "(partial: N delegate kernels, the rest on the CPU)" when the delegate
    took part of the graph, or "cpu (the X delegate took no node)" when it took none."""
    if unit.expect_delegate is None:
        return unit.label
    d = _applied(unit, delegates)
    if d is None:
        return f"{unit.label} (benchmark_model did not report applying the delegate)"
    coverage = getattr(d, "coverage", None)
    if coverage == "none":
        return f"cpu (the {getattr(d, 'name', '')} delegate took no node)"
    if coverage == "partial":
        kernels = getattr(d, "delegate_kernels", None)
        return f"{unit.label} (partial{f': {kernels} delegate kernels' if kernels else ''}, the rest on the CPU)"
    return unit.label


def _applied(unit: ComputeUnit, delegates: Any) -> Any:
    """The delegate benchmark_model reported applying for `unit` (None: it reported none)."""
    for d in delegates or ():
        name = str(getattr(d, "name", "")).upper()
        if unit.expect_delegate in name or (unit.expect_delegate == "EXTERNAL" and name not in
                                            ("XNNPACK", "GPU", "NNAPI")):
            return d
    return None


def is_compiled_model_tool(supported: set[str] | None) -> bool:
    """Whether a benchmark_model (by the flags its --help lists) is LiteRT 2.x's CompiledModel tool
    (`//litert/tools:benchmark_model`: --use_cpu, --require_full_delegation, --gpu-precision) rather
    than the classic interpreter tool (--use_gpu with --gpu_precision_loss_allowed)."""
    return bool(supported) and "gpu-precision" in supported and "use_cpu" in supported


def _allows_cpu(spec: JobSpec) -> bool:
    try:
        return bool(get_runtime("litert-gpu").parse_options(spec.options.extra).allow_cpu_fallback)
    except ValueError:
        return False


def unit_used(unit: ComputeUnit, parsed: Any, args: list[str]) -> str:
    """The unit a run used: from the delegate lines of the classic tool (`unit_ran`); LiteRT's
    CompiledModel tool prints none, and with --require_full_delegation=true it fails rather than split
    a graph, so a run that finished with that flag ran wholly on the unit."""
    if getattr(parsed, "format", "") == "compiled_model" and unit.use_gpu:
        if "--require_full_delegation=true" in args:
            return unit.label
        return (f"{unit.label} (partial or full: CPU fallback was allowed and LiteRT's CompiledModel tool does not "
                "say how much ran on the CPU)")
    return unit_ran(unit, parsed.delegates)


def delegation_used(unit: ComputeUnit, parsed: Any, args: list[str]) -> dict[str, Any]:
    """The run's Delegation (harness.protocol) from the same evidence as `unit_used`: the classic tool's
    delegate line, or LiteRT's CompiledModel tool finishing under --require_full_delegation=true."""
    if unit.expect_delegate is None:
        return {}  # the CPU asked: nothing to delegate
    if getattr(parsed, "format", "") == "compiled_model" and unit.use_gpu:
        full = "--require_full_delegation=true" in args
        return {"state": "full" if full else "unknown", "evidence": "benchmark_model (CompiledModel) " + (
            "finished under --require_full_delegation=true" if full else "with CPU fallback allowed prints no split")}
    d = _applied(unit, parsed.delegates)
    if d is None:
        return {"evidence": "benchmark_model did not report applying the delegate"}
    return {"state": {"complete": "full", "partial": "partial", "none": "none"}[d.coverage],
            "delegated_nodes": d.delegate_kernels, "evidence": f"benchmark_model: {d.name} delegate, coverage {d.coverage}"}


def benchmark_flags(spec: JobSpec, graph: str, *, supported: set[str] | None,
                    result_file: str | None = None, device_dir: str = "") -> tuple[list[str], list[str]]:
    """The benchmark_model arguments of a job, and the requested flags this binary lacks.

    `supported` is the set of flag names the binary's --help lists (None: unknown, every standard
    flag is passed and `result_file_path` is left out). Raises JobFailure for bad option values,
    and when the GPU is wanted but the binary has no --use_gpu.
    """
    extra = spec.options.extra
    m = spec.measure
    unit = unit_of(spec, device_dir)
    use_gpu = unit.use_gpu
    wanted: list[tuple[str, Any]] = [
        ("graph", graph),
        ("num_runs", max(1, int(m.iterations))),
        ("warmup_runs", max(0, int(m.warmup_runs))),
        ("warmup_min_secs", _number("warmup_min_secs", extra.get("warmup_min_secs", 0.0))),
        ("min_secs", float(m.min_seconds)),
        ("max_secs", float(m.max_seconds)),
    ]
    threads = extra.get("num_threads", spec.options.threads)
    if threads is not None and int(_number("num_threads", threads)) > 0:
        wanted.append(("num_threads", int(_number("num_threads", threads))))
    wanted.extend(unit.flags)
    if use_gpu:
        compiled = is_compiled_model_tool(supported)
        try:
            gpu_opts = get_runtime("litert-gpu").parse_options(extra)
        except ValueError as exc:
            raise JobFailure("input", str(exc)) from None
        backend = extra.get("gpu_backend")
        if backend is not None:
            known = ("opencl", "webgpu", "opengl", "gl") if compiled else ("cl", "gl")
            if str(backend) not in known:
                tool = "LiteRT 2.x's CompiledModel benchmark_model" if compiled else "this benchmark_model"
                raise JobFailure("input", f"options.extra.gpu_backend must be one of {', '.join(known)} for {tool}, "
                                  f"got {backend!r}")
            if not (compiled and str(backend) == "opencl"):  # the CompiledModel tool's default is OpenCL
                wanted.append(("gpu_backend", str(backend)))
        if compiled:  # LiteRT 2.x: accelerators by flag; full delegation unless the CPU may take the rest
            wanted.append(("use_cpu", gpu_opts.allow_cpu_fallback))
            wanted.append(("require_full_delegation", not gpu_opts.allow_cpu_fallback))
            fp32 = gpu_opts.precision == "fp32" or spec.options.dtype == "fp32"
            wanted.append(("gpu-precision", "fp32" if fp32 else "fp16"))
        else:
            # fp16, and int8 weight-only (weights dequantized, compute in fp16 like CUDA int8 jobs): fp16 GPU math.
            precision = extra.get("gpu_precision_loss_allowed",
                                  spec.options.dtype != "fp32" and gpu_opts.precision != "fp32")
            wanted.append(("gpu_precision_loss_allowed", _bool("gpu_precision_loss_allowed", precision)))
            if supported is None or "require_full_delegation" in supported:
                wanted.append(("require_full_delegation", not gpu_opts.allow_cpu_fallback))
    if "run_delay" in extra:
        wanted.append(("run_delay", _number("run_delay", extra["run_delay"])))
    if _bool("enable_op_profiling", extra.get("enable_op_profiling", False)):
        wanted.append(("enable_op_profiling", True))
    if _bool("report_peak_memory_footprint", extra.get("report_peak_memory_footprint", True)):
        wanted.append(("report_peak_memory_footprint", True))
    if result_file is not None and supported is not None and "result_file_path" in supported:
        wanted.append(("result_file_path", result_file))
    user_flags = extra.get("flags") or {}
    if not isinstance(user_flags, dict):
        raise JobFailure("input", "options.extra.flags must map benchmark_model flag names to values")
    for name, value in user_flags.items():
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", str(name)):
            raise JobFailure("input", f"options.extra.flags: {name!r} is not a benchmark_model flag name")
        wanted = [(n, v) for n, v in wanted if n != name] + [(str(name), value)]
    args: list[str] = []
    missing: list[str] = []
    for name, value in wanted:
        if supported is not None and name not in supported:
            if name == "use_gpu" and value is True:
                raise JobFailure("input", "this benchmark_model has no --use_gpu flag (built without the GPU "
                                  "delegate); use a build with GPU support, or runtime litert-cpu")
            if name in ("use_nnapi", "external_delegate_path"):
                raise JobFailure("input", f"this benchmark_model has no --{name} flag, so runtime {unit.runtime} "
                                  "cannot reach its unit; use a full build of LiteRT's benchmark_model (README "
                                  "'Android'), or runtime litert-gpu / litert-cpu")
            missing.append(name)
            continue
        args.append(f"--{name}={_flag_value(value)}")
    return args, missing


def exact_samples_ms(stats: RunStats) -> list[float]:
    """Per-run times implied exactly by a stat line: one run, two runs (first, curr), all the same."""
    if stats.count == 0:
        return []
    if stats.count == 1:
        return [stats.curr_us / 1000.0]
    if stats.count == 2:
        return [stats.first_us / 1000.0, stats.curr_us / 1000.0]
    if stats.min_us == stats.max_us:
        return [stats.min_us / 1000.0] * stats.count
    return []


def summary_ms(stats: RunStats) -> dict[str, Any]:
    out: dict[str, Any] = {"n": stats.count}
    for key in ("first", "curr", "min", "max", "avg", "std", "p5", "median", "p95"):
        value = getattr(stats, f"{key}_us")
        out[key] = None if value is None or math.isnan(value) or not stats.count else value / 1000.0
    return out


def device_state(thermal_text: str | None, battery_text: str | None) -> dict[str, Any]:
    """Thermal zones and battery temperature as recorded by run_job.sh (unreadable parts left out)."""
    state: dict[str, Any] = {}
    if thermal_text and thermal_text.strip():
        try:
            zones = parse_thermal_zones(thermal_text)
        except ParseError as exc:
            state["thermal_error"] = str(exc)
        else:
            temps: dict[str, float] = {}
            for z in zones:
                if z.temp_c is None:
                    continue
                key = z.type or z.zone
                temps[key if key not in temps else f"{key}#{z.zone}"] = z.temp_c
            state["thermal_c"] = temps
            plausible = {k: v for k, v in temps.items() if -30.0 < v < 150.0}
            if plausible:
                hottest = max(plausible, key=plausible.__getitem__)
                state["hottest_zone"], state["hottest_c"] = hottest, plausible[hottest]
    if battery_text and battery_text.strip():
        try:
            state["battery_c"] = parse_battery_temp(battery_text)
        except ParseError as exc:
            state["battery_error"] = str(exc)
    return state


def split_meminfo_samples(text: str) -> list[tuple[float | None, str]]:
    """run_job.sh's meminfo.txt -> [(unix seconds, one `dumpsys meminfo` text)]."""
    samples: list[tuple[float | None, str]] = []
    current: list[str] | None = None
    stamp: float | None = None
    for line in text.splitlines():
        if line.startswith("@@sample "):
            if current is not None:
                samples.append((stamp, "\n".join(current)))
            parts = line.split()
            stamp = float(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            current = []
        elif current is not None:
            current.append(line)
    if current is not None:
        samples.append((stamp, "\n".join(current)))
    return samples


def given_graph(spec: JobSpec, component: str = "unet") -> tuple[str, str | None]:
    """(where it came from, host path or None) of the user's .tflite for `component`.

    `options.extra.graphs` maps text_encoder, unet and vae_decoder to host .tflite paths; when given, all
    three are required (a partial or malformed mapping is an input failure). `options.extra.graph` is the
    UNet's (the unet_iteration workload, or the e2e UNet when `graphs` is absent).
    """
    extra = spec.options.extra
    graphs = extra.get("graphs")
    if graphs is not None:
        if not isinstance(graphs, dict):
            raise JobFailure("input", f"options.extra.graphs must map {', '.join(E2E_COMPONENTS)} to host .tflite "
                              f"paths, got {graphs!r}; {GRAPHS_HINT}")
        unknown = sorted(set(map(str, graphs)) - set(E2E_COMPONENTS))
        if unknown:
            raise JobFailure("input", f"options.extra.graphs: unknown component(s) {', '.join(unknown)}; known: "
                              f"{', '.join(E2E_COMPONENTS)}")
        missing = [c for c in E2E_COMPONENTS if not graphs.get(c)]
        if missing:
            raise JobFailure("input", f"options.extra.graphs lacks {', '.join(missing)}: when any graph is given, "
                              f"all three are required; {GRAPHS_HINT}")
        if component == "unet" and extra.get("graph") and spec.workload != "e2e":
            return "options.extra.graph", str(extra["graph"])
        return f"options.extra.graphs.{component}", str(graphs[component])
    if component == "unet" and extra.get("graph"):
        return "options.extra.graph", str(extra["graph"])
    return "options.extra.graph", None


TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer file identifier of a .tflite (bytes 4..8)


def check_tflite(path: Path, where: str) -> None:
    """Raise an input JobFailure unless `path` is a readable file with the .tflite identifier."""
    if not path.is_file():
        raise JobFailure("input", f"{where} {str(path)!r} is not a file; give the host path of a .tflite, or "
                          "leave it out to export the variant")
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise JobFailure("input", f"{where} {str(path)!r} cannot be read: {exc}") from None
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        raise JobFailure("input", f"{where} {str(path)!r} is not a .tflite model (no {TFLITE_IDENTIFIER.decode()} "
                          "flatbuffer identifier at byte 4); give a LiteRT .tflite file")


def component_ms(result: JobResult) -> tuple[float, str]:
    """(ms, statistic) of one benchmark_model run: the median of the timed runs (the tool's printed
    median, else the median of the per-run times its stat line implies), else its average."""
    import statistics

    summary = result.execution.latency_summary_ms or LatencySummary()
    if summary.median is not None:
        return float(summary.median), "median"
    if result.samples_ms:
        return float(statistics.median(result.samples_ms)), "median"
    if summary.avg is not None:
        return float(summary.avg), "avg (this benchmark_model prints no median)"
    raise JobFailure("parse", "benchmark_model printed no timed-run statistics to compose from")


def _tail(text: str, limit: int = _STDERR_TAIL_CHARS) -> str:
    return text[-limit:]


def _safe_name(text: str) -> str:
    """A path component: keeps the text (quoting protects it), drops only '/', NUL and newlines."""
    return re.sub(r"[/\x00\n\r]", "_", text)[:120] or "_"


def _component_records(results: dict[str, JobResult]) -> dict[str, dict[str, Any]]:
    """Each e2e component run's own record: its benchmark_model extra (latency/warm-up summaries, flags,
    artifact sha/size/cached, delegates, GPU memory samples, ...) plus init, first run, memory, device state."""
    out: dict[str, dict[str, Any]] = {}
    for component, res in results.items():
        rec = dict(res.extra)
        rec.update(execution=res.execution.model_dump(mode="json"), status=res.status, init_ms=res.init_ms,
                   first_run_ms=res.first_run_ms,
                   samples_ms=list(res.samples_ms), warmup_ms=list(res.warmup_ms),
                   memory=res.memory.model_dump(), op_times_ms=dict(res.op_times_ms),
                   device_state_before=res.device_state_before, device_state_after=res.device_state_after,
                   started_at=res.started_at, ended_at=res.ended_at)
        if res.error is not None:
            rec["error"] = res.error.model_dump()
        else:
            try:
                rec["ms"], rec["statistic"] = component_ms(res)
            except JobFailure as exc:
                rec["ms"], rec["statistic"] = None, exc.message
        out[component] = rec
    return out


def _largest_peaks(results: dict[str, JobResult]) -> tuple[MemoryFigures, dict[str, str]]:
    """The e2e memory: each peak figure is the largest of the component runs (which one: the dict);
    weight_bytes is the three components' sum (the pipeline's weights), where all three are known."""
    mem = MemoryFigures()
    which: dict[str, str] = {}
    for attr in ("peak_rss_bytes", "gpu_bytes", "tensor_bytes_planned"):
        values = {c: getattr(r.memory, attr) for c, r in results.items() if getattr(r.memory, attr) is not None}
        if values:
            top = max(values, key=values.__getitem__)
            setattr(mem, attr, values[top])
            which[attr] = top
    weights = [r.memory.weight_bytes for r in results.values()]
    if weights and all(w is not None for w in weights):
        mem.weight_bytes = sum(weights)
    return mem, which


# ------------------------------------------------------------------------------------ the kind

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
        import adbutils
        from adbutils.errors import AdbError

        settings_for(ctx)  # validate the farm's android section early (exit 2 with the fix)
        infos: list[DeviceInfo] = []
        seen: set[str] = set()
        targets = connect_targets(ctx)
        connected = False
        for host, port, explicit in adb_servers(ctx):
            server = _label(host, port)
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
        from adbutils.errors import AdbError

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


# ------------------------------------------------------------------------------------ the device

class AndroidDevice(Device):
    kind = "android"

    def __init__(self, info: DeviceInfo, ctx: DeviceContext):
        import adbutils

        super().__init__(info, ctx)
        self.serial = info.id.split(":", 1)[1]
        self.server = str(info.extra.get("adb_server") or _label(*adb_servers(ctx)[0][:2]))
        host, port = parse_adb_server(self.server)
        self.settings = settings_for(ctx, self.serial)
        self._client = adbutils.AdbClient(host=host, port=port, socket_timeout=self.settings.socket_timeout_s)
        self._dev = self._client.device(self.serial)
        d = self.settings.device_dir
        self.remote_bin = f"{d}/bin/benchmark_model"
        self.remote_agent = f"{d}/run_job.sh"
        # counters over this device's lifetime in the run
        self.bytes_pushed = 0
        self.files_pushed = 0
        self.files_skipped = 0
        self._md5_cache: dict[tuple[str, int, int], str] = {}
        self._sha_cache: dict[tuple[str, int, int], str] = {}
        self._artifacts: dict[str, Artifact | JobFailure] = {}
        self._supported_flags: set[str] | None = None
        self._probed = False
        self._dropped = False
        self._gone = False
        self._stale_possible = True  # an earlier run or attempt may have left a job running on the device
        self._current_out: str | None = None
        self.prepare_note: str | None = None
        self.prepare_push: dict[str, Any] | None = None  # what prepare() pushed, reported with the next job

    # ---- adb plumbing

    def _as_device_error(self, exc: BaseException, doing: str) -> DeviceError:
        from adbutils.errors import AdbConnectionError, AdbTimeout

        where = f"{self.id} (adb server {self.server})"
        msg = str(exc).strip()
        if isinstance(exc, AdbTimeout) or isinstance(exc, socket.timeout):
            return DeviceDisconnectedError(f"{where} stopped answering while {doing} (timeout); it may have dropped")
        if isinstance(exc, AdbConnectionError):
            return DeviceDisconnectedError(f"the adb server {self.server} is unreachable while {doing}: {msg}")
        low = msg.lower()
        if "unauthorized" in low:
            return DeviceUnavailableError(f"{where} is unauthorized ({doing}): {UNAUTHORIZED_HINT}")
        if "offline" in low:
            return DeviceDisconnectedError(f"{where} went offline while {doing}")
        if "not found" in low:
            return DeviceDisconnectedError(f"{where} disappeared from its adb server while {doing}")
        what = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
        return DeviceDisconnectedError(f"the connection to {where} closed while {doing} ({what}): the device dropped")

    def _call(self, doing: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        from adbutils.errors import AdbError

        try:
            return fn(*args, **kw)
        except (AdbError, EOFError, OSError) as exc:
            raise self._as_device_error(exc, doing) from exc

    def _sh(self, cmd: str, doing: str, timeout: float = 30.0):
        """Run one shell command (shell v2: exit code and stderr apart)."""
        return self._call(doing, self._dev.shell2, cmd, timeout=timeout, v2=True)

    def _await_ready(self, timeout_s: float) -> None:
        """Wait for a device that dropped to be back ('device' state)."""
        from adbutils.errors import AdbError

        deadline = time.monotonic() + timeout_s
        state = "unknown"
        next_connect = 0.0
        while True:
            try:
                state = self._dev.get_state()
            except (AdbError, OSError, EOFError) as exc:
                state = str(exc).strip() or type(exc).__name__
            if state == "device":
                return
            if is_network_serial(self.serial) and time.monotonic() >= next_connect:
                # a network phone the server dropped (or forgot after `adb kill-server`): connect again
                next_connect = time.monotonic() + 1.0
                adb_connect(self._client, self.serial, timeout_s=5.0)
                continue
            if state == "unauthorized" or state.startswith("device unauthorized"):
                # Google's adb server answers get-state of an unauthorized phone with FAIL "device unauthorized."
                raise DeviceUnavailableError(f"{self.id} came back unauthorized: {UNAUTHORIZED_HINT}")
            if time.monotonic() >= deadline:
                raise DeviceDisconnectedError(
                    f"{self.id} did not come back within {timeout_s:.0f} s (adb state: {state}); {OFFLINE_HINT}")
            time.sleep(0.25)

    # ---- files

    def _file_hash(self, path: Path, algo: str) -> str:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        cache = self._md5_cache if algo == "md5" else self._sha_cache
        if key not in cache:
            h = hashlib.new(algo)
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            cache[key] = h.hexdigest()
        return cache[key]

    def _mkdirs_and_md5(self, dirs: list[str], paths: list[str]) -> dict[str, str | None]:
        """Create `dirs` and return the md5 of each path on the device (None: missing or unreadable)."""
        q = shlex.quote
        cmd = (f"mkdir -p {' '.join(q(d) for d in dirs)} || exit 3; "
               f"for f in {' '.join(q(p) for p in paths)}; do if [ -f \"$f\" ]; then "
               f"set -- $(md5sum < \"$f\" 2>/dev/null); echo \"${{1:-?}}\"; else echo missing; fi; done")
        res = self._sh(cmd, "checking md5 sums on the device")
        if res.returncode == 3:
            raise JobFailure("device", f"cannot create {self.settings.device_dir} on {self.id}: "
                              f"{(res.stderr or res.stdout).strip()}; set device_dir in farm.yaml to a writable "
                              "directory (default /data/local/tmp/harness)")
        lines = res.stdout.splitlines()
        result: dict[str, str | None] = {}
        for i, path in enumerate(paths):
            word = lines[i].strip().lower() if i < len(lines) else ""
            result[path] = word if re.fullmatch(r"[0-9a-f]{32}", word) else None
        return result

    def _push(self, local: Path, remote: str, mode: int, progress: ProgressFn | None = None) -> int:
        from adbutils.errors import AdbError

        try:
            return int(self._dev.sync.push(str(local), remote, mode=mode))
        except AdbError as exc:
            if str(exc).strip() == "FAIL":
                size = local.stat().st_size
                raise JobFailure(
                    "disk_full",
                    f"the device refused {local.name} ({size:,} bytes) at {remote} (adb sync FAIL): its disk is "
                    f"most likely full ('No space left on device'), or the directory is not writable. Free space "
                    f"(`adb -s {self.serial} shell df /data`; old runs: rm -r {self.settings.device_dir}/models) or "
                    "set device_dir in farm.yaml to a larger writable partition") from exc
            raise self._as_device_error(exc, f"pushing {local.name}") from exc
        except (EOFError, OSError) as exc:
            raise self._as_device_error(exc, f"pushing {local.name}") from exc

    def _sync_files(self, files: list[tuple[Path, str, int]], progress: ProgressFn | None) -> dict[str, Any]:
        """Push every (local, remote, mode) whose md5 on the device differs. Returns what was done."""
        dirs = sorted({remote.rsplit("/", 1)[0] for _, remote, _ in files} | {f"{self.settings.device_dir}/jobs"})
        remote_md5 = self._mkdirs_and_md5(dirs, [r for _, r, _ in files])
        report = {"bytes_pushed": 0, "files_pushed": [], "files_skipped": 0}
        for i, (local, remote, mode) in enumerate(files):
            if progress:
                progress("push", i, len(files))
            if remote_md5.get(remote) == self._file_hash(local, "md5"):
                report["files_skipped"] += 1
                self.files_skipped += 1
                continue
            n = self._push(local, remote, mode, progress)
            report["bytes_pushed"] += n
            report["files_pushed"].append(remote)
            self.bytes_pushed += n
            self.files_pushed += 1
        return report

    def _benchmark_local(self) -> Path:
        path = self.settings.benchmark_model
        if not path:
            raise JobFailure("input", f"no benchmark_model for {self.id}. {BENCHMARK_MODEL_HELP}")
        local = Path(path)
        if not local.is_file():
            raise JobFailure("input", f"benchmark_model {path!r} is not a file. {BENCHMARK_MODEL_HELP}")
        return local

    def _artifact(self, spec: JobSpec, component: str = "unet") -> Artifact:
        """The .tflite of one component: the user's (options.extra.graphs.COMPONENT, or .graph for the
        UNet) or the export cache's. An e2e job asks for each of E2E_COMPONENTS."""
        e2e = spec.workload == "e2e"
        where, graph = given_graph(spec, component)
        key = (f"graph:{graph}" if graph else
               f"export:{spec.model.model_dump_json()}:{spec.flags}:{spec.options.dtype}" + (f":{component}" if e2e else ""))
        return memoized_artifact(self._artifacts, key,
                                 lambda: self._resolve_artifact(spec, graph, where, component if e2e else None))

    def _resolve_artifact(self, spec: JobSpec, graph: Any, where: str = "options.extra.graph",
                          component: str | None = None) -> Artifact:
        if graph:
            local = Path(str(graph)).expanduser()
            check_tflite(local, where)
            return Artifact(local, self._file_hash(local, "sha256"), local.stat().st_size, "graph")
        try:
            from harness.export import ensure_artifact
        except ImportError as exc:
            raise JobFailure("input", f"cannot export variant {spec.variant!r} to .tflite: harness.export is not "
                              f"available ({exc}); give a .tflite with --set options.extra.graph=PATH") from None
        from harness.variants import Flags

        what = f"the {component} of variant {spec.variant!r}" if component else f"variant {spec.variant!r}"
        try:
            art = ensure_artifact(spec.model, Flags.from_dict(spec.flags), fmt="tflite", dtype=spec.options.dtype,
                                  cache_dir=self.ctx.cache_dir, progress=None, variant=spec.variant,
                                  component=component or "unet")
        except Exception as exc:  # noqa: BLE001 - a converter failure fails this variant only
            raise export_failure(exc, what, ".tflite") from None
        meta = dict(getattr(art, "meta", None) or {})
        meta["cached"] = bool(getattr(art, "cached", False))
        return Artifact(Path(art.path), str(art.sha256), int(art.size_bytes), "export", meta,
                        key=str(getattr(art, "key", "") or ""))

    def _remote_model(self, art: Artifact) -> str:
        return f"{self.settings.device_dir}/models/{art.sha256[:16]}.tflite"

    def _files_for(self, arts: list[Artifact], specs: list[JobSpec] = ()) -> list[tuple[Path, str, int]]:
        files = [(self._benchmark_local(), self.remote_bin, 0o755), (AGENT_SCRIPT, self.remote_agent, 0o755)]
        seen: set[str] = set()
        for spec in specs:  # an external delegate library given as a host file goes to the phone too
            try:
                unit = unit_of(spec, self.settings.device_dir)
            except JobFailure:
                continue
            if unit.library_host and unit.library_device not in seen:
                seen.add(unit.library_device)
                files.append((Path(unit.library_host), unit.library_device, 0o644))
        for art in arts:
            remote = self._remote_model(art)
            if remote not in seen:
                seen.add(remote)
                files.append((art.local, remote, 0o644))
        return files

    def _probe_flags(self) -> None:
        """Learn which flags this benchmark_model takes, from its --help (printed to stderr, exit 1)."""
        if self._probed:
            return
        res = self._sh(f"{shlex.quote(self.remote_bin)} --help", "asking benchmark_model for its flags")
        names = set(re.findall(r"^\s*--([A-Za-z][A-Za-z0-9_-]*)=", res.stdout + "\n" + res.stderr, re.MULTILINE))
        self._supported_flags = names or None
        self._probed = True

    # ---- Device interface

    def prepare(self, specs: list[JobSpec]) -> None:
        """Push the binary, the agent and every artifact the jobs need (md5-skipped). Problems are
        kept for run_job, which repeats what it needs and turns them into job failures."""
        arts: list[Artifact] = []
        for spec in specs:
            for component in (E2E_COMPONENTS if spec.workload == "e2e" else ("unet",)):
                try:
                    arts.append(self._artifact(spec, component))
                except JobFailure:
                    continue
        try:
            self.prepare_push = self._sync_files(self._files_for(arts, specs), None)
            self._probe_flags()
        except (JobFailure, DeviceError) as exc:
            self.prepare_note = f"prepare: {exc}"
            if isinstance(exc, DeviceDisconnectedError):
                self._dropped = True  # the first job waits for the device to come back

    def run_job(self, spec: JobSpec, workdir: Path, progress: ProgressFn | None = None) -> JobResult:
        started = time.time()
        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(workdir / "job.json", spec)
        try:
            return self._run(spec, workdir, progress, started)
        except DeviceDisconnectedError:
            self._dropped = True
            raise
        except DeviceUnavailableError as exc:
            return JobResult.failure(spec.job_id, "device", str(exc), started_at=started, ended_at=time.time())
        except JobFailure as f:
            extra = {"push": {"bytes_pushed_total": self.bytes_pushed}, **f.extra}
            return JobResult.failure(spec.job_id, f.kind, f.message, detail=f.detail, transient=f.transient,
                                     started_at=started, ended_at=time.time(), extra=extra)
        except Exception as exc:  # noqa: BLE001 - a bug here fails this job, not the run
            return JobResult.failure(spec.job_id, "internal", f"{type(exc).__name__}: {exc}",
                                     detail=_tail(traceback.format_exc()), started_at=started, ended_at=time.time())

    def _run(self, spec: JobSpec, workdir: Path, progress: ProgressFn | None, started: float) -> JobResult:
        if self._dropped:
            try:
                self._await_ready(0.0 if self._gone else self.settings.reconnect_timeout_s)
            except DeviceDisconnectedError:
                self._gone = True  # later jobs fail fast until the device is back
                raise
        self._dropped = self._gone = False
        runtime_of(spec)
        if spec.workload == "e2e":
            return self._run_e2e(spec, workdir, progress, started)
        art = self._artifact(spec)
        push = self._sync_files(self._files_for([art], [spec]), progress)
        self._probe_flags()
        return self._bench(spec, workdir, art, push, progress, started)

    def _bench(self, spec: JobSpec, workdir: Path, art: Artifact, push: dict[str, Any],
               progress: ProgressFn | None, started: float, component: str | None = None) -> JobResult:
        """One benchmark_model run of `art` under the job's flags and measure policy: cooldown, run_job.sh,
        collect, parse. `component` (e2e): the run's own device directory and local `device/COMPONENT/`."""
        d = self.settings.device_dir
        unit = unit_of(spec, d)
        ignored = sorted(set(spec.options.extra) - set(OPTION_KEYS))
        out = f"{d}/jobs/{_safe_name(spec.job_id)}-{_safe_name(spec.variant)}" + (f"-{component}" if component else "")
        args, unsupported = benchmark_flags(spec, self._remote_model(art), supported=self._supported_flags,
                                            result_file=f"{out}/{RESULT_PROTO}", device_dir=d)
        affinity = self.settings.affinity
        if "affinity" in spec.options.extra:
            try:
                affinity = _check_affinity("options.extra", spec.options.extra["affinity"])
            except AndroidConfigError as exc:
                raise JobFailure("input", str(exc)) from None
        interval = self.settings.meminfo_interval_s
        if "meminfo_interval_s" in spec.options.extra:
            interval = _number("meminfo_interval_s", spec.options.extra["meminfo_interval_s"])
            if interval <= 0:
                raise JobFailure("input", "options.extra.meminfo_interval_s must be > 0")

        if self._stale_possible:
            self._cleanup_stale()
        cooldown = self._cooldown(spec, progress)
        self._stale_possible = True  # until this job's files are collected
        rc, timed_out, run_s = self._launch_and_wait(spec, out, args, affinity, interval, progress)
        if progress:
            progress("pull", 0, 1)
        files = self._collect(out, workdir / "device" / component if component else workdir / "device")
        self._stale_possible = False
        ended = time.time()

        stdout = files.get("stdout.txt") or ""
        stderr = files.get("stderr.txt") or ""
        before = device_state(files.get("thermal_before.txt"), files.get("battery_before.txt"))
        after = device_state(files.get("thermal_after.txt"), files.get("battery_after.txt"))
        before["cooldown"] = cooldown
        execution: dict[str, Any] = {"runtime": unit.runtime, "accelerator": unit.label, "unit_asked": unit.label,
                                     "timing_method": "benchmark_model"}
        extra: dict[str, Any] = {
            "benchmark_flags": args,
            "unsupported_flags": unsupported, "affinity": affinity, "device_dir": d, "run_s": round(run_s, 3),
            "push": {**push, "bytes_pushed_total": self.bytes_pushed},
            "artifact": {"sha256": art.sha256, "size_bytes": art.size_bytes, "key": art.key, "source": art.source,
                         "device_path": self._remote_model(art)},
        }
        if art.source == "export":
            execution["na_flags"] = list(art.meta.get("na_flags") or [])
            extra["artifact"]["cached"] = art.meta.get("cached")
            ref = art.meta.get("reference") or {}
            if isinstance(ref, dict) and ref.get("rel_error") is not None:
                extra["artifact"]["reference_rel_error"] = ref.get("rel_error")
        if ignored:
            extra["ignored_options"] = ignored
        if self.prepare_note:
            extra["prepare_note"], self.prepare_note = self.prepare_note, None  # said once, on the next job
        if self.prepare_push:
            extra["prepare_push"], self.prepare_push = self.prepare_push, None
        proto = (workdir / "device" / component if component else workdir / "device") / RESULT_PROTO
        if proto.is_file():
            extra["result_proto"] = str(proto)
        output = stdout + ("\n" if stdout and not stdout.endswith("\n") else "") + stderr
        fail_kw = dict(started_at=started, ended_at=ended, device_state_before=before, device_state_after=after,
                       extra=extra, execution=Execution(**execution), stand_in=standin.from_output(output))
        if timed_out:
            return JobResult.failure(spec.job_id, "timeout",
                                     f"benchmark_model ran past the job timeout of {spec.measure.timeout_seconds:.0f} s "
                                     "and was killed; raise measure.timeout_seconds or lower iterations/max_seconds",
                                     detail=_tail(output) or None, **fail_kw)
        if rc is None:
            return JobResult.failure(spec.job_id, "crash", "the device agent run_job.sh ended without a result "
                                     "(killed by the system, or the device rebooted)",
                                     detail=_tail((files.get("agent.log") or "") + output) or None, **fail_kw)
        if rc != 0:
            how = f"exit code {rc}"
            if rc > 128:
                import signal as _signal

                try:
                    how += f" (killed by {_signal.Signals(rc - 128).name})"
                except ValueError:
                    how += f" (signal {rc - 128})"
            errors = [ln.strip() for ln in output.splitlines() if ln.startswith(("ERROR:", "FATAL:"))]
            msg = f"benchmark_model failed with {how}"
            if errors:
                msg += ": " + " | ".join(errors[:3])
            refused = any(mark in output for mark in ("Disallowed CPU fallback detected", "Some ops are not accelerated"))
            if unit.use_gpu and refused:  # --require_full_delegation=true on a graph the GPU does not take wholly
                msg = ("the GPU does not run the whole graph, and full delegation was required (a GPU row must be "
                       "the GPU's alone): " + msg + ". `harness inspect` names the ops LiteRT's GPU engine refuses; "
                       "options.extra.allow_cpu_fallback: true runs it split, marked partial")
            return JobResult.failure(spec.job_id, "delegation" if unit.use_gpu and refused else "crash", msg,
                                     detail=_tail(stderr or stdout) or None, **fail_kw)
        try:
            parsed = parse_benchmark_model(output)
        except ParseError as exc:
            return JobResult.failure(spec.job_id, "parse", f"benchmark_model output not understood: {exc}",
                                     detail=_tail(output) or None, **fail_kw)
        execution.update(unit_used=unit_used(unit, parsed, args), delegation=delegation_used(unit, parsed, args))
        fail_kw["execution"] = Execution(**execution)
        ran = execution["unit_used"]
        if unit.use_gpu and ran != unit.label and not _allows_cpu(spec):
            return JobResult.failure(
                spec.job_id, "delegation",
                f"the GPU row did not run wholly on the GPU: {ran}; a GPU figure must be the GPU's alone. Make the "
                "graph GPU-clean (`harness inspect` names the refused ops), or set options.extra.allow_cpu_fallback: "
                "true to record it as partial", detail=_tail(output) or None, **fail_kw)
        return self._result(spec, parsed, files, art, extra, before, after, started, ended, fail_kw["execution"],
                            fail_kw["stand_in"])

    def _result(self, spec: JobSpec, parsed: BenchmarkModelOutput, files: dict[str, str | None], art: Artifact,
                extra: dict[str, Any], before: dict, after: dict, started: float, ended: float,
                execution: Execution, stand_in: list[str] | None = None) -> JobResult:
        gpu_samples: list[dict[str, Any]] = []
        unparsed = 0
        for stamp, text in split_meminfo_samples(files.get("meminfo.txt") or ""):
            try:
                mem = parse_meminfo_graphics(text)
            except ParseError:
                unparsed += 1  # e.g. the process had just exited
                continue
            gpu_samples.append({"t": stamp, "graphics_kb": mem.graphics_kb, "gl_mtrack_kb": mem.gl_mtrack_kb,
                                "egl_mtrack_kb": mem.egl_mtrack_kb, "total_pss_kb": mem.total_pss_kb})
        gpu_bytes = max((s["graphics_kb"] for s in gpu_samples), default=None)
        weight_bytes, planned = art.meta.get("weight_bytes"), art.meta.get("planned_tensor_bytes")
        memory = MemoryFigures(
            weight_bytes=int(weight_bytes) if isinstance(weight_bytes, (int, float)) else None,
            tensor_bytes_planned=int(planned) if isinstance(planned, (int, float)) else None,
            peak_rss_bytes=round(parsed.peak_memory_mb * 2**20) if parsed.peak_memory_mb else None,
            gpu_bytes=gpu_bytes * 1024 if gpu_bytes is not None else None,
        )
        op_times = parsed.category_ms() if parsed.op_profiled else {}
        extra.update({
            "warmup_summary_ms": summary_ms(parsed.warmup),
            "inference_avg_ms": parsed.inference_avg_ms, "benchmark_output_format": parsed.format,
            "model_size_mb": parsed.model_size_mb, "init_footprint_mb": parsed.init_footprint_mb,
            "overall_footprint_mb": parsed.overall_footprint_mb, "end_vmrss_mb": parsed.end_vmrss_mb,
            "delegates": [asdict(dl) for dl in parsed.delegates], "warnings": list(parsed.warnings),
            "gpu_memory_samples": gpu_samples, "gpu_memory_samples_unparsed": unparsed,
        })
        if parsed.op_profiled:
            extra["op_type_ms"] = parsed.op_avg_ms()
            if parsed.delegate_op_profile:
                extra["delegate_op_type_ms"] = {r.node_type: r.avg_ms for r in parsed.delegate_op_profile}
        import harness

        versions = {"harness": harness.__version__, "benchmark_model_md5": self._file_hash(self._benchmark_local(), "md5"),
                    "run_job_sh_md5": self._file_hash(AGENT_SCRIPT, "md5"),
                    "android": self.info.os_version, "fingerprint": str(self.info.extra.get("fingerprint") or "")}
        first_us = parsed.first_inference_us if parsed.first_inference_us is not None else parsed.warmup.first_us
        if not parsed.warmup.count:  # no warm-up ran: the first run is the timed run's first
            first_us = parsed.inference.first_us
        return JobResult(
            job_id=spec.job_id, status="ok", samples_ms=exact_samples_ms(parsed.inference),
            warmup_ms=exact_samples_ms(parsed.warmup), init_ms=parsed.init_us / 1000.0,
            first_run_ms=first_us / 1000.0, memory=memory,
            device_state_before=before, device_state_after=after, op_times_ms=op_times, versions=versions,
            started_at=started, ended_at=ended, extra=extra, stand_in=list(stand_in or []),
            execution=execution.model_copy(update={"latency_summary_ms": LatencySummary(**summary_ms(parsed.inference))}),
        )

    # ---- e2e: three component runs, composed

    def _run_e2e(self, spec: JobSpec, workdir: Path, progress: ProgressFn | None, started: float) -> JobResult:
        """Text encoder, UNet and VAE decoder, each one benchmark_model run (`_bench`) in this device session,
        composed with the host's measured scheduler cost: text + steps x (UNet + scheduler) + decoder."""
        from harness.models.configs import get_model_config
        from harness.composition import CompositionError, composed_components
        from harness.workloads.common import InputError
        from harness.workloads.e2e import measure_scheduler_ms, parse_args

        try:
            cfg = get_model_config(spec.model.name)
            args = parse_args(spec, cfg.image_size, cfg.vae_scale_factor)
        except InputError as exc:
            raise JobFailure("input", str(exc)) from None
        except (KeyError, ValueError) as exc:
            raise JobFailure("input", f"e2e on Android: model {spec.model.name!r}: {exc}") from None
        f = cfg.vae_scale_factor
        latent_shape = (1, int(cfg.unet["in_channels"]), args["height"] // f, args["width"] // f)
        arts: dict[str, Artifact] = {}
        for component in E2E_COMPONENTS:
            arts[component] = self._artifact(spec, component)
        push = self._sync_files(self._files_for(list(arts.values()), [spec]), progress)
        self._probe_flags()

        results: dict[str, JobResult] = {}
        for component in E2E_COMPONENTS:
            sub = None if progress is None else (
                lambda phase, done, total, c=component: progress(f"{c} {phase}", done, total))
            try:
                res = self._bench(spec, workdir, arts[component], push if not results else {}, sub, time.time(),
                                  component)
            except JobFailure as failure:
                raise JobFailure(failure.kind, f"e2e component {component}: {failure.message}", failure.detail,
                                  failure.transient, {**failure.extra, "failed_component": component}) from None
            results[component] = res
            if res.status != "ok":
                err = res.error
                assert err is not None
                return JobResult.failure(
                    spec.job_id, err.kind, f"e2e component {component}: {err.message}", detail=err.detail,
                    transient=err.transient, started_at=started, ended_at=time.time(),
                    device_state_before=results[E2E_COMPONENTS[0]].device_state_before,
                    device_state_after=res.device_state_after,
                    extra={"failed_component": component, "components": _component_records(results),
                           "push": {"bytes_pushed_total": self.bytes_pushed}},
                    stand_in=standin.merge(*(r.stand_in for r in results.values())))

        if progress:
            progress("host scheduler", 0, 1)
        try:
            scheduler_ms = measure_scheduler_ms(args["scheduler"], args["steps"], latent_shape, args["guidance_scale"])
        except InputError as exc:
            raise JobFailure("input", str(exc)) from None
        ms: dict[str, tuple[float, str]] = {}
        for component, res in results.items():
            try:
                ms[component] = component_ms(res)
            except JobFailure as failure:
                raise JobFailure(failure.kind, f"e2e component {component}: {failure.message}",
                                  extra={"failed_component": component,
                                         "components": _component_records(results)}) from None
        sources = {c: {"sha256": arts[c].sha256, "source": arts[c].source, "statistic": ms[c][1]}
                   for c in E2E_COMPONENTS}
        sources["scheduler"] = {"source": "host", "function": "harness.workloads.e2e.measure_scheduler_ms",
                                "latent_shape": list(latent_shape), "statistic": "median"}
        try:
            components = composed_components(ms["text_encoder"][0], ms["unet"][0], ms["vae_decoder"][0],
                                             scheduler_ms, args["steps"], sources=sources)
        except CompositionError as exc:
            raise JobFailure("parse", f"e2e composition: {exc}") from None

        memory, peak_of = _largest_peaks(results)
        unet = results["unet"]
        extra: dict[str, Any] = {
            "method": "composed", "composition": "text_encoder + steps x (unet + scheduler) + vae_decoder",
            "scheduler": args["scheduler"], "steps": args["steps"], "guidance_scale": args["guidance_scale"],
            "height": args["height"], "width": args["width"], "latent_shape": list(latent_shape),
            "host_scheduler_ms_per_step": scheduler_ms,
            "weights": ("graphs" if any(a.source == "graph" for a in arts.values())
                        else (spec.model.weights or "random")),
            "image_note": "no image: each component ran on its own, on benchmark_model's random inputs",
            "peak_memory_component": peak_of, "components": _component_records(results),
            "push": {**push, "bytes_pushed_total": self.bytes_pushed},
        }
        if args["scheduler"] == "pndm":
            extra["composition_note"] = ("PNDM makes steps + 1 UNet calls; the composed figure counts steps calls "
                                         "(one per step)")
        from harness.models.pipeline import SCHEDULERS

        extra["scheduler_description"] = SCHEDULERS[args["scheduler"]].description
        for key in ("prepare_note", "prepare_push"):
            for rec in extra["components"].values():
                if key in rec:
                    extra[key] = rec.pop(key)
        inits = [r.init_ms for r in results.values()]
        return JobResult(
            job_id=spec.job_id, status="ok", samples_ms=[components["total_ms"]],
            init_ms=sum(inits) if all(i is not None for i in inits) else None,
            memory=memory, components_ms=components,
            execution=unet.execution.model_copy(update={"timing_method": E2E_TIMING_METHOD, "latency_summary_ms": None}),
            device_state_before=results[E2E_COMPONENTS[0]].device_state_before,
            device_state_after=results[E2E_COMPONENTS[-1]].device_state_after,
            op_times_ms=dict(unet.op_times_ms), versions=dict(unet.versions),
            started_at=started, ended_at=time.time(), extra=extra,
            stand_in=standin.merge(*(r.stand_in for r in results.values())),
        )

    # ---- running

    def _cleanup_stale(self) -> None:
        """Kill what an earlier, abandoned attempt left running (a drop leaves the agent going) and remove
        its files. Only processes whose command line names benchmark_model or run_job.sh are killed."""
        jobs = shlex.quote(f"{self.settings.device_dir}/jobs")
        cmd = (f'for d in {jobs}/*; do [ -d "$d" ] || continue; '
               f'for f in "$d/agent.pid" "$d/pid"; do p=$(cat "$f" 2>/dev/null); [ -n "$p" ] || continue; '
               f'case "$(cat "/proc/$p/cmdline" 2>/dev/null)" in *benchmark_model*|*run_job.sh*) '
               f'kill -9 "$p" 2>/dev/null;; esac; done; rm -rf "$d"; done; true')
        self._sh(cmd, "cleaning up earlier jobs")

    def _read_temps(self, zones_re: str | None) -> tuple[float | None, float | None]:
        thermal = self._sh(THERMAL_ZONES_SHELL_CMD, "reading thermal zones").stdout
        battery = self._sh(f"cat {shlex.quote(BATTERY_TEMP_FILE)} 2>/dev/null || dumpsys battery",
                           "reading the battery temperature").stdout
        state = device_state(thermal, battery)
        temps = {k: v for k, v in (state.get("thermal_c") or {}).items() if -30.0 < v < 150.0}
        if zones_re:
            temps = {k: v for k, v in temps.items() if re.search(zones_re, k)}
        return (max(temps.values()) if temps else None), state.get("battery_c")

    def _cooldown(self, spec: JobSpec, progress: ProgressFn | None) -> dict[str, Any]:
        policy = self.settings.cooldown
        if "cooldown" in spec.options.extra:
            try:
                policy = _cooldown_from("options.extra.cooldown", spec.options.extra["cooldown"], policy)
            except AndroidConfigError as exc:
                raise JobFailure("input", str(exc)) from None
        if not policy.thermal:
            pause = policy.timeout_s if policy.timeout_s is not None else spec.measure.cooldown_seconds
            if pause and pause > 0:
                if progress:
                    progress("cooldown", 0, 1)
                time.sleep(pause)
                return {"mode": "pause", "waited_s": pause}
            return {"mode": "none"}
        timeout = policy.timeout_s if policy.timeout_s is not None else (
            spec.measure.cooldown_seconds if spec.measure.cooldown_seconds > 0 else DEFAULT_COOLDOWN_TIMEOUT_S)
        t0 = time.monotonic()
        while True:
            hottest, battery = self._read_temps(policy.zones)
            cool = ((policy.max_temp_c is None or (hottest is not None and hottest <= policy.max_temp_c)) and
                    (policy.max_battery_c is None or (battery is not None and battery <= policy.max_battery_c)))
            waited = time.monotonic() - t0
            if cool or waited >= timeout:
                return {"mode": "thermal", "reached": cool, "waited_s": round(waited, 2), "hottest_c": hottest,
                        "battery_c": battery, "max_temp_c": policy.max_temp_c, "max_battery_c": policy.max_battery_c,
                        "timeout_s": timeout}
            if progress:
                progress("cooldown", int(waited), int(timeout))
            time.sleep(min(policy.poll_s, max(0.0, timeout - waited)))

    def _launch_and_wait(self, spec: JobSpec, out: str, args: list[str], affinity: str | None, interval: float,
                         progress: ProgressFn | None) -> tuple[int | None, bool, float]:
        """Start run_job.sh in the background and wait for DONE. Returns (exit code or None, timed out, s)."""
        q = shlex.quote
        agent_args = [out, self.remote_bin, _flag_value(float(interval)), affinity or "", THERMAL_DIR,
                      BATTERY_TEMP_FILE, "--", *args]
        launch = (f"mkdir -p {q(out)} || exit 1; "
                  f"sh {q(self.remote_agent)} {' '.join(q(a) for a in agent_args)} "
                  f"> {q(out + '/agent.log')} 2>&1 < /dev/null & echo $! > {q(out + '/agent.pid')}; echo launched")
        res = self._sh(launch, "starting the device agent")
        if res.returncode != 0 or "launched" not in res.stdout:
            raise JobFailure("device", f"could not start {self.remote_agent} on {self.id}: "
                              f"{(res.stderr or res.stdout).strip()}")
        self._current_out = out
        t0 = time.monotonic()
        timeout = spec.measure.timeout_seconds
        steps = max(1, int(self.settings.poll_s / 0.2))
        poll = (f"out={q(out)}; i=0; while [ ! -f \"$out/DONE\" ] && [ \"$i\" -lt {steps} ]; do sleep 0.2; "
                f"i=$((i+1)); done; if [ -f \"$out/DONE\" ]; then echo \"done $(cat \"$out/DONE\")\"; "
                f"elif kill -0 \"$(cat \"$out/agent.pid\" 2>/dev/null)\" 2>/dev/null; then echo running; "
                f"elif [ -f \"$out/DONE\" ]; then echo \"done $(cat \"$out/DONE\")\"; else echo gone; fi")
        try:
            while True:
                elapsed = time.monotonic() - t0
                if elapsed > timeout:
                    self._kill(out)
                    return None, True, elapsed
                if progress:
                    progress("run", int(elapsed), int(timeout))
                status = self._sh(poll, "waiting for benchmark_model", timeout=self.settings.poll_s + 30).stdout.split()
                if status and status[0] == "done":
                    rc = int(status[1]) if len(status) > 1 and status[1].lstrip("-").isdigit() else 255
                    return rc, False, time.monotonic() - t0
                if status and status[0] == "gone":
                    return None, False, time.monotonic() - t0
        except KeyboardInterrupt:
            self.cancel()  # stop benchmark_model on the phone too, then let the runner stop
            raise
        finally:
            self._current_out = None

    def _kill(self, out: str) -> None:
        q = shlex.quote(out)
        self._sh(f'for f in {q}/agent.pid {q}/pid; do p=$(cat "$f" 2>/dev/null); '
                 f'[ -n "$p" ] && kill -9 "$p" 2>/dev/null; done; true', "stopping benchmark_model")

    def _collect(self, out: str, local_dir: Path) -> dict[str, str | None]:
        """Read the agent's text files (one shell call), pull the result proto if there is one, remove
        the job's directory from the device, and keep copies under `local_dir`."""
        local_dir.mkdir(parents=True, exist_ok=True)
        q = shlex.quote
        cmd = (f"cd {q(out)} || exit 3; for f in {' '.join(RESULT_FILES)}; do if [ -f \"$f\" ]; then "
               f"echo \"{_FILE_MARK} $f\"; cat \"$f\"; echo; fi; done; "
               f"if [ -f {RESULT_PROTO} ]; then echo {_PROTO_MARK}; else cd / && rm -rf {q(out)}; fi")
        res = self._sh(cmd, "reading the job's result files", timeout=120)
        if res.returncode == 3:
            return {}
        files: dict[str, str | None] = {name: None for name in (*RESULT_FILES, RESULT_PROTO)}
        text = res.stdout
        has_proto = text.rstrip().endswith(_PROTO_MARK)
        if has_proto:
            text = text.rstrip()[: -len(_PROTO_MARK)]
        parts = re.split(rf"^{_FILE_MARK} (\S+)\n", text, flags=re.MULTILINE)
        for name, body in zip(parts[1::2], parts[2::2]):
            body = body[:-1] if body.endswith("\n") else body  # the newline echoed after each file
            files[name] = body
            (local_dir / name).write_text(body)
        if has_proto:
            data = self._call(f"pulling {RESULT_PROTO}", self._dev.sync.read_bytes, f"{out}/{RESULT_PROTO}")
            (local_dir / RESULT_PROTO).write_bytes(data)
            self._sh(f"rm -rf {q(out)}", "removing the job's files from the device")
        return files

    def cancel(self) -> None:
        out = self._current_out
        if out is None:
            return
        try:
            self._kill(out)
        except (DeviceError, JobFailure):
            pass

    def close(self) -> None:
        self._current_out = None
