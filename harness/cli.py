"""Command line: `harness devices | run | report | tag | compare | export | inspect` (also `python -m harness`).

Exit codes: 0 success; 1 a job failed (everything else was stored), or for `compare` a REGRESSION
was confirmed; 2 bad input or environment; 3 `compare --strict` and some cell could not be judged
(UNSTABLE, INCONCLUSIVE, failed job) while no regression is confirmed; 130 interrupted (everything
finished was stored, the run is marked interrupted).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from types import SimpleNamespace
from pathlib import Path

from harness import standin

EXIT_OK, EXIT_JOB_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
ARTIFACT_FORMAT_ARGS = ("tflite", "coreml", "all")  # `harness export --artifact-format`


class InputError(Exception):
    """Bad input or environment: printed without a traceback, exit code 2."""


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="URL", help="SQLAlchemy URL of the results store "
                   "(default: $HARNESS_STORE or sqlite:///results/harness.db)")


OUTPUT_FORMATS = ("table", "json")


def _add_format(p: argparse.ArgumentParser, choices: tuple[str, ...] = OUTPUT_FORMATS, json_alias: bool = False,
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


def _add_device_ctx(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="DIR", type=Path, help="artifact and reference cache (default ~/.cache/harness)")
    p.add_argument("--adb", action="append", default=[], metavar="HOST:PORT", type=_adb_server,
                   help="an adb server to find Android devices on; repeatable (default: $ANDROID_ADB_SERVER_HOST/"
                        "PORT, else 127.0.0.1:5037)")
    p.add_argument("--benchmark-model", metavar="PATH", help="LiteRT's native benchmark_model built for the phones "
                   "(android_aarch64); no pip package ships it, see README 'Android'")
    p.add_argument("--farm", metavar="FILE", type=Path, help="farm.yaml: adb servers and per-device settings "
                   "(benchmark_model, device_dir, cooldown, affinity); see README 'Android'")
    p.add_argument("--ios-agent", metavar="PATH", help="the iOS agent app (.ipa, built and signed on a Mac with "
                   "`make ios-agent`), installed on each iPhone when it differs; see README 'iOS'")


def _adb_server(text: str) -> str:
    from harness.devices.android import parse_adb_server

    try:
        parse_adb_server(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def _load_farm(path: Path | None) -> dict:
    if path is None:
        return {}
    import yaml

    if not path.is_file():
        raise InputError(f"--farm {str(path)!r}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"--farm {path}: malformed YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"--farm {path}: a farm file is a mapping (adb_servers:, android:, devices:)")
    return data


# `harness run --quick`: the suite overrides it applies (before the user's --set), and what it skips.
QUICK_OVERRIDES: tuple[str, ...] = ("measure.warmup_runs=0", "measure.iterations=2", "measure.min_seconds=0",
                                    "measure.passes=[memory]")
QUICK_HELP = ("no warmup runs (the untimed first run, which is also the reference check, still goes first), "
              "2 timed iterations (min_seconds 0), no op-time pass; the memory columns stay")


def run_overrides(args) -> list[str]:
    """`harness run`'s suite overrides: --quick's first, then the user's --set (so a --set wins)."""
    return [*(QUICK_OVERRIDES if getattr(args, "quick", False) else ()), *args.overrides]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark Stable Diffusion variants on phone GPUs and on this host: the Table-1 "
                    "ablation of arXiv 2304.11267 (baseline, + optimized softmax, + S-GN/GELU, "
                    "+ FlashAttention, + Winograd) and end-to-end generation.",
        epilog="Exit codes: 0 ok, 1 a job failed (compare: a regression was confirmed), 2 bad input, "
               "3 compare --strict: some cell could not be judged, 130 interrupted. See README.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("devices", help="list the devices the harness can run on",
                       description="List attached devices (the host always) with their state and what to do "
                                   "when a device is not ready.")
    _add_format(p, json_alias=True)
    p.add_argument("--aihub", action="store_true", help="list only Qualcomm AI Hub's devices (name, OS, chipset, "
                   "attributes): `qai-hub configure` or $QAIHUB_API_TOKEN first; see README 'Real phones through "
                   "Qualcomm AI Hub'")
    _add_device_ctx(p)
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("run", help="run a suite and store the results",
                       description="Expand SUITE into jobs (device x variant), run them, store every result, "
                                   "print the Table-1 view and write an HTML report.")
    p.add_argument("suite", type=Path, nargs="?", help="suite YAML file, e.g. suites/table1.yaml")
    p.add_argument("--resume", metavar="RUN", help="rerun only the jobs of RUN without a stored result "
                   "(same suite, devices and run id)")
    p.add_argument("--max-parallel", type=int, metavar="N", help="devices run in parallel, one job at a time "
                   "each (default: all)")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (a deterministic split of the devices, "
                   "for CI matrices; give every shard the same --run-group)")
    p.add_argument("--device", "-d", action="append", metavar="ID",
                   help="device id (host, android:SERIAL, android, ios:UDID); repeatable; default: the suite's")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a suite field, e.g. --set iterations=20 --set measure.warmup_runs=2")
    p.add_argument("--quick", action="store_true",
                   help="a quick look, not a measurement to compare: " + QUICK_HELP + "; a --set still wins")
    p.add_argument("--weights", metavar="DIR", help="local diffusers checkpoint for real weights (default random)")
    p.add_argument("--prompt", metavar="TEXT", help="e2e workload: the prompt (same as --set workload_args.prompt=TEXT)")
    p.add_argument("--report", metavar="PATH", type=Path, help="HTML report path (default reports/RUN_ID.html)")
    p.add_argument("--no-report", action="store_true", help="do not print or write the report")
    _add_format(p, json_alias=True, help_extra="; table: the progress and the tables on stderr, the bare run id "
                "on stdout; json: one JSON object (run_id, status, counts, failures) on stdout")
    p.add_argument("--retries", type=int, default=1, metavar="N", help="retries of a transient failure (default 1)")
    p.add_argument("--run-group", metavar="NAME", help="group runs (e.g. CI shards) under one name")
    _add_store(p)
    _add_device_ctx(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="render a stored run as a table, Markdown, CSV or HTML",
                       description="Render the Table-1 view of a stored run.")
    p.add_argument("--run", default="latest", metavar="RUN", help="run id (or a unique prefix), or 'latest'")
    _add_format(p, choices=("table", "json", "md", "csv", "html", "terminal"), metavar="table|json|md|csv|html",
                help_extra="; md, csv, html: the report as a file format (terminal: the old name of table)")
    p.add_argument("-o", "--output", type=Path, metavar="PATH", help="write to PATH (default: stdout; html: "
                   "reports/RUN_ID.html)")
    p.add_argument("--run-group", metavar="NAME", help="merge every run of this group (e.g. the CI shards of "
                   "one nightly) into one report")
    p.add_argument("--list", action="store_true", help="list stored runs instead")
    p.add_argument("--compare", metavar="RUN|TAG", help="render the regression report of --run against this "
                   "baseline (a run, or a tag pooling its last 7 accepted runs); html goes to "
                   "reports/compare-RUN_ID.html by default")
    p.add_argument("--history", metavar="TAG", help="with --compare: tag whose accepted runs form the nightly "
                   "history (default: the baseline tag)")
    p.add_argument("--thresholds", type=Path, metavar="FILE", help="with --compare: YAML threshold overrides")
    _add_store(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("tag", help="tag a run (e.g. nightly), reject one, or record a re-baseline",
                       description="Tag RUN with TAG. `--baseline TAG` pools the last 7 accepted runs with the "
                                   "tag; the tag 'rejected' keeps a run out of every baseline and history; "
                                   "--rebaseline records a deliberate re-baseline (pools start at RUN).")
    p.add_argument("run", metavar="RUN", help="run id (or a unique prefix), or 'latest'")
    p.add_argument("tag", metavar="TAG", help="tag name, e.g. nightly; 'rejected' marks a run not accepted")
    p.add_argument("--note", help="why (stored with the tag and the re-baseline)")
    p.add_argument("--rebaseline", action="store_true",
                   help="record that comparisons against TAG start from RUN (a deliberate change)")
    p.add_argument("--match", action="append", default=[], metavar="FIELD=REGEX",
                   help="with --rebaseline: only cells whose FIELD (device, workload, variant, options_hash) "
                        "fully matches REGEX; repeatable")
    _add_store(p)
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser("compare", help="verdicts of a run against a baseline run or tag; CI outputs",
                       description="Compare a candidate run with a baseline, cell by cell (device x workload x "
                                   "variant x options): latency and memory verdicts, confirmation of "
                                   "regressions (previous nightly, or --rerun), JUnit/Markdown/JSON/HTML.",
                       epilog="Exit codes: 0 no confirmed regression (without --strict, also when some cells "
                              "could not be judged: the banner says so); 1 a REGRESSION is confirmed (wins over "
                              "3); 2 bad input (no such run or tag, too few tagged runs, a bad thresholds file, a "
                              "failed --rerun leaving regressions unconfirmed); 3 with --strict: some cell could "
                              "not be judged (UNSTABLE, INCONCLUSIVE, failed job) and no regression is confirmed.")
    p.add_argument("refs", nargs="*", metavar="REF", help="BASELINE [CANDIDATE], as --baseline/--candidate")
    p.add_argument("--baseline", "-b", metavar="RUN|TAG", help="a run id (or prefix), or a tag: its last 7 "
                   "accepted runs pooled per cell (at least 3)")
    p.add_argument("--candidate", "-c", metavar="RUN|latest", help="the run to judge (default: latest)")
    p.add_argument("--history", metavar="TAG", help="tag whose accepted runs form the nightly history "
                   "(default: the baseline tag; none for a run baseline)")
    p.add_argument("--thresholds", type=Path, metavar="FILE", help="YAML threshold overrides (after the suite's)")
    p.add_argument("--junit", type=Path, metavar="PATH", help="write JUnit XML (a testcase per cell)")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="write the Markdown summary")
    p.add_argument("--json", type=Path, metavar="PATH", help="write regressions.json")
    p.add_argument("--html", type=Path, metavar="PATH", help="write the self-contained HTML report")
    p.add_argument("--rerun", action="store_true", help="rerun the regressed cells (through `harness run`'s "
                   "path, on the same devices) to confirm them")
    p.add_argument("--strict", action="store_true", help="exit 3 when some cell could not be judged (UNSTABLE, "
                   "INCONCLUSIVE, failed job) and no regression is confirmed (a confirmed one still exits 1)")
    ab = p.add_argument_group("same-session A/B (--ab)", "Run the baseline's and the candidate's jobs again, "
                              "interleaved on one device in one session (ABBA blocks), sampling until the verdict "
                              "is clear or the budget is spent; drift cancels. Defaults: the candidate suite's "
                              "`ab:` section, then harness.abtest's (README 'Same-session A/B').")
    ab.add_argument("--ab", action="store_true", help="judge by a same-session A/B run instead of the stored samples")
    ab.add_argument("--device", "-d", action="append", metavar="ID", help="device(s) of the A/B session "
                    "(default: the candidate run's devices)")
    ab.add_argument("--block", type=int, metavar="N", help="timed samples per block (one job of one side)")
    ab.add_argument("--first-look", type=int, metavar="N", help="samples per side before the first verdict")
    ab.add_argument("--batch", type=int, metavar="N", help="samples per side added before each further look")
    ab.add_argument("--max-samples", type=int, metavar="N", help="sample budget per side and cell")
    ab.add_argument("--max-seconds", type=float, metavar="S", help="time budget per cell (session seconds)")
    ab.add_argument("--design", choices=["abba", "random"], help="block order: ABBA quartets or random AB/BA pairs")
    _add_store(p)
    _add_device_ctx(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="build the device artifacts (.tflite, .mlpackage) a suite needs",
                       description="Convert every variant of SUITE into its device artifact (workload e2e: the UNet, "
                                   "text encoder and VAE decoder), checked against the "
                                   "PyTorch reference, into the content-addressed cache. Rows that are the same "
                                   "artifact under the flag-to-format mapping share one (README 'Artifacts').")
    p.add_argument("suite", type=Path, help="suite YAML file, e.g. suites/table1.yaml")
    p.add_argument("--artifact-format", "-a", default=None, metavar="FMT",
                   help="tflite | coreml | all (default: the suite runtime's format, tflite unless coreml)")
    _add_format(p, choices=OUTPUT_FORMATS + ARTIFACT_FORMAT_ARGS, metavar="table|json",
                help_extra="; table: the table on stderr and each artifact's path, whole, one per line on stdout; "
                           "json: one JSON list of the artifacts on stdout. tflite|coreml|all here: the old "
                           "spelling of --artifact-format")
    p.add_argument("--dtype", default=None, choices=["fp16", "fp32", "int8"],
                   help="weight dtype of the artifacts (default: the suite's dtype if fp16/fp32, else fp16; "
                        "int8: weight-only, per channel)")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a suite field, as for `harness run`")
    p.add_argument("--weights", metavar="DIR", help="local diffusers checkpoint for real weights (default random)")
    p.add_argument("--prompt", metavar="TEXT", help="e2e workload: the prompt (same as --set workload_args.prompt=TEXT)")
    p.add_argument("--cache", metavar="DIR", type=Path, help="artifact cache (default $HARNESS_CACHE or ~/.cache/harness)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("inspect", help="what an artifact holds: weights by dtype, ops by category, planned tensors",
                       description="Read a .tflite file or an .mlpackage: weight MB by element type, the op "
                                   "histogram in the paper's categories (composites named), planned tensor MB "
                                   "from the artifact's own graph (greedy-by-size), and for a .tflite whether it "
                                   "compiles wholly on LiteRT's GPU accelerator (a GPU through Vulkan, or "
                                   "SwiftShader), naming every op it refuses.")
    p.add_argument("artifact", type=Path, help="a .tflite file or .mlpackage directory (`harness export` prints "
                   "their paths on stdout)")
    _add_format(p, json_alias=True)
    p.add_argument("--no-gpu", action="store_true", help="skip compiling a .tflite on the GPU accelerator")
    p.set_defaults(func=cmd_inspect)
    return parser


