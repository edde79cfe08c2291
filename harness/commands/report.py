"""`harness report`: a stored run (or run group) as a table, JSON, Markdown, CSV or HTML; with --compare, the
regression report of a run against a baseline."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from harness.commands import EXIT_OK
from harness.commands.common_args import add_format, add_store, open_store
from harness.commands.compare import regression_report
from harness.report import regression_render as rr


def add_parser(sub, help: str) -> None:  # noqa: A002 - argparse's name
    p = sub.add_parser("report", help=help,
                       description="Render the Table-1 view of a stored run.")
    p.add_argument("--run", default="latest", metavar="RUN", help="run id (or a unique prefix), or 'latest'")
    add_format(p, choices=("table", "json", "md", "csv", "html", "terminal"), metavar="table|json|md|csv|html",
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
    add_store(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    if getattr(args, "compare", None):
        return _report_compare(args)
    store = open_store(args, create=False)
    if args.list:
        runs = store.list_runs()
        if args.format == "json":
            keys = ("id", "suite_name", "status", "started_at", "ended_at", "git_commit", "run_group")
            print(json.dumps([{k: r.get(k) for k in keys} for r in runs], indent=2, default=str))
        else:
            for r in runs:
                print(f"{r['id']}  {r['suite_name']:<20} {r['status']:<12} {r['git_commit'] or ''}")
        return EXIT_OK
    from harness.report.render import render  # matplotlib, pandas: only when rendering a run

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


def _report_compare(args) -> int:
    store = open_store(args, create=False)
    report = regression_report(args, store, args.compare, args.run)
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
