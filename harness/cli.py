"""Command line: `harness devices | run | report` (also `python -m harness`).

Exit codes: 0 success; 1 a job failed (everything else was stored); 2 bad input or environment;
130 interrupted (everything finished was stored, the run is marked interrupted).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_JOB_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class InputError(Exception):
    """Bad input or environment: printed without a traceback, exit code 2."""


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="URL", help="SQLAlchemy URL of the results store "
                   "(default: $HARNESS_STORE or sqlite:///results/harness.db)")


def _add_device_ctx(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="DIR", type=Path, help="artifact and reference cache (default ~/.cache/harness)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark Stable Diffusion variants on phone GPUs and on this host: the Table-1 "
                    "ablation of arXiv 2304.11267 (baseline, + optimized softmax, + S-GN/GELU, "
                    "+ FlashAttention, + Winograd) and end-to-end generation.",
        epilog="Exit codes: 0 ok, 1 a job failed, 2 bad input, 130 interrupted. See README.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("devices", help="list the devices the harness can run on",
                       description="List attached devices (the host always) with their state and what to do "
                                   "when a device is not ready.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_device_ctx(p)
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("run", help="run a suite and store the results",
                       description="Expand SUITE into jobs (device x variant), run them, store every result, "
                                   "print the Table-1 view and write an HTML report.")
    p.add_argument("suite", type=Path, help="suite YAML file, e.g. suites/table1.yaml")
    p.add_argument("--device", "-d", action="append", metavar="ID",
                   help="device id (host, android:SERIAL, android, ios:UDID); repeatable; default: the suite's")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a suite field, e.g. --set iterations=20 --set measure.warmup_runs=2")
    p.add_argument("--weights", metavar="DIR", help="local diffusers checkpoint for real weights (default random)")
    p.add_argument("--report", metavar="PATH", type=Path, help="HTML report path (default reports/RUN_ID.html)")
    p.add_argument("--no-report", action="store_true", help="do not print or write the report")
    p.add_argument("--retries", type=int, default=1, metavar="N", help="retries of a transient failure (default 1)")
    p.add_argument("--run-group", metavar="NAME", help="group runs (e.g. CI shards) under one name")
    _add_store(p)
    _add_device_ctx(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="render a stored run as a table, Markdown, CSV or HTML",
                       description="Render the Table-1 view of a stored run.")
    p.add_argument("--run", default="latest", metavar="RUN", help="run id (or a unique prefix), or 'latest'")
    p.add_argument("--format", "-f", default="terminal", choices=["terminal", "md", "csv", "html"])
    p.add_argument("-o", "--output", type=Path, metavar="PATH", help="write to PATH (default: stdout; html: "
                   "reports/RUN_ID.html)")
    p.add_argument("--list", action="store_true", help="list stored runs instead")
    _add_store(p)
    p.set_defaults(func=cmd_report)
    return parser


# ------------------------------------------------------------------------------------ commands

def _ctx(args):
    from harness.devices.base import DeviceContext

    return DeviceContext(cache_dir=getattr(args, "cache", None))


def cmd_devices(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from harness.devices.base import discover_all

    infos = discover_all(_ctx(args))
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return EXIT_OK
    table = Table(title="Devices")
    for col in ("id", "state", "model", "SoC", "GPU", "OS", "RAM", "what to do"):
        table.add_column(col)
    for i in infos:
        ram = f"{i.ram_bytes / 2**30:.1f} GiB" if i.ram_bytes else ""
        table.add_row(i.id, i.state, i.model, i.soc, i.gpu, i.os_version, ram, i.hint)
    Console().print(table)
    return EXIT_OK


def cmd_run(args) -> int:
    from harness.devices.base import DeviceError, resolve_devices
    from harness.report.render import render
    from harness.runner import execute
    from harness.store import Store, new_run_id
    from harness.suite import SuiteError, expand, load_suite

    overrides = list(args.overrides)
    if args.weights:
        if not Path(args.weights).expanduser().is_dir():
            raise InputError(f"--weights {args.weights!r}: no such directory; give a local diffusers checkpoint "
                             "(the folder with unet/config.json) or leave --weights out for random weights")
        overrides.append(f"model.weights={Path(args.weights).expanduser().resolve()}")
    try:
        suite = load_suite(args.suite, overrides)
    except SuiteError as exc:
        raise InputError(str(exc)) from None
    ctx = _ctx(args)
    try:
        infos = resolve_devices(args.device or suite.devices, ctx)
    except DeviceError as exc:
        raise InputError(str(exc)) from None
    store = _store(args)
    run_id = new_run_id()
    plan = expand(suite, [i.id for i in infos], run_id)
    store.create_run(run_id, suite.name, suite.model_dump(mode="json"), str(args.suite), args.run_group)
    print(f"run {run_id}: {len(plan.jobs)} jobs on {', '.join(i.id for i in infos)} -> {store.url}",
          file=sys.stderr)
    progress = RichProgress()
    try:
        outcome = execute(plan, infos, store, run_id, ctx, Path("results") / "runs", progress, args.retries)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished jobs are stored; run {run_id} is marked interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.no_report:
        run = store.load_run(run_id)
        render(run, "terminal")
        report = args.report or Path("reports") / f"{run_id}.html"
        render(run, "html", report)
        print(f"report: {report}", file=sys.stderr)
    for job, result in outcome.failures:
        print(f"FAILED {job.device} {job.variant}: {result.error.kind}: {result.error.message}", file=sys.stderr)
    print(run_id)
    return EXIT_JOB_FAILED if outcome.failed else EXIT_OK


def cmd_report(args) -> int:
    from harness.report.render import render

    store = _store(args)
    if args.list:
        for r in store.list_runs():
            print(f"{r['id']}  {r['suite_name']:<20} {r['status']:<12} {r['git_commit'] or ''}")
        return EXIT_OK
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


def _store(args):
    from harness.store import Store, StoreError

    try:
        return Store(args.store)
    except StoreError as exc:
        raise InputError(str(exc)) from None


class RichProgress:
    """A rich progress bar over the run's jobs, with the job in flight and its phase."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), transient=False)
        self._task = None

    def start(self, total_jobs: int) -> None:
        self._bar.start()
        self._task = self._bar.add_task("starting", total=total_jobs)

    def job_started(self, job) -> None:
        self._bar.update(self._task, description=f"{job.device} {job.variant}")

    def job_phase(self, job, phase: str, done: int, total: int) -> None:
        detail = f" {done}/{total}" if total > 1 else ""
        self._bar.update(self._task, description=f"{job.device} {job.variant}: {phase}{detail}")

    def job_finished(self, job, result) -> None:
        mark = "ok" if result.status == "ok" else f"FAILED ({result.error.kind})"
        self._bar.console.print(f"{job.device} {job.variant}: {mark}")
        self._bar.advance(self._task)

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
