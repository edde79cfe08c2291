"""`harness tag`: tag a run, reject one, or record a deliberate re-baseline (harness.baseline)."""
from __future__ import annotations

import sys

from harness.baseline import BaselineError, parse_match, record_rebaseline, resolve_candidate
from harness.commands import EXIT_OK
from harness.commands.common_args import add_store, open_store
from harness.session import InputError


def add_parser(sub, help: str) -> None:  # noqa: A002 - argparse's name
    p = sub.add_parser("tag", help=help,
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
    add_store(p)
    p.set_defaults(func=cmd_tag)


def cmd_tag(args) -> int:
    store = open_store(args, create=False)
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
    run_id = resolve_candidate(store, args.run)  # 'latest' skips automatic reruns
    store.tag_run(run_id, args.tag, args.note)
    print(f"tagged {run_id} {args.tag!r}", file=sys.stderr)
    return EXIT_OK