# ------------------------------------------------------------------------------------ commands

def _ctx(args):
    from harness.devices.base import DeviceContext

    farm_path = getattr(args, "farm", None)
    return DeviceContext(cache_dir=getattr(args, "cache", None), adb_servers=list(getattr(args, "adb", None) or []),
                         benchmark_model=getattr(args, "benchmark_model", None), farm=_load_farm(farm_path),
                         ios_agent=getattr(args, "ios_agent", None),
                         farm_path=farm_path.resolve() if farm_path else None,
                         # AI Hub named: discovery says why it found nothing (no token) instead of staying silent
                         extra={"aihub": bool(getattr(args, "aihub", False)) or any(
                             str(d).startswith("aihub") for d in getattr(args, "device", None) or [])})


def cmd_devices(args) -> int:
    from rich.console import Console

    from harness.devices.base import DeviceError, discover_all

    try:
        infos = discover_all(_ctx(args), kinds=["aihub"] if args.aihub else None)
    except DeviceError as exc:
        raise InputError(str(exc)) from None
    if args.aihub and args.format != "json":
        return _print_aihub_devices(infos)
    if args.format == "json":
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return EXIT_OK
    console = Console()  # a terminal's width; piped: 80 columns (or $COLUMNS)
    table, notes = devices_table(infos, console)
    console.print(table)
    for line in notes:
        console.print(line, markup=False, highlight=False)
    return EXIT_OK


