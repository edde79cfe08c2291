"""Stand-ins: how the harness knows that a figure did not come from a real phone, tool or GPU.

One mechanism for every kind of stand-in. The device or tool says what it is, the harness reads it
here (one function per source, pure, tested on captured text), the job's result carries it as a typed
field (`JobResult.stand_in`, a list of short labels; [] for a real device and tool), the store keeps it
(`jobs.stand_in_json`, `DeviceInfo.stand_in` in `run_devices.info_json`), and every renderer shows it
(`label()`: "[stand-in: fake phone, benchmark_model stand-in]").

Sources:
- an Android device whose properties carry `ro.harness.stand_in` (the fake adb server's phones:
  its value is the label, "1" means "fake phone"), or that is Android's emulator (`ro.kernel.qemu=1`,
  `ro.boot.qemu=1`, hardware ranchu/goldfish): no phone's GPU there;
- a tool that prints a line with `harness-stand-in: LABEL` (the benchmark_model stand-in does, on
  every run);
- an iOS device whose lockdown values carry `HarnessStandIn` (the pymobiledevice3 stand-in,
  tests/fakes/ios_fake.py), and an agent whose result.json fills `stand_in` itself;
- LiteRT's GPU engine on a software adapter (SwiftShader): a GPU emulated on the CPU.

A real phone has none of these, so it is never labelled (tests check both ways).
"""
from __future__ import annotations

import re
from typing import Any, Iterable

ANDROID_PROP = "ro.harness.stand_in"
OUTPUT_MARKER = "harness-stand-in:"
IOS_LOCKDOWN_KEY = "HarnessStandIn"

FAKE_PHONE = "fake phone"
ANDROID_EMULATOR = "Android emulator"
IOS_STAND_IN = "iOS API stand-in"
EMULATED_GPU = "SwiftShader: GPU emulated on the CPU"
AIHUB_STAND_IN = "AI Hub API stand-in"  # an aihub: device reached at an endpoint that is not Qualcomm AI Hub's

_MARKER_RE = re.compile(re.escape(OUTPUT_MARKER) + r"[ \t]*(.+?)[ \t]*$", re.MULTILINE)
_FALSE = {"", "0", "false", "no"}


def merge(*labels: Iterable[str] | None) -> list[str]:
    """The labels of several sources, each once, in order."""
    out: list[str] = []
    for group in labels:
        for item in group or ():
            item = str(item).strip()
            if item and item not in out:
                out.append(item)
    return out


def from_android_props(props: dict[str, str]) -> list[str]:
    """Stand-in labels from a device's `getprop` properties ([] for a real phone)."""
    out: list[str] = []
    value = str(props.get(ANDROID_PROP, "")).strip()
    if value.lower() not in _FALSE:
        out.append(FAKE_PHONE if value.lower() in ("1", "true", "yes") else value)
    if (props.get("ro.kernel.qemu") == "1" or props.get("ro.boot.qemu") == "1"
            or props.get("ro.hardware") in ("ranchu", "goldfish")):
        out.append(ANDROID_EMULATOR)
    return out


def from_output(text: str | None) -> list[str]:
    """Stand-in labels a tool printed (`harness-stand-in: LABEL` anywhere in a line, e.g. after the
    tool's `INFO: ` log prefix)."""
    return merge(m.group(1) for m in _MARKER_RE.finditer(text or ""))


def from_ios_lockdown(values: dict[str, Any]) -> list[str]:
    """Stand-in labels from an iOS device's lockdown values ([] for a real iPhone)."""
    value = values.get(IOS_LOCKDOWN_KEY)
    if value is None or str(value).strip().lower() in _FALSE:
        return []
    return [IOS_STAND_IN if str(value).strip().lower() in ("1", "true", "yes") else str(value).strip()]


def from_gpu_adapter(software: bool) -> list[str]:
    """LiteRT's GPU engine on a software adapter (SwiftShader) is a CPU emulation of a GPU."""
    return [EMULATED_GPU] if software else []


def label(stand_in: Iterable[str] | str | None) -> str:
    """How every renderer marks a stand-in: "[stand-in: a, b]"; "" for a real device and tool."""
    items = [s for s in (stand_in.split(", ") if isinstance(stand_in, str) else merge(stand_in)) if s]
    return f"[stand-in: {', '.join(items)}]" if items else ""


def marked(text: str, stand_in: Iterable[str] | str | None) -> str:
    """`text` followed by the stand-in label, when there is one."""
    mark = label(stand_in)
    return f"{text} {mark}" if mark else text


NOTE = ("Stand-in: a table titled [stand-in: ...] holds rows that did not run on a real phone, tool or GPU (a fake "
        "phone on the test suite's adb server, the benchmark_model stand-in, the iOS API stand-in, an AI Hub API "
        "stand-in, SwiftShader's CPU emulation of a GPU; the CSV's stand_in column names each row's): they check the "
        "plumbing, and their latency and memory are not a phone's (this host's, or a stand-in's fixed figures).")
