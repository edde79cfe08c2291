"""The argument groups several commands share (the store, --format, the device context, the suite overrides)
and what turns them into objects (a Store, a DeviceContext, suite override strings)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from harness.devices.android import parse_adb_server
from harness.devices.base import DeviceContext
from harness.session import InputError
from harness.store import Store, StoreError

OUTPUT_FORMATS = ("table", "json")


def add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="URL", help="SQLAlchemy URL of the results store "
                   "(default: $HARNESS_STORE or sqlite:///results/harness.db)")


def open_store(args, create: bool = True) -> Store:
    """The results store; create=False for commands that only read it (report, compare, tag): a SQLite
    file that is not there is an input error, not a new empty database."""
    try:
        return Store(args.store, create=create)
    except StoreError as exc:
        raise InputError(str(exc)) from None


def add_format(p: argparse.ArgumentParser, choices: tuple[str, ...] = OUTPUT_FORMATS, json_alias: bool = False,
               help_extra: str = "", **kw) -> None:
    """The one --format option of every command whose output has a machine form: `table` (for people) or
    `json` (for scripts), plus a command's own forms (report: md, csv, html). `json_alias` keeps --json, which
    the command had before --format, as an alias of --format json."""
    metavar = kw.pop("metavar", "|".join(choices))
    p.add_argument("--format", "-f", dest="format", default="table", choices=choices, metavar=metavar,
                   help="output form: table (for people) or json (for scripts)" + help_extra + " (default: table)",
                   **kw)
    if json_alias:
        p.add_argument("--json", dest="format", action="store_const", const="json",
                       help="the same as --format json (kept for scripts written before --format)")


def add_device_ctx(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="DIR", type=Path,
                   help="artifact, reference-output and random-weights cache (default $HARNESS_CACHE or ~/.cache/harness)")
    p.add_argument("--adb", action="append", default=[], metavar="HOST:PORT", type=adb_server,
                   help="an adb server to find Android devices on; repeatable (default: $ANDROID_ADB_SERVER_HOST/"
                        "PORT, else 127.0.0.1:5037)")
    p.add_argument("--benchmark-model", metavar="PATH", help="LiteRT's native benchmark_model built for the phones "
                   "(android_aarch64); no pip package ships it, see README 'Android'")
    p.add_argument("--farm", metavar="FILE", type=Path, help="farm.yaml: adb servers and per-device settings "
                   "(benchmark_model, device_dir, cooldown, affinity); see README 'Android'")
    p.add_argument("--ios-agent", metavar="PATH", help="the iOS agent app (.ipa, built and signed on a Mac with "
                   "`make ios-agent`), installed on each iPhone when it differs; see README 'iOS'")


def adb_server(text: str) -> str:
    try:
        parse_adb_server(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def load_farm(path: Path | None) -> dict:
    if path is None:
        return {}
    if not path.is_file():
        raise InputError(f"--farm {str(path)!r}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"--farm {path}: malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"--farm {path}: a farm file is a mapping (adb_servers:, android:, devices:)")
    return data


def device_context(args) -> DeviceContext:
    """The DeviceContext of a command's device options (add_device_ctx); a command without them gets defaults."""
    farm_path = getattr(args, "farm", None)
    return DeviceContext(cache_dir=getattr(args, "cache", None), adb_servers=list(getattr(args, "adb", None) or []),
                         benchmark_model=getattr(args, "benchmark_model", None), farm=load_farm(farm_path),
                         ios_agent=getattr(args, "ios_agent", None),
                         farm_path=farm_path.resolve() if farm_path else None,
                         # AI Hub named: discovery says why it found nothing (no token) instead of staying silent
                         extra={"aihub": bool(getattr(args, "aihub", False)) or any(
                             str(d).startswith("aihub") for d in getattr(args, "device", None) or [])})


def add_set(p: argparse.ArgumentParser, set_help: str) -> None:
    """--set KEY=VALUE: a change to a suite as it is loaded (run, export)."""
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE", dest="overrides", help=set_help)


def add_model_inputs(p: argparse.ArgumentParser) -> None:
    """--weights and --prompt (run, export); `suite_overrides` turns them into suite overrides."""
    p.add_argument("--weights", metavar="DIR", help="local diffusers checkpoint for real weights (default random)")
    p.add_argument("--prompt", metavar="TEXT", help="e2e workload: the prompt (same as --set workload_args.prompt=TEXT)")


def suite_overrides(args, overrides: list[str]) -> list[str]:
    """`overrides` (a command's --set and the like) followed by what --weights and --prompt set."""
    out = list(overrides)
    if args.weights:
        if not Path(args.weights).expanduser().is_dir():
            raise InputError(f"--weights {args.weights!r}: no such directory; give a local diffusers checkpoint "
                             "(the folder with unet/config.json) or leave --weights out for random weights")
        out.append(f"model.weights={Path(args.weights).expanduser().resolve()}")
    if args.prompt is not None:
        out.append(f"workload_args.prompt={json.dumps(args.prompt)}")  # JSON is YAML: quotes kept
    return out