_DEVICE_DROP_ORDER = ("RAM", "OS", "SoC", "GPU", "model")  # from a devices table too wide for the console


def _print_aihub_devices(infos) -> int:
    """`harness devices --aihub`: the Hub's devices (id, OS, chipset, attributes) fitted to the console like
    `harness devices` (the id is never cut; attributes go first when it is narrow), notes under the table."""
    from rich.console import Console

    from harness.report.fit import fit_table

    console = Console()
    rows = [[i.id, i.os_version, i.soc, ", ".join(a for a in i.extra.get("attributes", [])
                                                    if not a.startswith(("chipset:", "os:")))]
            for i in infos if not i.note]
    table, dropped = fit_table(console, "Qualcomm AI Hub devices (use as --device 'aihub:NAME')",
                               ["id", "OS", "chipset", "attributes"], rows, ("attributes", "OS"),
                               left=("OS", "chipset", "attributes"))
    console.print(table)
    if dropped:
        console.print(f"not shown at this width: {', '.join(dropped)} (a wider terminal, or --format json, "
                      "shows them)", markup=False, highlight=False)
    for line in _stand_in_lines(infos):
        console.print(line, markup=False, highlight=False)
    for i in (i for i in infos if i.note):
        console.print(f"note: {i.hint or i.state}", markup=False, highlight=False)
    return EXIT_OK


