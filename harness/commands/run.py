"""`harness run`: a suite (or the rest of a stored run, --resume) through harness.session, then the Table-1 view
on stderr, the HTML report, and the run id (or one JSON object) on stdout."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from harness import standin
from harness.commands import EXIT_JOB_FAILED, EXIT_OK
from harness.commands.common_args import (
    add_device_ctx, add_format, add_model_inputs, add_set, add_store, device_context, open_store, suite_overrides,
)
from harness.commands.progress import RichProgress, job_label
from harness.session import InputError, Session, SessionRun
from harness.suite import SuiteError, load_suite

# `harness run --quick`: the suite overrides it applies (before the user's --set), and what it skips.
QUICK_OVERRIDES: tuple[str, ...] = ("measure.warmup_runs=0", "measure.iterations=2", "measure.min_seconds=0",
                                    "measure.passes=[memory]")
QUICK_HELP = ("no warmup runs (the untimed first call, which is also the reference check, still goes first; on "
              "the host CPU that call is the memory pass), "
              "2 timed iterations (min_seconds 0), no op-time pass; the memory columns stay")


def run_overrides(args) -> list[str]:
    """`harness run`'s suite overrides: --quick's first, then the user's --set (so a --set wins)."""
    return [*(QUICK_OVERRIDES if getattr(args, "quick", False) else ()), *args.overrides]


def add_parser(sub, help: str) -> None:  # noqa: A002 - argparse's name
    p = sub.add_parser("run", help=help,
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
    add_set(p, "override a suite field, e.g. --set iterations=20 --set measure.warmup_runs=2")
    p.add_argument("--quick", action="store_true",
                   help="a quick look, not a measurement to compare: " + QUICK_HELP + "; a --set still wins")
    add_model_inputs(p)
    p.add_argument("--report", metavar="PATH", type=Path, help="HTML report path (default reports/RUN_ID.html)")
    p.add_argument("--no-report", action="store_true", help="do not print or write the report")
    add_format(p, json_alias=True, help_extra="; table: the progress and the tables on stderr, the bare run id "
               "on stdout; json: one JSON object (run_id, status, counts, failures) on stdout")
    p.add_argument("--retries", type=int, default=1, metavar="N", help="retries of a transient failure (default 1)")
    p.add_argument("--run-group", metavar="NAME", help="group runs (e.g. CI shards) under one name")
    add_store(p)
    add_device_ctx(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    if args.resume and (args.quick or args.overrides):
        raise InputError("--resume RUN runs the rest of RUN with its stored suite; --quick and --set do not apply "
                         "to it (start a new run to change the settings)")
    overrides = suite_overrides(args, run_overrides(args))
    store = open_store(args)
    if args.resume:
        run = _session(args, store).resume(args.resume, args.shard)
    else:
        if args.suite is None:
            raise InputError("give a SUITE to run (e.g. suites/table1.yaml), or --resume RUN")
        try:
            suite = load_suite(args.suite, overrides)
        except SuiteError as exc:
            raise InputError(str(exc)) from None
        run = _session(args, store).start(suite, args.device or suite.devices, str(args.suite), args.run_group,
                                          args.shard)
    if run is None:
        print(f"shard {args.shard}: no device falls in this shard; nothing to run", file=sys.stderr)
        return EXIT_OK
    if not args.no_report:  # stdout holds only the run id (`run=$(harness run ...)`): the table goes to stderr
        from harness.report.render import render, terminal_console  # matplotlib, pandas: only when reporting

        record = store.load_run(run.run_id)
        # a failed row's stderr tail: once, in the FAILED lines below
        render(record, "table", console=terminal_console(stderr=True), error_details=False)
        report = args.report or Path("reports") / f"{run.run_id}.html"
        render(record, "html", report)
        print(f"report: {report}", file=sys.stderr)
    for job, result in run.outcome.failures:
        print(failure_text(job, result), file=sys.stderr)
    if args.format == "json":
        print(json.dumps(_json_summary(run, store)))
    else:
        print(run.run_id)
    return EXIT_JOB_FAILED if run.outcome.failed else EXIT_OK


def _session(args, store) -> Session:
    return Session(store, device_context(args), RichProgress(), args.retries, args.max_parallel)


def _json_summary(run: SessionRun, store) -> dict:
    """`harness run --format json`: run id, status, counts, failures and the stand-ins, as one object."""
    outcome = run.outcome
    stand_ins: dict[str, list[str]] = {i.id: list(i.stand_in) for i in run.infos}
    for job in store.load_run(run.run_id).jobs:  # the tools' stand-ins, merged with the devices' when stored
        stand_ins[job.device_id] = standin.merge(stand_ins.get(job.device_id), job.result.stand_in)
    return {"run_id": run.run_id, "status": outcome.status,
            "counts": {"jobs": len(run.plan.jobs), "ok": outcome.ok, "failed": outcome.failed,
                       "skipped": run.skipped, "retried": outcome.retried},
            "failures": [{"device": job.device, "variant": job.variant, "axes": job.axes,
                          **result.error.model_dump()} for job, result in outcome.failures],
            # device -> what on it was a stand-in (harness.standin); only devices that had one
            "stand_in": {d: v for d, v in stand_ins.items() if v}}


def failure_text(job, result) -> str:
    """`FAILED device variant: kind: message`, then the tail of the device's stderr (JobError.detail: bounded,
    credentials masked), indented, so the cause is on the terminal, not only in the job's folder."""
    err = result.error
    text = f"FAILED {job_label(job)}: {err.kind}: {err.message}"
    if err.detail:
        text += "\n  the device's last output (stderr):\n" + "\n".join(f"    | {line}" for line in err.detail.splitlines())
    return text
