"""Which samples a candidate run is compared against: a baseline run, or a tag's pooled nightly runs.

A *cell* is one (device, workload, variant, options_hash): the unit every verdict is about.

Baselines (`--baseline REF`):
  * a run id (or a unique prefix): that run's job for each cell;
  * a tag (`harness tag RUN nightly`): for each cell, the samples of the last POOL_RUNS (7) *accepted*
    runs carrying the tag that started before the candidate and have an ok job for that cell,
    pooled. At least MIN_POOL_RUNS (3) are required: fewer and the cell has no baseline (and when no
    cell of the candidate has one, selection fails with a message that says how to fix it).
A tag wins over a run-id prefix of the same spelling.

Accepted runs: status "completed" and not tagged REJECTED_TAG ("rejected"). A deliberate
re-baseline (`harness tag RUN TAG --rebaseline`) is recorded in the store; afterwards the pool and the
history of the cells it matches start at that run. While fewer than MIN_POOL_RUNS runs exist since
the re-baseline, the pool is what exists (at least the re-baseline run itself): the user chose it.

History (`TagHistory`): the same accepted tagged runs, read once, serve the pools, the history gate
(the last K medians, since the last re-baseline) and the trend plots (the last TREND_RUNS medians).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.store import REJECTED_TAG, JobRecord, RunRecord, Store, StoreError
from harness.thresholds import CELL_KEY_FIELDS

# Accepted tagged runs pooled into one baseline per cell (the most recent ones).
POOL_RUNS = 7
# Fewest accepted tagged runs a pooled baseline may have (unless a re-baseline says otherwise).
MIN_POOL_RUNS = 3
# Nightly medians shown on a cell's trend plot and searched for change points.
TREND_RUNS = 40
# Accepted tagged runs read from the store before the candidate (pools, history and trends).
LOOKBACK_RUNS = 120
# Runs made by an automatic rerun carry run_group "rerun:<candidate id>" and are never "latest".
RERUN_GROUP_PREFIX = "rerun:"
# Run group of the two runs a same-session A/B comparison stores (harness.ab_run): not nightlies either.
AB_GROUP_PREFIX = "ab:"


class BaselineError(ValueError):
    """No usable baseline: the message names the problem and the fix."""


@dataclass(frozen=True, order=True)
class CellKey:
    """One cell: (device, workload, variant, options_hash), the fields of compare.CELL_KEY_FIELDS."""

    device: str
    workload: str
    variant: str
    options_hash: str

    @classmethod
    def of(cls, job: JobRecord) -> "CellKey":
        return cls(job.device_id, job.workload, job.variant, job.options_hash)

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in CELL_KEY_FIELDS}

    def __str__(self) -> str:
        return f"{self.device} / {self.workload} / {self.variant} [{self.options_hash[:8]}]"


def cell_jobs(jobs: Iterable[JobRecord]) -> dict[CellKey, JobRecord]:
    """One job per cell; a cell stored twice in a run (a retry) keeps the last one, as Table 1 does."""
    out: dict[CellKey, JobRecord] = {}
    for job in jobs:
        out[CellKey.of(job)] = job
    return out


def match_cell(key: CellKey, match: Mapping[str, str]) -> bool:
    """True when every regex of `match` fully matches the cell's field ({} matches every cell)."""
    values = key.as_dict()
    for name, pattern in match.items():
        if name not in values:
            raise ValueError(f"unknown cell field {name!r}; known fields: {', '.join(CELL_KEY_FIELDS)}")
        if re.fullmatch(pattern, values[name]) is None:
            return False
    return True