def _stand_in_lines(infos) -> list[str]:
    """Devices that are not what they say (fake phones, an API stand-in): one line each under a device table."""
    return [f"stand-in: {i.id}: {', '.join(i.stand_in)} (not a real device's figures)"
            for i in infos if not i.note and i.stand_in]


def devices_table(infos, console):
    """`harness devices` as a table that fits the console without cutting a device id or a state (the id is
    what --device takes): the id never wraps, nor the state (one word); the other columns wrap between words,
    and where that is not enough the least needed go (_DEVICE_DROP_ORDER; named under the table). What to do
    about a device that is not ready is a numbered note under the table (the row's `note` column gives its
    number), and an unreachable adb server or usbmuxd (not a device) a `note:` line.
    Returns (table, the lines to print under it)."""
    from harness.report.fit import fit_table

    devices = [i for i in infos if not i.note]
    hints = [i for i in devices if i.hint]
    heads = ["id", "state"] + (["note"] if hints else []) + ["model", "SoC", "GPU", "OS", "RAM"]
    number = {id(i): n for n, i in enumerate(hints, 1)}
    rows = []
    for i in devices:
        ram = f"{i.ram_bytes / 2**30:.1f} GiB" if i.ram_bytes else ""
        note = [str(number.get(id(i), ""))] if hints else []
        rows.append([i.id, i.state, *note, i.model, i.soc, i.gpu, i.os_version, ram])
    table, dropped = fit_table(console, "Devices", heads, rows, _DEVICE_DROP_ORDER,
                               left=("state", "model", "SoC", "GPU", "OS", "RAM"))
    lines = [f"not shown at this width: {', '.join(dropped)} (a wider terminal, or --format json, shows them)"] \
        if dropped else []
    lines += [f"{n}. {i.id} ({i.state}): {i.hint}" for n, i in enumerate(hints, 1)]
    lines += _stand_in_lines(infos)
    lines += [f"note: {i.hint or i.name + ': ' + i.state}" for i in infos if i.note]
    return table, lines


def _check_runtimes_on_devices(plan, infos) -> None:
    """Every job's runtime must run on its device's kind (harness.runtimes): else exit 2, before any job."""
    from harness.runtimes import UnknownRuntimeError, get_runtime

    kinds = {i.id: i.kind for i in infos}
    problems = []
    for job in plan.jobs:
        try:
            get_runtime(job.spec.options.runtime).on(kinds.get(job.device, job.device.split(":")[0]))
        except UnknownRuntimeError as exc:
            if str(exc) not in problems:
                problems.append(str(exc))
    if problems:
        raise InputError("; ".join(problems) + "; pick another --device or --set runtime=...")


