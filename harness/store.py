"""Results store: SQLAlchemy Core over any database URL (default: SQLite at results/harness.db).

Tables: runs, run_devices (device metadata per run), jobs (one row per finished job, with the full
JobResult JSON), samples (every raw sample, warmup apart), tags, store_meta (what upgrades the store had).
One transaction per finished job, so a crash loses at most the job in flight.

Opening a store upgrades the JobResults an older harness stored (schema_version 1) to this one's, once
(`Store._upgrade_results`, recorded in store_meta as results_schema_version), so readers see only the
current version.
"""
from __future__ import annotations

import getpass
import json
import os
import platform
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from harness import standin
from harness.protocol import SCHEMA_VERSION, JobResult, mask_credentials, upgrade_result

DEFAULT_URL = "sqlite:///results/harness.db"

metadata = sa.MetaData()

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("suite_name", sa.String(200), nullable=False),
    sa.Column("suite_path", sa.Text),
    sa.Column("suite_json", sa.Text, nullable=False),  # the expanded suite, overrides applied
    sa.Column("git_commit", sa.String(64)),
    sa.Column("host", sa.String(200)),
    sa.Column("user", sa.String(100)),
    sa.Column("run_group", sa.String(200), index=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("status", sa.String(20), nullable=False),  # running | completed | interrupted | failed
    sa.Column("harness_version", sa.String(40)),
)