def parse_match(items: Iterable[str]) -> dict[str, str]:
    """['variant=.*winograd', 'device=android:.*'] -> {field: regex}, validated."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, pattern = item.partition("=")
        name = name.strip()
        if not sep or name not in CELL_KEY_FIELDS:
            raise BaselineError(f"--match {item!r}: expected FIELD=REGEX with FIELD one of "
                                f"{', '.join(CELL_KEY_FIELDS)} (example: --match variant='\\+winograd')")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise BaselineError(f"--match {item!r}: {pattern!r} is not a valid regex: {exc}") from None
        out[name] = pattern
    return out


def is_accepted(run: Mapping[str, Any]) -> bool:
    """A run counts for baselines and history when it completed and nobody rejected it."""
    return run.get("status") == "completed" and not run.get("rejected", False)


@dataclass(frozen=True)
class BaselineRef:
    """What --baseline named: a run (`run_id`) or a tag (`tag`)."""

    kind: str  # "run" | "tag"
    ref: str  # as the user wrote it
    run_id: str | None = None
    tag: str | None = None

    def describe(self) -> str:
        if self.kind == "tag":
            return f"tag {self.tag!r} (last {POOL_RUNS} accepted runs pooled per cell, at least {MIN_POOL_RUNS})"
        return f"run {self.run_id}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref": self.ref, "run_id": self.run_id, "tag": self.tag,
                "description": self.describe()}


def resolve_baseline(store: Store, ref: str) -> BaselineRef:
    """A tag if some run carries it, else a run id or unique prefix ('latest' works too)."""
    if not ref:
        raise BaselineError("--baseline is empty; give a run id or a tag (e.g. --baseline nightly)")
    if store.has_tag(ref):
        return BaselineRef(kind="tag", ref=ref, tag=ref)
    try:
        return BaselineRef(kind="run", ref=ref, run_id=store.resolve_run(ref))
    except StoreError as exc:
        tags = store.list_tags()
        known = f"; tags in the store: {', '.join(tags)}" if tags else "; the store has no tags yet"
        raise BaselineError(f"--baseline {ref!r} is neither a tag nor a run ({exc}){known}. "
                            "Tag runs with `harness tag RUN TAG`; `harness report --list` lists runs") from None


def resolve_candidate(store: Store, ref: str) -> str:
    """'latest' is the newest run that is not an automatic rerun; otherwise a run id or prefix."""
    if ref in ("", "latest"):
        return store.latest_run_id(exclude_group_prefix=(RERUN_GROUP_PREFIX, AB_GROUP_PREFIX))
    return store.resolve_run(ref)


@dataclass
class CellBaseline:
    """The baseline of one cell: pooled jobs (oldest first), or why there is none."""

    key: CellKey
    jobs: list[JobRecord] = field(default_factory=list)
    note: str = ""
    error: str | None = None  # set when the cell has no usable baseline
    rebaseline: dict[str, Any] | None = None  # the re-baseline in effect, if any

    @property
    def run_ids(self) -> list[str]:
        return [j.run_id for j in self.jobs]

    @property
    def samples_ms(self) -> list[float]:
        return [v for j in self.jobs for v in j.result.samples_ms]


@dataclass
class Nightly:
    """One accepted tagged run's job for a cell."""

    run_id: str
    started_at: float
    job: JobRecord


class TagHistory:
    """The accepted runs carrying `tag` that started before `before`, with their jobs, read once."""

    def __init__(self, store: Store, tag: str, before: float, exclude: Iterable[str] = (),
                 lookback: int = LOOKBACK_RUNS):
        self.tag = tag
        excluded = set(exclude)
        tagged = store.tagged_runs(tag)
        self.rejected = [r["id"] for r in tagged if r["rejected"]]
        runs = [r for r in tagged if is_accepted(r) and r["started_at"] < before and r["id"] not in excluded]
        self.runs = runs[-lookback:]
        jobs = store.load_jobs([r["id"] for r in self.runs])
        self._cells: dict[str, dict[CellKey, JobRecord]] = {
            rid: {k: j for k, j in cell_jobs(js).items() if j.status == "ok" and j.result.samples_ms}
            for rid, js in jobs.items()
        }
        self.rebaselines = store.list_rebaselines(tag)

    def nightlies(self, key: CellKey, before: float | None = None, since: float | None = None) -> list[Nightly]:
        """The cell's accepted nightlies (oldest first), started before `before` and at/after `since`."""
        out = []
        for r in self.runs:
            if before is not None and r["started_at"] >= before:
                continue
            if since is not None and r["started_at"] < since:
                continue
            job = self._cells[r["id"]].get(key)
            if job is not None:
                out.append(Nightly(r["id"], r["started_at"], job))
        return out

    def cells_of(self, run_id: str) -> dict[CellKey, JobRecord]:
        """The ok jobs (with samples) of one of the runs, by cell."""
        return dict(self._cells.get(run_id, {}))

    def rebaseline_for(self, key: CellKey, at: float) -> dict[str, Any] | None:
        """The latest re-baseline of this tag matching the cell whose run started at or before `at`."""
        chosen = None
        for rb in self.rebaselines:
            if rb["run_started_at"] <= at and match_cell(key, rb["match"]):
                chosen = rb
        return chosen

    def pool(self, key: CellKey, before: float, n: int = POOL_RUNS, min_runs: int = MIN_POOL_RUNS) -> CellBaseline:
        """The last `n` accepted nightlies of the cell before `before` (at least `min_runs`)."""
        rb = self.rebaseline_for(key, before)
        since = rb["run_started_at"] if rb else None
        nights = self.nightlies(key, before=before, since=since)[-n:]
        where = f"tag {self.tag!r}"
        if rb:
            where += f" since the re-baseline at run {rb['run_id']}" + (f" ({rb['note']})" if rb.get("note") else "")
        need = 1 if rb else min_runs
        if len(nights) < need:
            return CellBaseline(
                key, error=(f"{where} has {len(nights)} accepted run(s) with this cell; a pooled baseline "
                            f"needs at least {need} (tag more completed runs with `harness tag RUN {self.tag}`, "
                            "or compare against one run: --baseline RUN)"),
                rebaseline=rb)
        note = f"{len(nights)} accepted run(s) of {where} pooled"
        if rb and len(nights) < min_runs:
            note += f" (fewer than {min_runs}: allowed right after a deliberate re-baseline)"
        return CellBaseline(key, jobs=[x.job for x in nights], note=note, rebaseline=rb)

    def history(self, key: CellKey, before: float, k: int) -> list[Nightly]:
        """The last `k` accepted nightlies before `before`, since the cell's last re-baseline."""
        rb = self.rebaseline_for(key, before)
        return self.nightlies(key, before=before, since=rb["run_started_at"] if rb else None)[-k:]

    def trend(self, key: CellKey, before: float, n: int = TREND_RUNS) -> list[Nightly]:
        """The last `n` accepted nightlies before `before`, across re-baselines (for the trend plot)."""
        return self.nightlies(key, before=before)[-n:]

    def previous(self, key: CellKey, before: float) -> Nightly | None:
        """The newest accepted nightly of the cell before `before` (the previous nightly)."""
        nights = self.nightlies(key, before=before)
        return nights[-1] if nights else None


