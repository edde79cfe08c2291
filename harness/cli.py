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
import importlib
import sys

from harness.commands import EXIT_INPUT, EXIT_INTERRUPTED

# The commands in the order `harness --help` lists them: name -> (its module, its one-line help). Only the
# module of the command given is imported (with what it needs: SQLAlchemy, pandas, scipy, torch), so
# `harness --help` and a mistyped command answer at once.
COMMANDS = {
    "devices": ("harness.commands.devices", "list the devices the harness can run on"),
    "run": ("harness.commands.run", "run a suite and store the results"),
    "report": ("harness.commands.report", "render a stored run as a table, Markdown, CSV or HTML"),
    "tag": ("harness.commands.tag", "tag a run (e.g. nightly), reject one, or record a re-baseline"),
    "compare": ("harness.commands.compare", "verdicts of a run against a baseline run or tag; CI outputs"),
    "export": ("harness.commands.export", "build the device artifacts (.tflite, .mlpackage) a suite needs"),
    "inspect": ("harness.commands.inspect", "what an artifact holds: weights by dtype, ops by category, planned tensors"),
}


def _command_of(argv: list[str]) -> str | None:
    """The command named in `argv`: its first word that is not an option (the top level takes none)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the full subparser of the command `argv` names (every command's when argv is None)."""
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark Stable Diffusion variants on phone GPUs and on this host: the Table-1 "
                    "ablation of arXiv 2304.11267 (baseline, + optimized softmax, + S-GN/GELU, "
                    "+ FlashAttention, + Winograd) and end-to-end generation.",
        epilog="Exit codes: 0 ok, 1 a job failed (compare: a regression was confirmed), 2 bad input, "
               "3 compare --strict: some cell could not be judged, 130 interrupted. See README.md.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = _command_of(argv) if argv is not None else None
    for name, (module, help_) in COMMANDS.items():
        if argv is None or name == chosen:
            importlib.import_module(module).add_parser(sub, help_)
        else:
            sub.add_parser(name, help=help_, add_help=False)  # listed; its options load when it is given
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    # Loaded with the command by now (the session and the store are below every command that raises these).
    from harness.session import InputError
    from harness.store import StoreError

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
