"""How a session's progress looks on the terminal: the run about to start, then a rich progress bar (stderr)."""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness import standin
from harness.report.table1 import combination_label
from harness.runner import eta_seconds, format_eta
from harness.session import RunStart, SessionProgress


def count(n: int, noun: str) -> str:
    """'1 job', '3 jobs'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def job_label(job) -> str:
    """device variant [sweep combination]."""
    combo = combination_label(getattr(job, "axes", {}) or {})
    return f"{job.device} {job.variant}" + (f" [{combo}]" if combo else "")


class RichProgress(SessionProgress):
    """A rich progress bar over the run's jobs, with the job in flight, its phase and an ETA (the mean time
    of the finished jobs times the jobs left; see harness.runner.eta_seconds)."""

    def __init__(self):
        # stderr: stdout holds only what scripts capture (the run id)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), transient=False,
                             console=Console(stderr=True))
        self._task = None
        self._total = 0
        self._started: dict[int, float] = {}  # job index -> start time (monotonic)
        self._durations: list[float] = []

    def run_started(self, start: RunStart) -> None:
        if start.mode == "resume":
            print(f"resuming run {start.run_id}: {start.todo} of {count(len(start.plan.jobs), 'job')} have no "
                  "stored result", file=sys.stderr)
            return
        if start.mode == "rerun":
            print(f"rerun {start.run_id}: {start.todo} regressed cell(s) of {start.of_run}", file=sys.stderr)
            return
        print(f"run {start.run_id}: {count(len(start.plan.jobs), 'job')} on "
              f"{', '.join(standin.marked(i.id, i.stand_in) for i in start.infos)} -> {start.store_url}",
              file=sys.stderr)
        if start.in_memory:
            print(f"warning: --store {start.store_url} is an in-memory database: the results vanish when this "
                  "command exits; pass a file (--store sqlite:///results/harness.db) to keep them", file=sys.stderr)

    def eta_text(self) -> str:
        now = time.monotonic()
        in_flight = sum(now - t for t in self._started.values())
        remaining = self._total - len(self._durations)
        return format_eta(eta_seconds(self._durations, remaining, in_flight, parallel=max(1, len(self._started))))

    def start(self, total_jobs: int) -> None:
        self._total = total_jobs
        self._bar.start()
        self._task = self._bar.add_task("starting", total=total_jobs, eta=self.eta_text())

    def job_started(self, job) -> None:
        self._started.setdefault(job.index, time.monotonic())  # a retry keeps the first attempt's start
        self._bar.update(self._task, description=job_label(job), eta=self.eta_text())

    def job_phase(self, job, phase: str, done: int, total: int) -> None:
        detail = f" {done}/{total}" if total > 1 else ""
        self._bar.update(self._task, description=f"{job_label(job)}: {phase}{detail}", eta=self.eta_text())

    def job_finished(self, job, result) -> None:
        started = self._started.pop(job.index, None)
        if started is not None:
            self._durations.append(time.monotonic() - started)
        mark = "ok" if result.status == "ok" else f"FAILED ({result.error.kind})"
        self._bar.console.print(f"{job_label(job)}: {mark}", markup=False)
        self._bar.advance(self._task)
        self._bar.update(self._task, eta=self.eta_text())

    def stop(self) -> None:
        self._bar.stop()