def cmd_run(args) -> int:
    from harness.devices.base import DeviceError, resolve_devices
    from harness.runner import execute, shard_devices
    from harness.store import new_run_id
    from harness.suite import Suite, SuiteError, expand, load_suite

    if args.resume and (args.quick or args.overrides):
        raise InputError("--resume RUN runs the rest of RUN with its stored suite; --quick and --set do not apply "
                         "to it (start a new run to change the settings)")
    overrides = run_overrides(args)
    if args.weights:
        if not Path(args.weights).expanduser().is_dir():
            raise InputError(f"--weights {args.weights!r}: no such directory; give a local diffusers checkpoint "
                             "(the folder with unet/config.json) or leave --weights out for random weights")
        overrides.append(f"model.weights={Path(args.weights).expanduser().resolve()}")
    if args.prompt is not None:
        overrides.append(f"workload_args.prompt={json.dumps(args.prompt)}")  # JSON is YAML: quotes kept
    store = _store(args)
    skip_keys: set[str] = set()
    if args.resume:
        run_id = store.resolve_run(args.resume)
        previous_run = store.load_run(run_id)
        try:
            suite = Suite.model_validate(previous_run.suite)
        except ValueError as exc:
            raise InputError(f"run {run_id} cannot be resumed: its stored suite no longer validates: {exc}") from None
        skip_keys = store.completed_job_keys(run_id)
        device_ids = suite.devices
    else:
        if args.suite is None:
            raise InputError("give a SUITE to run (e.g. suites/table1.yaml), or --resume RUN")
        try:
            suite = load_suite(args.suite, overrides)
        except SuiteError as exc:
            raise InputError(str(exc)) from None
        run_id = new_run_id()
        device_ids = args.device or suite.devices
    ctx = _ctx(args)
    try:
        infos = resolve_devices(device_ids, ctx)
        if args.shard:
            try:
                mine = shard_devices([i.id for i in infos], args.shard)
            except ValueError as exc:
                raise InputError(str(exc)) from None
            infos = [i for i in infos if i.id in mine]
            if not infos:
                print(f"shard {args.shard}: no device falls in this shard; nothing to run", file=sys.stderr)
                return EXIT_OK
        android = [i.id.split(":", 1)[1] for i in infos if i.kind == "android"]
        if android:
            from harness.devices.android import check_benchmark_model

            check_benchmark_model(ctx, android)
        if ctx.ios_agent and any(i.kind == "ios" for i in infos):
            from harness.devices.ios import ipa_info

            ipa_info(ctx.ios_agent)  # a path that is no IPA stops here (exit 2), before any job
    except DeviceError as exc:
        raise InputError(str(exc)) from None
    plan = expand(suite, [i.id for i in infos], run_id)
    _check_runtimes_on_devices(plan, infos)
    if args.resume:
        store.reopen_run(run_id)
        todo = sum(1 for j in plan.jobs if j.job_key not in skip_keys)
        print(f"resuming run {run_id}: {todo} of {_count(len(plan.jobs), 'job')} have no stored result",
              file=sys.stderr)
    else:
        suite_doc = suite.model_dump(mode="json")
        suite_doc["devices"] = [i.id for i in infos]  # what --resume runs again
        store.create_run(run_id, suite.name, suite_doc, str(args.suite), args.run_group)
        print(f"run {run_id}: {_count(len(plan.jobs), 'job')} on "
              f"{', '.join(standin.marked(i.id, i.stand_in) for i in infos)} -> "
              f"{store.display_url}",
              file=sys.stderr)
        if store.in_memory:
            print(f"warning: --store {store.display_url} is an in-memory database: the results vanish when this "
                  "command exits; pass a file (--store sqlite:///results/harness.db) to keep them", file=sys.stderr)
    from harness.export.commands import prepare_run_artifacts

    try:
        prepare_run_artifacts(plan, ctx.cache_dir)  # host runtimes that run an artifact (litert-cpu): via the cache
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted")
        print(f"\ninterrupted while exporting artifacts; run {run_id} is marked interrupted; continue with "
              f"`harness run --resume {run_id}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    progress = RichProgress()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # CI cancels with SIGTERM: same as Ctrl-C
    try:
        outcome = execute(plan, infos, store, run_id, ctx, Path("results") / "runs", progress, args.retries,
                          skip_keys=skip_keys, max_parallel=args.max_parallel)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished jobs are stored; run {run_id} is marked interrupted; continue with "
              f"`harness run --resume {run_id}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not args.no_report:  # stdout holds only the run id (`run=$(harness run ...)`): the table goes to stderr
        from harness.report.render import render, terminal_console  # pandas/matplotlib: only when reporting

        run = store.load_run(run_id)
        # a failed row's stderr tail: once, in the FAILED lines below
        render(run, "table", console=terminal_console(stderr=True), error_details=False)
        report = args.report or Path("reports") / f"{run_id}.html"
        render(run, "html", report)
        print(f"report: {report}", file=sys.stderr)
    for job, result in outcome.failures:
        print(_failure_text(job, result), file=sys.stderr)
    if args.format == "json":
        stand_ins: dict[str, list[str]] = {i.id: list(i.stand_in) for i in infos}
        for job in store.load_run(run_id).jobs:  # the tools' stand-ins, merged with the devices' when stored
            stand_ins[job.device_id] = standin.merge(stand_ins.get(job.device_id), job.result.stand_in)
        print(json.dumps({"run_id": run_id, "status": outcome.status,
                          "counts": {"jobs": len(plan.jobs), "ok": outcome.ok, "failed": outcome.failed,
                                     "skipped": len(skip_keys & {j.job_key for j in plan.jobs}),
                                     "retried": outcome.retried},
                          "failures": [{"device": job.device, "variant": job.variant, "axes": job.axes,
                                        **result.error.model_dump()} for job, result in outcome.failures],
                          # device -> what on it was a stand-in (harness.standin); only devices that had one
                          "stand_in": {d: v for d, v in stand_ins.items() if v}}))
    else:
        print(run_id)
    return EXIT_JOB_FAILED if outcome.failed else EXIT_OK


def cmd_export(args) -> int:
    from harness.export.commands import export_suite, formats_from_arg
    from harness.export.mapping import UnknownFormatError
    from harness.suite import SuiteError, load_suite

    overrides = list(args.overrides)
    if args.weights:
        if not Path(args.weights).expanduser().is_dir():
            raise InputError(f"--weights {args.weights!r}: no such directory; give a local diffusers checkpoint")
        overrides.append(f"model.weights={Path(args.weights).expanduser().resolve()}")
    if args.prompt is not None:
        overrides.append(f"workload_args.prompt={json.dumps(args.prompt)}")  # JSON is YAML: quotes kept
    artifact_format, output = args.artifact_format, args.format
    if output in ARTIFACT_FORMAT_ARGS:  # the old spelling: `export --format tflite`
        if artifact_format is not None:
            raise InputError(f"--format {output} is the old spelling of --artifact-format {output}; give only "
                             f"--artifact-format {artifact_format} (and --format table|json for the output)")
        artifact_format, output = output, "table"
    try:
        suite = load_suite(args.suite, overrides)
        formats = formats_from_arg(artifact_format, suite.options.runtime)
    except (SuiteError, UnknownFormatError) as exc:
        raise InputError(str(exc)) from None
    # per sweep combination: its dtype unless --dtype
    return export_suite(suite, formats, args.dtype, args.cache, output=output)


def cmd_inspect(args) -> int:
    from harness.export.commands import inspect_command

    try:
        return inspect_command(args.artifact, args.format == "json", gpu=not args.no_gpu)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from None


def cmd_report(args) -> int:
    from harness.report.render import render

    if getattr(args, "compare", None):
        return _report_compare(args)
    store = _store(args, create=False)
    if args.list:
        runs = store.list_runs()
        if args.format == "json":
            keys = ("id", "suite_name", "status", "started_at", "ended_at", "git_commit", "run_group")
            print(json.dumps([{k: r.get(k) for k in keys} for r in runs], indent=2, default=str))
        else:
            for r in runs:
                print(f"{r['id']}  {r['suite_name']:<20} {r['status']:<12} {r['git_commit'] or ''}")
        return EXIT_OK
    if args.run_group:
        run = store.load_run_group(args.run_group)
    else:
        run = store.load_run(store.resolve_run(args.run))
    output = args.output
    if args.format == "html" and output is None:
        output = Path("reports") / f"{run.id}.html"
    text = render(run, args.format, output)
    if text is not None and output is None:
        sys.stdout.write(text)
    elif output is not None:
        print(f"wrote {output}", file=sys.stderr)
    return EXIT_OK


def _threshold_file(path: Path | None) -> list:
    """Threshold overrides from a YAML file: a list of {match, set}, or a mapping with `thresholds:`."""
    if path is None:
        return []
    import yaml

    from harness.compare import parse_threshold_overrides

    if not path.is_file():
        raise InputError(f"--thresholds {str(path)!r}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"--thresholds {path}: malformed YAML: {exc}") from None
    if isinstance(data, dict) and set(data) == {"thresholds"}:
        data = data["thresholds"]
    try:
        return parse_threshold_overrides(data)
    except ValueError as exc:
        raise InputError(f"--thresholds {path}: {exc}") from None


def _regression_report(args, store, baseline: str, candidate: str, rerun=None):
    from harness.baseline import BaselineError
    from harness.regression import compare_runs

    overrides = _threshold_file(getattr(args, "thresholds", None))
    try:
        return compare_runs(store, baseline, candidate, overrides,
                            overrides_source=str(args.thresholds) if args.thresholds else None,
                            rerun=rerun, history_tag=args.history)
    except BaselineError as exc:
        raise InputError(str(exc)) from None


def _report_compare(args) -> int:
    from harness.report import regression_render as rr

    store = _store(args, create=False)
    report = _regression_report(args, store, args.compare, args.run)
    if args.format in ("table", "terminal") and args.output is None:
        rr.render_terminal(report)
        return EXIT_OK
    output = args.output
    if args.format == "html" and output is None:
        output = Path("reports") / f"compare-{report.candidate.id}.html"
    renderer = {"table": rr.render_markdown, "terminal": rr.render_markdown, "md": rr.render_markdown,
                "csv": rr.render_csv, "json": rr.render_json, "html": rr.render_html}[args.format]
    text = renderer(report)
    if output is None:
        sys.stdout.write(text)
    else:
        rr.write_text_atomic(output, text)
        print(f"wrote {output}", file=sys.stderr)
    return EXIT_OK


def cmd_tag(args) -> int:
    from harness.baseline import BaselineError, parse_match, record_rebaseline

    store = _store(args, create=False)
    if args.match and not args.rebaseline:
        raise InputError("--match only applies with --rebaseline")
    try:
        if args.rebaseline:
            run_id = record_rebaseline(store, args.run, args.tag, parse_match(args.match), args.note)
            where = f" for cells matching {', '.join(args.match)}" if args.match else ""
            print(f"tagged {run_id} {args.tag!r} and recorded a re-baseline{where}: comparisons against "
                  f"{args.tag!r} now pool runs from {run_id} on", file=sys.stderr)
            return EXIT_OK
    except BaselineError as exc:
        raise InputError(str(exc)) from None
    from harness.baseline import resolve_candidate

    run_id = resolve_candidate(store, args.run)  # 'latest' skips automatic reruns
    store.tag_run(run_id, args.tag, args.note)
    print(f"tagged {run_id} {args.tag!r}", file=sys.stderr)
    return EXIT_OK


def cmd_compare(args) -> int:
    from harness.report import regression_render as rr

    refs = list(args.refs)
    if len(refs) > 2:
        raise InputError(f"compare takes at most BASELINE and CANDIDATE, got {len(refs)} references")
    if refs and args.baseline:
        raise InputError("give the baseline either as --baseline or as the first argument, not both")
    if len(refs) == 2 and args.candidate:
        raise InputError("give the candidate either as --candidate or as the second argument, not both")
    baseline = args.baseline or (refs[0] if refs else None)
    if not baseline:
        raise InputError("compare needs a baseline: --baseline RUN|TAG (e.g. --baseline nightly)")
    candidate = args.candidate or (refs[1] if len(refs) == 2 else "latest")
    store = _store(args, create=False)
    ab_flags = [f"--{k.replace('_', '-')}" for k in _AB_PLAN_FLAGS if getattr(args, k) is not None]
    if not args.ab and (ab_flags or args.device):
        raise InputError(f"{', '.join(ab_flags + (['--device'] if args.device else []))} only apply to a same-session "
                         "A/B comparison: add --ab")
    if args.ab and (args.rerun or args.history):
        raise InputError("--ab judges by its own same-session runs: leave out --rerun and --history")
    if args.ab:
        report = _ab_report(args, store, baseline, candidate)
        if report is None:
            return EXIT_INTERRUPTED
    else:
        rerun = _rerun_callback(args, store) if args.rerun else None
        report = _regression_report(args, store, baseline, candidate, rerun)
    rr.render_terminal(report)
    for path in rr.write_outputs(report, junit=args.junit, markdown=args.markdown, json=args.json, html=args.html):
        print(f"wrote {path}", file=sys.stderr)
    if report.rerun_error and report.exit_code() == 0 and report.regressions():
        print(f"error: the automatic rerun failed ({report.rerun_error}); regressions stay unconfirmed",
              file=sys.stderr)
        return EXIT_INPUT
    return report.exit_code(strict=args.strict)


_AB_PLAN_FLAGS = ("block", "first_look", "batch", "max_samples", "max_seconds", "design")


def _ab_report(args, store, baseline: str, candidate: str):
    """`compare --ab`: pair the two runs' jobs, run the same-session A/B on the devices, judge; None on Ctrl-C."""
    from harness.ab_run import pair_runs, run_ab
    from harness.abtest import PlanError, SequentialPlan, describe
    from harness.baseline import BaselineError, resolve_candidate
    from harness.devices.base import DeviceError, resolve_devices
    from harness.export.commands import prepare_run_artifacts
    from harness.suite import Suite

    try:
        cand = store.load_run(resolve_candidate(store, candidate))
        device_ids = list(args.device or cand.suite.get("devices") or ["host"])
        ctx = _ctx(args)
        infos = resolve_devices(device_ids, ctx)
        android = [i.id.split(":", 1)[1] for i in infos if i.kind == "android"]
        if android:
            from harness.devices.android import check_benchmark_model

            check_benchmark_model(ctx, android)
        setup = pair_runs(store, baseline, cand.id, [i.id for i in infos])
        values = dict(Suite.model_validate(cand.suite).ab)
        values.update({k: getattr(args, k) for k in _AB_PLAN_FLAGS if getattr(args, k) is not None})
        plan = SequentialPlan.from_dict(values)
    except (BaselineError, DeviceError, PlanError) as exc:
        raise InputError(str(exc)) from None
    except ValueError as exc:  # a stored suite that no longer validates
        raise InputError(f"run {cand.id}: {exc}") from None
    _check_runtimes_on_devices(SimpleNamespace(jobs=setup.a_jobs + setup.b_jobs), infos)
    for jobs, suite in ((setup.a_jobs, setup.a_suite), (setup.b_jobs, setup.b_suite)):
        prepare_run_artifacts(SimpleNamespace(jobs=jobs, suite=suite), ctx.cache_dir)

    print(f"A/B session: {len(setup.pairs)} cell(s), side A = run {setup.a_source}, side B = run {setup.b_source}, "
          f"on {', '.join(i.id for i in infos)}\n{describe(plan)}", file=sys.stderr)

    def progress(side, pair, index, session) -> None:
        print(f"  {pair.key.device} {pair.key.variant}: block {index + 1} ({side}); "
              f"{len(session.samples_a)} + {len(session.samples_b)} samples, {len(session.looks)} look(s)",
              file=sys.stderr, flush=True)

    overrides = _threshold_file(getattr(args, "thresholds", None))
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run_ab(store, ctx, setup, infos, plan, Path("results") / "runs", overrides,
                      str(args.thresholds) if args.thresholds else None, progress)
    except KeyboardInterrupt:
        print("\ninterrupted: the finished blocks are stored in the session's A and B runs (marked interrupted)",
              file=sys.stderr)
        return None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rerun_callback(args, store):
    """Rerun the given cells of the candidate run through the normal run path, into a new run."""

    def rerun(candidate_id: str, cells) -> str:
        from pydantic import ValidationError

        from harness.baseline import RERUN_GROUP_PREFIX
        from harness.devices.base import DeviceError, resolve_devices
        from harness.runner import execute
        from harness.store import new_run_id
        from harness.suite import Suite, expand

        cand = store.load_run(candidate_id)
        try:
            suite = Suite.model_validate(cand.suite)
        except ValidationError as exc:
            raise InputError(f"cannot rerun: run {cand.id}'s stored suite no longer validates: {exc}") from None
        wanted = {(c.device, c.workload, c.variant, c.options_hash) for c in cells}
        ctx = _ctx(args)
        try:
            infos = resolve_devices(sorted({c.device for c in cells}), ctx)
        except DeviceError as exc:
            raise InputError(f"cannot rerun: {exc}") from None
        run_id = new_run_id()
        plan = expand(suite, [i.id for i in infos], run_id)
        skip = {j.job_key for j in plan.jobs
                if (j.device, j.spec.workload, j.variant, j.options_hash) not in wanted}
        if len(skip) == len(plan.jobs):
            raise InputError(f"cannot rerun: run {cand.id}'s suite no longer expands to the regressed cells")
        store.create_run(run_id, suite.name, suite.model_dump(mode="json"), None, f"{RERUN_GROUP_PREFIX}{cand.id}")
        print(f"rerun {run_id}: {len(plan.jobs) - len(skip)} regressed cell(s) of {cand.id}", file=sys.stderr)
        execute(plan, infos, store, run_id, ctx, Path("results") / "runs", RichProgress(), 1, skip_keys=skip)
        return run_id

    return rerun


def _raise_interrupt(signum, frame):  # noqa: ANN001
    raise KeyboardInterrupt


def _store(args, create: bool = True):
    """The results store; create=False for commands that only read it (report, compare, tag): a SQLite
    file that is not there is an input error, not a new empty database."""
    from harness.store import Store, StoreError

    try:
        return Store(args.store, create=create)
    except StoreError as exc:
        raise InputError(str(exc)) from None


def _count(n: int, noun: str) -> str:
    """'1 job', '3 jobs'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _failure_text(job, result) -> str:
    """`FAILED device variant: kind: message`, then the tail of the device's stderr (JobError.detail: bounded,
    credentials masked), indented, so the cause is on the terminal, not only in the job's folder."""
    err = result.error
    text = f"FAILED {_job_label(job)}: {err.kind}: {err.message}"
    if err.detail:
        text += "\n  the device's last output (stderr):\n" + "\n".join(f"    | {line}" for line in err.detail.splitlines())
    return text


def _job_label(job) -> str:
    """device variant [sweep combination]."""
    from harness.report.table1 import combination_label

    combo = combination_label(getattr(job, "axes", {}) or {})
    return f"{job.device} {job.variant}" + (f" [{combo}]" if combo else "")


class RichProgress:
    """A rich progress bar over the run's jobs, with the job in flight, its phase and an ETA (the mean time
    of the finished jobs times the jobs left; see harness.runner.eta_seconds)."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from rich.console import Console

        # stderr: stdout holds only what scripts capture (the run id)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), transient=False,
                             console=Console(stderr=True))
        self._task = None
        self._total = 0
        self._started: dict[int, float] = {}  # job index -> start time (monotonic)
        self._durations: list[float] = []

    def eta_text(self) -> str:
        import time

        from harness.runner import eta_seconds, format_eta

        now = time.monotonic()
        in_flight = sum(now - t for t in self._started.values())
        remaining = self._total - len(self._durations)
        return format_eta(eta_seconds(self._durations, remaining, in_flight, parallel=max(1, len(self._started))))

    def start(self, total_jobs: int) -> None:
        self._total = total_jobs
        self._bar.start()
        self._task = self._bar.add_task("starting", total=total_jobs, eta=self.eta_text())

    def job_started(self, job) -> None:
        import time

        self._started.setdefault(job.index, time.monotonic())  # a retry keeps the first attempt's start
        self._bar.update(self._task, description=_job_label(job), eta=self.eta_text())

    def job_phase(self, job, phase: str, done: int, total: int) -> None:
        detail = f" {done}/{total}" if total > 1 else ""
        self._bar.update(self._task, description=f"{_job_label(job)}: {phase}{detail}", eta=self.eta_text())

    def job_finished(self, job, result) -> None:
        import time

        started = self._started.pop(job.index, None)
        if started is not None:
            self._durations.append(time.monotonic() - started)
        mark = "ok" if result.status == "ok" else f"FAILED ({result.error.kind})"
        self._bar.console.print(f"{_job_label(job)}: {mark}", markup=False)
        self._bar.advance(self._task)
        self._bar.update(self._task, eta=self.eta_text())

    def stop(self) -> None:
        self._bar.stop()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from harness.store import StoreError

    try:
        return args.func(args)
    except (InputError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
