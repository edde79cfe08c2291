"""The commands of `harness`, one module each (after asv's `commands/`): `add_parser(sub)` adds its subparser,
whose `func` runs it and returns the exit code. Shared argument groups: `common_args`. The work itself is
below: a run is `harness.session`, the rest the modules each command names.
"""
# The exit codes (harness.cli's docstring says when each is returned).
EXIT_OK, EXIT_JOB_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
