"""harness.session: `compare --rerun` reruns the regressed cells through the path of `harness run` - the
preflight (every job's runtime on its device), the export, and SIGTERM as an interrupt that keeps the
finished jobs - on the host with the tiny model."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.baseline import RERUN_GROUP_PREFIX
from harness.cli import main
from harness.protocol import Execution, JobResult
from harness.runner import store_job
from harness.store import Store
from harness.suite import expand, load_suite

REPO = Path(__file__).resolve().parents[1]
# The rerun's suite: two rows of the smoke ladder, one timed iteration each (seconds on the host).
SUITE_OVERRIDES = ["iterations=1", "variants=[baseline, +opt_softmax]"]


def _sigint_default() -> None:
    """In the child: SIGINT back to its default (pytest run in the background makes children ignore it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stored_run(store: Store, run_id: str, suite, median_ms: float) -> None:
    """A finished run of `suite` on the host with 8 samples per job around median_ms (no device touched)."""
    suite_doc = suite.model_dump(mode="json")
    store.create_run(run_id, suite.name, suite_doc, "suites/smoke.yaml", None)
    for job in expand(suite, ["host"], run_id).jobs:
        samples = [median_ms * (1 + 0.002 * k) for k in range(8)]
        store_job(store, run_id, job, JobResult(job_id=job.spec.job_id, status="ok", samples_ms=samples,
                                                execution=Execution(timing_method="perf_counter")), 1)
    store.finish_run(run_id, "completed")


def _regressed_store(tmp_path: Path, *overrides: str) -> Store:
    """Runs `base` (10 ms) and `cand` (20 ms: every cell a REGRESSION, unconfirmed: no history)."""
    store = Store(f"sqlite:///{tmp_path}/r.db")
    suite = load_suite(REPO / "suites" / "smoke.yaml", [*SUITE_OVERRIDES, *overrides])
    _stored_run(store, "base", suite, 10.0)
    time.sleep(0.01)  # `cand` is the newer run
    _stored_run(store, "cand", suite, 20.0)
    return store


def _reruns(store: Store) -> list[dict]:
    return [r for r in store.list_runs() if (r.get("run_group") or "").startswith(RERUN_GROUP_PREFIX)]


def test_rerun_runs_the_preflight_before_creating_a_run(tmp_path, capsys):
    # A runtime the host cannot run: `harness run` refuses it before any job; so does the rerun now (before,
    # it created a rerun run and ran jobs that could only fail).
    store = _regressed_store(tmp_path, "options.runtime=coreml")
    out = tmp_path / "regressions.json"
    assert main(["compare", "base", "cand", "--rerun", "--json", str(out), "--store", store.url]) == 2
    err = capsys.readouterr().err
    assert "the automatic rerun failed" in err and "cannot rerun: runtime 'coreml' does not run on host" in err
    assert _reruns(store) == []  # refused before the run was created


def test_rerun_is_interrupted_by_sigterm_and_keeps_its_finished_jobs(tmp_path):
    store = _regressed_store(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "compare", "base", "cand", "--rerun",
                             "--store", store.url], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    deadline = time.time() + 300
    rerun = None
    while time.time() < deadline and proc.poll() is None:  # wait for the rerun's first stored job
        time.sleep(0.5)
        reruns = _reruns(store)
        if reruns and store.load_run(reruns[0]["id"]).jobs:
            rerun = reruns[0]["id"]
            break
    assert rerun is not None, proc.communicate(timeout=60)[1][-3000:]
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert f"rerun {rerun}: 2 regressed cell(s) of cand" in err
    assert f"interrupted: finished jobs are stored; the rerun {rerun} is marked interrupted" in err
    run = store.load_run(rerun)
    assert run.status == "interrupted" and run.run_group == f"{RERUN_GROUP_PREFIX}cand"
    assert len(run.jobs) == 1 and run.jobs[0].status == "ok" and run.jobs[0].variant == "baseline"
    assert run.suite["devices"] == ["host"]  # the devices it ran on, as for `harness run`
    # The agent of the job in flight was stopped with the controller.
    agents = subprocess.run(["pgrep", "-f", f"device_agents/host/agent.py.*{rerun}"], capture_output=True)
    assert agents.stdout.strip() == b""
