"""`harness inspect`: what an artifact holds (the work: harness.export.commands.inspect_command)."""
from __future__ import annotations

from pathlib import Path

from harness.commands.common_args import add_format
from harness.export.commands import inspect_command
from harness.session import InputError


def add_parser(sub, help: str) -> None:  # noqa: A002 - argparse's name
    p = sub.add_parser("inspect", help=help,
                       description="Read a .tflite file or an .mlpackage: weight MB by element type, the op "
                                   "histogram in the paper's categories (composites named), planned tensor MB "
                                   "from the artifact's own graph (greedy-by-size), and for a .tflite whether it "
                                   "compiles wholly on LiteRT's GPU accelerator (a GPU through Vulkan, or "
                                   "SwiftShader), naming every op it refuses.")
    p.add_argument("artifact", type=Path, help="a .tflite file or .mlpackage directory (`harness export` prints "
                   "their paths on stdout)")
    add_format(p, json_alias=True)
    p.add_argument("--no-gpu", action="store_true", help="skip compiling a .tflite on the GPU accelerator")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> int:
    try:
        return inspect_command(args.artifact, args.format == "json", gpu=not args.no_gpu)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from None
