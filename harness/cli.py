"""Command line: `harness devices | run | report | tag | compare | export | inspect` (also `python -m harness`).

The parser is assembled here from the commands' modules (harness.commands: one per command, each adding its
own subparser; shared argument groups in harness.commands.common_args); what a run does is harness.session.

Exit codes: 0 success; 1 a job failed (everything else was stored), or for `compare` a REGRESSION
was confirmed; 2 bad input or environment; 3 `compare --strict` and some cell could not be judged
(UNSTABLE, INCONCLUSIVE, failed job) while no regression is confirmed; 130 interrupted (everything
finished was stored, the run is marked interrupted).
"""
from __future__ import annotations

import argparse
import sys

from harness.commands import EXIT_INPUT, EXIT_INTERRUPTED
from harness.commands import compare, devices, export, inspect, report, run, tag
from harness.session import InputError
from harness.store import StoreError

# The commands in the order `harness --help` lists them.
COMMANDS = (devices, run, report, tag, compare, export, inspect)


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
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt as exc:  # harness.session.Interrupted says which run and how to go on
        print(f"\n{str(exc) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
