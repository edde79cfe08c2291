"""`harness compare`: verdicts of a candidate run against a baseline run or tag (harness.regression), confirmed
by a rerun of the regressed cells (--rerun: harness.session, the path of `harness run`) or judged by a
same-session A/B run (--ab: harness.ab_run); the CI outputs (JUnit, Markdown, JSON, HTML)."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

from harness.ab_run import pair_runs, run_ab
from harness.abtest import PlanError, SequentialPlan, describe
from harness.baseline import BaselineError, resolve_candidate
from harness.commands import EXIT_INPUT, EXIT_INTERRUPTED
from harness.commands.common_args import add_device_ctx, add_store, device_context, open_store
from harness.commands.progress import RichProgress
from harness.export.commands import prepare_run_artifacts
from harness.regression import compare_runs
from harness.report import regression_render as rr
from harness.session import RUNS_DIR, InputError, Session, check_runtimes, resolve, sigterm_as_interrupt
from harness.suite import Suite
from harness.thresholds import parse_threshold_overrides


def add_parser(sub, help: str) -> None:  # noqa: A002 - argparse's name
    p = sub.add_parser("compare", help=help,
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
    add_store(p)
    add_device_ctx(p)
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
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
    store = open_store(args, create=False)
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
        report = regression_report(args, store, baseline, candidate, rerun)
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
    try:
        cand = store.load_run(resolve_candidate(store, candidate))
        device_ids = list(args.device or cand.suite.get("devices") or ["host"])
        ctx = device_context(args)
        infos = resolve(device_ids, ctx)
        setup = pair_runs(store, baseline, cand.id, [i.id for i in infos])
        values = dict(Suite.model_validate(cand.suite).ab)
        values.update({k: getattr(args, k) for k in _AB_PLAN_FLAGS if getattr(args, k) is not None})
        plan = SequentialPlan.from_dict(values)
    except (BaselineError, PlanError) as exc:
        raise InputError(str(exc)) from None
    except ValueError as exc:  # a stored suite that no longer validates
        raise InputError(f"run {cand.id}: {exc}") from None
    check_runtimes(setup.a_jobs + setup.b_jobs, infos)
    for jobs, suite in ((setup.a_jobs, setup.a_suite), (setup.b_jobs, setup.b_suite)):
        prepare_run_artifacts(SimpleNamespace(jobs=jobs, suite=suite), ctx.cache_dir)

    print(f"A/B session: {len(setup.pairs)} cell(s), side A = run {setup.a_source}, side B = run {setup.b_source}, "
          f"on {', '.join(i.id for i in infos)}\n{describe(plan)}", file=sys.stderr)

    def progress(side, pair, index, session) -> None:
        print(f"  {pair.key.device} {pair.key.variant}: block {index + 1} ({side}); "
              f"{len(session.samples_a)} + {len(session.samples_b)} samples, {len(session.looks)} look(s)",
              file=sys.stderr, flush=True)

    overrides = threshold_file(getattr(args, "thresholds", None))
    try:
        with sigterm_as_interrupt():
            return run_ab(store, ctx, setup, infos, plan, RUNS_DIR, overrides,
                          str(args.thresholds) if args.thresholds else None, progress)
    except KeyboardInterrupt:
        print("\ninterrupted: the finished blocks are stored in the session's A and B runs (marked interrupted)",
              file=sys.stderr)
        return None


def _rerun_callback(args, store):
    """compare --rerun: the given cells of the candidate run again, through `harness run`'s path
    (harness.session: preflight, export, SIGTERM = interrupted), into a new run; returns its id."""

    def rerun(candidate_id: str, cells) -> str:
        return Session(store, device_context(args), RichProgress()).rerun(candidate_id, cells).run_id

    return rerun


def threshold_file(path: Path | None) -> list:
    """Threshold overrides from a YAML file: a list of {match, set}, or a mapping with `thresholds:`."""
    if path is None:
        return []
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


def regression_report(args, store, baseline: str, candidate: str, rerun=None):
    """The regression report of candidate against baseline with the --thresholds and --history of args."""
    overrides = threshold_file(getattr(args, "thresholds", None))
    try:
        return compare_runs(store, baseline, candidate, overrides,
                            overrides_source=str(args.thresholds) if args.thresholds else None,
                            rerun=rerun, history_tag=args.history)
    except BaselineError as exc:
        raise InputError(str(exc)) from None
