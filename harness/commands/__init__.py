"""The commands of `harness`, one module each (after asv's `commands/`): `add_parser(sub)` adds its subparser,
whose `func` runs it and returns the exit code. Shared argument groups: `common_args`. The work itself is
below: a run is `harness.session`, the rest the modules each command names.

Exit codes: 0 success; 1 a job failed (everything else was stored), or for `compare` a REGRESSION
was confirmed; 2 bad input or environment; 3 `compare --strict` and some cell could not be judged
(UNSTABLE, INCONCLUSIVE, failed job) while no regression is confirmed; 130 interrupted (everything
finished was stored, the run is marked interrupted).
"""
EXIT_OK, EXIT_JOB_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
