"""`harness export`: build the device artifacts a suite needs (the work: harness.export.commands)."""
from __future__ import annotations

from pathlib import Path

from harness.commands.common_args import OUTPUT_FORMATS, add_format, add_model_inputs, add_set, suite_overrides
from harness.export.commands import export_suite, formats_from_arg
from harness.export.mapping import UnknownFormatError
from harness.session import InputError
from harness.suite import SuiteError, load_suite

ARTIFACT_FORMAT_ARGS = ("tflite", "coreml", "all")  # `harness export --artifact-format`


def add_parser(sub, help: str) -> None:  # noqa: A002 - argparse's name
    p = sub.add_parser("export", help=help,
                       description="Convert every variant of SUITE into its device artifact (workload e2e: the UNet, "
                                   "text encoder and VAE decoder), checked against the "
                                   "PyTorch reference, into the content-addressed cache. Rows that are the same "
                                   "artifact under the flag-to-format mapping share one (README 'Artifacts').")
    p.add_argument("suite", type=Path, help="suite YAML file, e.g. suites/table1.yaml")
    p.add_argument("--artifact-format", "-a", default=None, metavar="FMT",
                   help="tflite | coreml | all (default: the suite runtime's format, tflite unless coreml)")
    add_format(p, choices=OUTPUT_FORMATS + ARTIFACT_FORMAT_ARGS, metavar="table|json",
               help_extra="; table: the table on stderr and each artifact's path, whole, one per line on stdout; "
                          "json: one JSON list of the artifacts on stdout. tflite|coreml|all here: the old "
                          "spelling of --artifact-format")
    p.add_argument("--dtype", default=None, choices=["fp16", "fp32", "int8"],
                   help="weight dtype of the artifacts (default: the suite's dtype if fp16/fp32, else fp16; "
                        "int8: weight-only, per channel)")
    add_set(p, "override a suite field, as for `harness run`")
    add_model_inputs(p)
    p.add_argument("--cache", metavar="DIR", type=Path, help="artifact cache (default $HARNESS_CACHE or ~/.cache/harness)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    overrides = suite_overrides(args, args.overrides)
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