run_devices = sa.Table(
    "run_devices", metadata,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("device_id", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(40)),
    sa.Column("info_json", sa.Text, nullable=False),
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("job_key", sa.String(64), nullable=False, index=True),
    sa.Column("job_index", sa.Integer),
    sa.Column("device_id", sa.String(200), nullable=False),
    sa.Column("workload", sa.String(40), nullable=False),
    sa.Column("model", sa.String(200)),
    sa.Column("variant", sa.String(200), nullable=False),
    sa.Column("variant_index", sa.Integer),
    sa.Column("flags_json", sa.Text, nullable=False),
    sa.Column("options_json", sa.Text, nullable=False),
    sa.Column("options_hash", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # ok | failed
    sa.Column("error_kind", sa.String(40)),
    sa.Column("error_message", sa.Text),
    sa.Column("attempts", sa.Integer, default=1),
    sa.Column("started_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("result_json", sa.Text, nullable=False),
    sa.Column("axes_json", sa.Text),  # the job's sweep coordinates (JobSpec.axes); NULL: not swept
    # What in the job was a stand-in (JSON list of labels, harness.standin: the device's and the tool's);
    # NULL: a real device and tool.
    sa.Column("stand_in_json", sa.Text),
)

samples = sa.Table(
    "samples", metadata,
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("phase", sa.String(10), primary_key=True),  # timed | warmup
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("value_ms", sa.Float, nullable=False),
)

tags = sa.Table(
    "tags", metadata,
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("tag", sa.String(100), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("note", sa.Text),
)

# A deliberate re-baseline: from run_id on (by start time), comparisons against `tag` pool only runs
# that started at or after it, for the cells that `match` selects (cell field -> regex; {} = all).
rebaselines = sa.Table(
    "rebaselines", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tag", sa.String(100), nullable=False, index=True),
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("match_json", sa.Text, nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("user", sa.String(100)),
    sa.Column("created_at", sa.Float, nullable=False),
)

# What the store has been upgraded to (asv's results `update_to_2` is the model): key -> value.
store_meta = sa.Table(
    "store_meta", metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
RESULTS_VERSION_KEY = "results_schema_version"

# A run tagged with this is not accepted as a baseline or history run (e.g. a broken device night).
REJECTED_TAG = "rejected"


class StoreError(ValueError):
    """A store URL that cannot be used, or a run that is not there."""


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


@dataclass
class JobRecord:
    """A stored job, as the analysis functions read it."""

    id: int
    run_id: str
    job_key: str
    device_id: str
    workload: str
    model: str
    variant: str
    variant_index: int
    flags: dict[str, Any]
    options: dict[str, Any]
    options_hash: str
    status: str
    result: JobResult
    attempts: int = 1
    axes: dict[str, Any] = field(default_factory=dict)  # sweep coordinates ({} when not swept)
    job_index: int | None = None  # position in the plan


@dataclass
class RunRecord:
    id: str
    suite_name: str
    suite: dict[str, Any]
    status: str
    started_at: float
    ended_at: float | None
    git_commit: str | None
    host: str | None
    run_group: str | None = None
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: list[JobRecord] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def safe_url(url: str) -> str:
    """The URL as it may be printed, logged or stored: any password replaced by ***."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: mask anything that looks like user:password@
        return mask_credentials(url)


def _scrub(text: str, url: str) -> str:
    """An error message with the URL's password (and the whole URL) masked."""
    text = text.replace(url, safe_url(url))
    try:
        password = sa.engine.make_url(url).password
    except Exception:  # noqa: BLE001
        password = None
    return text.replace(str(password), "***") if password else text


class Store:
    """url: a SQLAlchemy URL (kept as given in .url; .display_url masks the password for messages).
    create=False: a read-only command's store; a SQLite file that is not there is an error, not a new
    database. An in-memory SQLite URL (sqlite://) is one database shared by every thread of the process,
    gone when it exits (.in_memory); its methods must not nest connections (one connection serves all)."""

    def __init__(self, url: str | None = None, *, create: bool = True):
        self.url = url or os.environ.get("HARNESS_STORE") or DEFAULT_URL
        self.display_url = safe_url(self.url)
        try:
            parsed = sa.engine.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"--store {self.display_url!r} is not a database URL (examples: "
                             "sqlite:///results/harness.db, postgresql+psycopg://user@host/db)") from None
        sqlite = parsed.get_backend_name() == "sqlite"
        self.in_memory = sqlite and parsed.database in (None, "", ":memory:")
        if sqlite and not self.in_memory:
            if not create and not Path(parsed.database).is_file():
                raise StoreError(f"no results store at {parsed.database}; run `harness run SUITE` first "
                                 "(or pass --store)")
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if self.in_memory:
            # One connection for the whole process, which holds the database (the default pool gives each
            # thread its own, empty, database); a pool of one also hands it to one thread at a time, so
            # the runner's device threads do not share a transaction.
            kwargs = {"poolclass": sa.pool.QueuePool, "pool_size": 1, "max_overflow": 0, "pool_timeout": 3600,
                      "connect_args": {"check_same_thread": False}}
        try:
            self.engine = sa.create_engine(self.url, future=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a missing driver, a bad dialect
            raise StoreError(f"cannot open store {self.display_url!r}: {_scrub(str(exc), self.url)}") from None
        if sqlite:
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _record):  # noqa: ANN001
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        for attempt in range(3):
            try:
                metadata.create_all(self.engine)
                break
            except sa.exc.OperationalError as exc:
                # Two processes opening a new store at once both see a table missing and both create
                # it; the loser gets "already exists". Checking again then finds every table.
                if "already exists" in str(exc.orig) and attempt < 2:
                    continue
                raise StoreError(f"cannot open store {self.display_url!r}: {_scrub(str(exc.orig), self.url)}; "
                                 "check the --store URL and that the database server is running") from None
            except sa.exc.DBAPIError as exc:  # no server there, bad credentials, no such database
                raise StoreError(f"cannot open store {self.display_url!r}: {_scrub(str(exc.orig), self.url)}; "
                                 "check the --store URL and that the database server is running") from None
        self._add_missing_columns()
        self._upgrade_results()

    def _add_missing_columns(self) -> None:
        """Stores made before a column existed get it (nullable, so old rows read as before)."""
        have = {c["name"] for c in sa.inspect(self.engine).get_columns("jobs")}
        for column in ("axes_json", "stand_in_json"):
            if column in have:
                continue
            try:
                with self.engine.begin() as conn:
                    conn.execute(sa.text(f"ALTER TABLE jobs ADD COLUMN {column} TEXT"))
            except sa.exc.OperationalError as exc:  # another process added it first
                if "duplicate" not in str(exc.orig).lower():
                    raise StoreError(f"cannot upgrade store {self.display_url!r}: "
                                     f"{_scrub(str(exc.orig), self.url)}") from None

    def _upgrade_results(self) -> None:
        """Every stored JobResult of an older schema rewritten as the current one (protocol.upgrade_result,
        its execution completed from the job's options as `record_job` does), in one transaction, then
        recorded in store_meta so later opens skip it. Two processes upgrading at once write the same rows;
        the second one's record of it is a no-op."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(store_meta.c.value).where(store_meta.c.key == RESULTS_VERSION_KEY)).first()
        if row is not None and int(row[0]) >= SCHEMA_VERSION:
            return
        try:
            with self.engine.begin() as conn:
                for j in conn.execute(sa.select(jobs.c.id, jobs.c.options_json, jobs.c.result_json)).all():
                    doc = json.loads(j.result_json)
                    if doc.get("schema_version") == SCHEMA_VERSION:
                        continue
                    result = _completed(JobResult.model_validate(upgrade_result(doc)), json.loads(j.options_json))
                    conn.execute(jobs.update().where(jobs.c.id == j.id).values(result_json=result.model_dump_json()))
                if row is None:
                    conn.execute(store_meta.insert().values(key=RESULTS_VERSION_KEY, value=str(SCHEMA_VERSION)))
                else:
                    conn.execute(store_meta.update().where(store_meta.c.key == RESULTS_VERSION_KEY)
                                 .values(value=str(SCHEMA_VERSION)))
        except sa.exc.IntegrityError:
            pass  # another process upgraded it and recorded so first
        except sa.exc.DBAPIError as exc:
            raise StoreError(f"cannot upgrade the results in store {self.display_url!r}: "
                             f"{_scrub(str(exc.orig), self.url)}") from None

    # ---------------------------------------------------------------- writes

    def create_run(self, run_id: str, suite_name: str, suite: dict[str, Any], suite_path: str | None = None,
                   run_group: str | None = None) -> None:
        import harness

        with self.engine.begin() as conn:
            conn.execute(runs.insert().values(
                id=run_id, suite_name=suite_name, suite_path=suite_path, suite_json=json.dumps(suite),
                git_commit=git_commit(), host=platform.node(), user=_user(), run_group=run_group,
                started_at=time.time(), status="running", harness_version=harness.__version__))

    def record_device(self, run_id: str, info: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(run_devices.c.run_id).where(
                run_devices.c.run_id == run_id, run_devices.c.device_id == info["id"])).first()
            if exists:
                conn.execute(run_devices.update().where(
                    run_devices.c.run_id == run_id, run_devices.c.device_id == info["id"]).values(
                    info_json=json.dumps(info)))
            else:
                conn.execute(run_devices.insert().values(run_id=run_id, device_id=info["id"],
                                                         kind=info.get("kind"), info_json=json.dumps(info)))

    def record_job(self, run_id: str, *, job_key: str, job_index: int, device_id: str, workload: str,
                   model: str, variant: str, variant_index: int, flags: dict, options: dict,
                   options_hash: str, result: JobResult, attempts: int = 1,
                   axes: dict[str, Any] | None = None) -> int:
        """Store one finished job and all its samples in one transaction. The result's stand-in labels are
        merged with the device's (its run_devices record, `DeviceInfo.stand_in`), so every job on a stand-in
        device says so; its execution record is completed from `options` (`Execution.completed`)."""
        result = _completed(result, options)
        with self.engine.begin() as conn:
            info = conn.execute(sa.select(run_devices.c.info_json).where(
                run_devices.c.run_id == run_id, run_devices.c.device_id == device_id)).first()
            device_stand_in = (json.loads(info[0]).get("stand_in") or []) if info else []
            stand_in = standin.merge(device_stand_in, result.stand_in)
            if stand_in != result.stand_in:
                result = result.model_copy(update={"stand_in": stand_in})
            job_id = conn.execute(jobs.insert().values(
                run_id=run_id, job_key=job_key, job_index=job_index, device_id=device_id, workload=workload,
                model=model, variant=variant, variant_index=variant_index, flags_json=json.dumps(flags),
                options_json=json.dumps(options), options_hash=options_hash, status=result.status,
                error_kind=result.error.kind if result.error else None,
                error_message=result.error.message if result.error else None, attempts=attempts,
                started_at=result.started_at, ended_at=result.ended_at,
                result_json=result.model_dump_json(),
                axes_json=json.dumps(axes) if axes else None,
                stand_in_json=json.dumps(stand_in) if stand_in else None)).inserted_primary_key[0]
            rows = [{"job_id": job_id, "phase": "timed", "idx": i, "value_ms": v}
                    for i, v in enumerate(result.samples_ms)]
            rows += [{"job_id": job_id, "phase": "warmup", "idx": i, "value_ms": v}
                     for i, v in enumerate(result.warmup_ms)]
            if rows:
                conn.execute(samples.insert(), rows)
        return int(job_id)

    def finish_run(self, run_id: str, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(status=status, ended_at=time.time()))

    def reopen_run(self, run_id: str) -> None:
        """Mark a run running again (for --resume)."""
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.id == run_id).values(status="running", ended_at=None))

    def tag_run(self, run_id: str, tag: str, note: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(tags.delete().where(tags.c.run_id == run_id, tags.c.tag == tag))
            conn.execute(tags.insert().values(run_id=run_id, tag=tag, created_at=time.time(), note=note))

    def record_rebaseline(self, run_id: str, tag: str, match: dict[str, str] | None = None,
                          note: str | None = None) -> int:
        """Record that `run_id` starts a new baseline for `tag` (for the cells `match` selects)."""
        with self.engine.begin() as conn:
            return int(conn.execute(rebaselines.insert().values(
                tag=tag, run_id=run_id, match_json=json.dumps(match or {}), note=note, user=_user(),
                created_at=time.time())).inserted_primary_key[0])

    # ---------------------------------------------------------------- reads

    def list_rebaselines(self, tag: str) -> list[dict[str, Any]]:
        """Re-baselines of `tag`, oldest run first: id, run_id, run_started_at, match, note, user, created_at."""
        with self.engine.connect() as conn:
            q = (sa.select(rebaselines, runs.c.started_at.label("run_started_at"))
                 .join(runs, runs.c.id == rebaselines.c.run_id)
                 .where(rebaselines.c.tag == tag)
                 .order_by(runs.c.started_at, rebaselines.c.id))
            out = []
            for r in conn.execute(q):
                row = dict(r._mapping)
                row["match"] = json.loads(row.pop("match_json"))
                out.append(row)
            return out

    def has_tag(self, tag: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(tags.c.run_id).where(tags.c.tag == tag).limit(1)).first() is not None

    def list_tags(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted({r[0] for r in conn.execute(sa.select(tags.c.tag).distinct())})

    def tagged_runs(self, tag: str) -> list[dict[str, Any]]:
        """Runs carrying `tag`, oldest first, each with `rejected` (tagged REJECTED_TAG) and the tag's note."""
        with self.engine.connect() as conn:
            q = (sa.select(runs, tags.c.note.label("tag_note"))
                 .join(tags, tags.c.run_id == runs.c.id)
                 .where(tags.c.tag == tag)
                 .order_by(runs.c.started_at, runs.c.id))
            rows = [dict(r._mapping) for r in conn.execute(q)]
            ids = [r["id"] for r in rows]
            rejected: set[str] = set()
            if ids:
                rq = sa.select(tags.c.run_id).where(tags.c.tag == REJECTED_TAG, tags.c.run_id.in_(ids))
                rejected = {r[0] for r in conn.execute(rq)}
        for r in rows:
            r.pop("suite_json", None)
            r["rejected"] = r["id"] in rejected
        return rows

    def latest_run_id(self, exclude_group_prefix: str | tuple[str, ...] | None = None) -> str:
        """The most recently started run, skipping runs whose run_group starts with the prefix (or prefixes)."""
        prefixes = (exclude_group_prefix,) if isinstance(exclude_group_prefix, str) else (exclude_group_prefix or ())
        with self.engine.connect() as conn:
            q = sa.select(runs.c.id).order_by(runs.c.started_at.desc())
            if prefixes:
                q = q.where(sa.or_(runs.c.run_group.is_(None),
                                   sa.and_(*(sa.not_(runs.c.run_group.startswith(p)) for p in prefixes))))
            row = conn.execute(q.limit(1)).first()
        if row is None:
            raise StoreError(f"the store {self.display_url} has no runs yet; run `harness run SUITE` first")
        return row[0]

    def load_jobs(self, run_ids: list[str]) -> dict[str, list[JobRecord]]:
        """The jobs (with their timed samples) of many runs in two queries: run id -> jobs in order."""
        out: dict[str, list[JobRecord]] = {rid: [] for rid in run_ids}
        if not run_ids:
            return out
        with self.engine.connect() as conn:
            records: dict[int, JobRecord] = {}
            for j in conn.execute(sa.select(jobs).where(jobs.c.run_id.in_(run_ids)).order_by(jobs.c.id)):
                rec = JobRecord(
                    id=j.id, run_id=j.run_id, job_key=j.job_key, device_id=j.device_id, workload=j.workload,
                    model=j.model, variant=j.variant, variant_index=j.variant_index or 0,
                    flags=json.loads(j.flags_json), options=json.loads(j.options_json),
                    options_hash=j.options_hash, status=j.status,
                    result=JobResult.model_validate_json(j.result_json), attempts=j.attempts or 1,
                    axes=json.loads(j.axes_json) if j.axes_json else {}, job_index=j.job_index)
                records[rec.id] = rec
                out[rec.run_id].append(rec)
            by_job: dict[int, list[tuple[int, float]]] = {}
            if records:
                q = sa.select(samples).where(samples.c.job_id.in_(list(records)), samples.c.phase == "timed")
                for s in conn.execute(q):
                    by_job.setdefault(s.job_id, []).append((s.idx, s.value_ms))
            for job_id, rec in records.items():
                rec.result.samples_ms = [v for _, v in sorted(by_job.get(job_id, []))]
        return out

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = sa.select(runs).order_by(runs.c.started_at.desc()).limit(limit)
            return [dict(r._mapping) for r in conn.execute(q)]

    def resolve_run(self, ref: str = "latest") -> str:
        with self.engine.connect() as conn:
            if ref == "latest":
                row = conn.execute(sa.select(runs.c.id).order_by(runs.c.started_at.desc()).limit(1)).first()
                if row is None:
                    raise StoreError(f"the store {self.display_url} has no runs yet; run `harness run SUITE` first")
                return row[0]
            rows = conn.execute(sa.select(runs.c.id).where(runs.c.id.startswith(ref))).all()
        if len(rows) == 1:
            return rows[0][0]
        if not rows:
            raise StoreError(f"no run {ref!r} in {self.display_url}; `harness report --list` shows the runs")
        raise StoreError(f"run id {ref!r} is ambiguous ({', '.join(r[0] for r in rows[:5])}); give more of it")

    def load_run(self, run_id: str) -> RunRecord:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs).where(runs.c.id == run_id)).first()
            if row is None:
                raise StoreError(f"no run {run_id!r} in {self.display_url}")
            r = row._mapping
            rec = RunRecord(id=r["id"], suite_name=r["suite_name"], suite=json.loads(r["suite_json"]),
                            status=r["status"], started_at=r["started_at"], ended_at=r["ended_at"],
                            git_commit=r["git_commit"], host=r["host"], run_group=r["run_group"])
            for d in conn.execute(sa.select(run_devices).where(run_devices.c.run_id == run_id)):
                rec.devices[d.device_id] = json.loads(d.info_json)
            rec.tags = [t.tag for t in conn.execute(sa.select(tags.c.tag).where(tags.c.run_id == run_id))]
            for j in conn.execute(sa.select(jobs).where(jobs.c.run_id == run_id).order_by(jobs.c.id)):
                rec.jobs.append(JobRecord(
                    id=j.id, run_id=j.run_id, job_key=j.job_key, device_id=j.device_id, workload=j.workload,
                    model=j.model, variant=j.variant, variant_index=j.variant_index or 0,
                    flags=json.loads(j.flags_json), options=json.loads(j.options_json),
                    options_hash=j.options_hash, status=j.status,
                    result=JobResult.model_validate_json(j.result_json), attempts=j.attempts or 1,
                    axes=json.loads(j.axes_json) if j.axes_json else {}, job_index=j.job_index))
            # The raw samples table is the record; it must agree with the result JSON.
            by_job: dict[int, list[tuple[int, float]]] = {}
            ids = [j.id for j in rec.jobs]
            if ids:
                q = sa.select(samples).where(samples.c.job_id.in_(ids), samples.c.phase == "timed")
                for s in conn.execute(q):
                    by_job.setdefault(s.job_id, []).append((s.idx, s.value_ms))
            for j in rec.jobs:
                j.result.samples_ms = [v for _, v in sorted(by_job.get(j.id, []))]
        return rec

    def load_run_group(self, name: str) -> RunRecord:
        """Every run of a run group (e.g. the shards of one nightly) merged into one record."""
        with self.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(sa.select(runs.c.id).where(runs.c.run_group == name)
                                              .order_by(runs.c.started_at))]
        if not ids:
            raise StoreError(f"no runs in run group {name!r} in {self.display_url}; runs join a group with "
                             "`harness run ... --run-group NAME`")
        parts = [self.load_run(i) for i in ids]
        first = parts[0]
        statuses = sorted({p.status for p in parts})
        merged = RunRecord(
            id=name, suite_name=first.suite_name, suite=first.suite,
            status=statuses[0] if len(statuses) == 1 else "mixed (" + ", ".join(statuses) + ")",
            started_at=min(p.started_at for p in parts),
            ended_at=max((p.ended_at for p in parts if p.ended_at), default=None),
            git_commit=first.git_commit, host=", ".join(sorted({p.host or "?" for p in parts})), run_group=name)
        for p in parts:
            merged.devices.update(p.devices)
            merged.jobs.extend(p.jobs)
            merged.tags.extend(t for t in p.tags if t not in merged.tags)
        merged.extra = {"runs": ids}
        return merged

    def completed_job_keys(self, run_id: str) -> set[str]:
        with self.engine.connect() as conn:
            q = sa.select(jobs.c.job_key).where(jobs.c.run_id == run_id, jobs.c.status == "ok")
            return {r[0] for r in conn.execute(q)}


def _completed(result: JobResult, options: dict[str, Any]) -> JobResult:
    """`result` with its execution record completed from the job's runtime options."""
    return result.model_copy(update={"execution": result.execution.completed(options)})


def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return None