def run_baseline(store: Store, run_id: str, candidate: RunRecord) -> dict[CellKey, CellBaseline]:
    """Each cell's baseline from a single run: its ok job for that cell."""
    if run_id == candidate.id:
        raise BaselineError(f"--baseline and --candidate are the same run ({run_id}); pick an earlier run or a tag")
    jobs = cell_jobs(store.load_jobs([run_id])[run_id])
    out: dict[CellKey, CellBaseline] = {}
    for key in cell_jobs(candidate.jobs):
        job = jobs.get(key)
        if job is None:
            out[key] = CellBaseline(key, error=f"baseline run {run_id} has no job for this cell")
        elif job.status != "ok" or not job.result.samples_ms:
            why = f"{job.result.error.kind}: {job.result.error.message}" if job.result.error else "no samples"
            out[key] = CellBaseline(key, error=f"the baseline run's job for this cell failed ({why})")
        else:
            out[key] = CellBaseline(key, jobs=[job], note=f"run {run_id}")
    return out


def tag_baseline(history: TagHistory, candidate: RunRecord) -> dict[CellKey, CellBaseline]:
    """Each cell's pooled baseline from a tag; BaselineError when no cell has enough accepted runs."""
    out = {key: history.pool(key, candidate.started_at) for key in cell_jobs(candidate.jobs)}
    if out and all(b.error for b in out.values()):
        counts = sorted({len(history.nightlies(k, before=candidate.started_at)) for k in out})
        rejected = f"; {len(history.rejected)} run(s) with the tag are marked rejected" if history.rejected else ""
        raise BaselineError(
            f"baseline tag {history.tag!r} has too few accepted runs for the candidate's cells: "
            f"{'/'.join(map(str, counts))} (per cell) before run {candidate.id}, need at least {MIN_POOL_RUNS} "
            f"completed, non-rejected runs{rejected}. Tag more runs with `harness tag RUN {history.tag}`, "
            "or compare against a single run with --baseline RUN")
    return out


def record_rebaseline(store: Store, run_ref: str, tag: str, match: Mapping[str, str] | None = None,
                      note: str | None = None) -> str:
    """Tag the run and record it as the start of a new baseline for `tag`; returns the run id."""
    run = store.load_run(resolve_candidate(store, run_ref))
    run_id = run.id
    if run.status != "completed":
        raise BaselineError(f"run {run_id} is {run.status}, not completed; re-baseline on a completed run")
    if REJECTED_TAG in run.tags:
        raise BaselineError(f"run {run_id} is tagged {REJECTED_TAG!r}; re-baseline on an accepted run")
    if tag == REJECTED_TAG:
        raise BaselineError(f"{REJECTED_TAG!r} marks runs that must not be baselines; pick another tag")
    store.tag_run(run_id, tag, note)
    store.record_rebaseline(run_id, tag, dict(match or {}), note)
    return run_id
