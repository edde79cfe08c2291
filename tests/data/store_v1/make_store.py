"""Writes tests/data/store_v1/harness_v1.db: a small results store as the release before schema 2 wrote it.

Run it with the code of commit 63da832 (the last release whose JobResult is schema_version 1), not with
this checkout's, which writes version 2:

    git worktree add /tmp/wt-old 63da832
    cd /tmp/wt-old && PYTHONPATH=/tmp/wt-old .venv/bin/python \\
        /path/to/checkout/tests/data/store_v1/make_store.py /path/to/checkout/tests/data/store_v1/harness_v1.db

(.venv: the project's, e.g. /work/main/.venv). It runs, into one SQLite file:
1. the smoke suite with --quick on the host (torch, tiny UNet: five ladder rows);
2. the smoke suite on a fake phone (tests/fakes/adb_server.py + the benchmark_model stand-in), runtime
   litert-cpu, two rows (baseline, +opt_softmax) of 3 runs, which benchmark_model reports only as a summary:
   extra.runtime/accelerator/unit/latency_summary_ms/na_flags/delegates as Android wrote them;
3. one failed job: the host's +opt_softmax row under a reference tolerance of 1e-15 (kind reference_mismatch);
then this release's `harness report --format csv|md` of each run group, beside the file (report_<group>.*).
tests/test_store_upgrade.py opens the file with the current code, which upgrades it to version 2.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from harness.cli import main as harness

out = Path(sys.argv[1]).resolve()
out.unlink(missing_ok=True)
store = f"sqlite:///{out}"
suite = str(Path.cwd() / "suites" / "smoke.yaml")
common = ["--store", store, "--no-report", "--quick"]
GROUPS = ("v1-host", "v1-android", "v1-failed")

sys.path.insert(0, str(Path.cwd()))
from tests.fakes.adb_server import FakeAdbServer, FakeDevice  # noqa: E402 - the old checkout's fakes
from tests.fakes.benchmark_model_standin import write_standin  # noqa: E402

codes = [harness(["run", suite, *common, "--run-group", "v1-host"])]
root = Path(tempfile.mkdtemp(prefix="store-v1-"))
standin = write_standin(root / "benchmark_model")
with FakeAdbServer([FakeDevice("FAKE1", root=root / "phone1")]) as srv:
    codes.append(harness(["run", suite, *common, "--device", "android:FAKE1", "--adb", f"127.0.0.1:{srv.port}",
                          "--benchmark-model", str(standin), "--set", "options.runtime=litert-cpu",
                          "--set", "variants=[baseline, +opt_softmax]", "--set", "measure.iterations=3",
                          "--run-group", "v1-android"]))
codes.append(harness(["run", suite, *common, "--set", "variants=[+opt_softmax]", "--set", "check.rel_tolerance=1e-15",
                      "--run-group", "v1-failed"]))
# What this release's `harness report` says about each run: the figures the upgraded store must give again.
for group in GROUPS:
    for fmt in ("csv", "md"):
        codes.append(harness(["report", "--store", store, "--run-group", group, "--format", fmt,
                              "-o", str(out.parent / f"report_{group}.{fmt}")]))
print("exit codes", codes, "->", out)  # its write-ahead log is folded in when the process exits
