"""Parallel devices: the smoke suite on 1, 2, 4 and 8 fake Android phones, through the real CLI.

For each device count N, `python -m harness run suites/smoke.yaml --device android ...` runs as a
subprocess against a fake adb server (tests/fakes/adb_server.py) that this process serves, with N
fake phones, and the benchmark_model stand-in (tests/fakes/benchmark_model_standin.py) as the
phones' benchmark tool. Each phone runs the same jobs (the first --variants ladder steps of the
smoke suite on a tiny .tflite), so N phones do N times the work of one.

A real phone does its work on its own GPU; the fake phones run on this host. To model that, each
job is mostly device-side waiting: benchmark_model's --run_delay (the stand-in sleeps it between
runs) times (warm-up + timed runs). What remains on this host per job is the stand-in's Python
start-up and its tiny invokes, run_job.sh and `dumpsys meminfo` (a Python stand-in) on the fake
phone, and the controller's adb traffic. The table splits the host CPU seconds among the
controller (os.wait4's rusage of the CLI process), the fake phones (every process the fake server
started, orphans included: this process makes itself a child subreaper and reaps them), the fake
adb server's threads (this process) and everything else on the machine (/proc/stat).

Parallel efficiency at N = (completed jobs per second at N) / (N x completed jobs per second at
N0), N0 the smallest device count measured (1 by default): 1.0 is perfect scaling; the issue's
target is >= 0.85 at 8. It is given for the CLI process's wall time (start-up included) and for
the run's own span (the store's run started_at..ended_at: device preparation and jobs).

    .venv/bin/python bench/parallel.py [--devices 1,2,4,8] [--variants 2] [--run-delay 0.4] [--runs 4]
        [--warmup-runs 1] [--meminfo-interval 1.0] [--repeats 1] [--json PATH]
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.store import Store  # noqa: E402
from harness.variants import LADDER  # noqa: E402
from tests.fakes.adb_server import FakeAdbServer, FakeDevice  # noqa: E402
from tests.fakes.benchmark_model_standin import write_standin  # noqa: E402
from tests.fakes.tiny_block import BLOCK_SRC as _BLOCK_SRC  # noqa: E402

SMOKE = REPO / "suites" / "smoke.yaml"
TARGET_EFFICIENCY = 0.85
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36



def default_tflite_path() -> Path:
    """Where the tiny .tflite is cached: $HARNESS_CACHE (or ~/.cache/harness)/bench/."""
    key = hashlib.sha256(_BLOCK_SRC.encode()).hexdigest()[:12]
    cache = Path(os.environ.get("HARNESS_CACHE") or "~/.cache/harness").expanduser()
    return cache / "bench" / f"block-{key}.tflite"


def ensure_tiny_tflite(path: Path) -> Path:
    """Make the tiny .tflite at `path` with litert-torch (a subprocess), unless it is there already."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    code = (_BLOCK_SRC + "import litert_torch, sys\ntorch.manual_seed(0)\n"
            "litert_torch.convert(Block().eval(), (torch.randn(1, 8, 8, 8),)).export(sys.argv[1])\n")
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp)], check=False, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"converting the tiny block with litert-torch failed:\n{proc.stderr[-2000:]}")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------ CPU accounting

def become_subreaper() -> bool:
    """Make this process adopt its descendants' orphans (run_job.sh runs in the background on the fake
    phones; its launching shell exits), so their CPU time can be counted when they are reaped."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans(deadline_s: float = 10.0) -> int:
    """Reap every child left (adopted orphans; the fake server has waited for its own). Their rusage
    goes into RUSAGE_CHILDREN. Returns how many were reaped."""
    reaped = 0
    end = time.monotonic() + deadline_s
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped += 1
        elif time.monotonic() > end:
            return reaped  # something still runs; leave it
        else:
            time.sleep(0.05)


def _cpu_s(ru: resource.struct_rusage) -> float:
    return ru.ru_utime + ru.ru_stime


def host_busy_s() -> float:
    """CPU seconds every process on this machine has used (user+nice+system+irq+softirq+steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


# ------------------------------------------------------------------------------------ one measurement

@dataclass
class Point:
    """One run of the smoke suite on N fake phones."""

    devices: int
    jobs_planned: int
    jobs_ok: int
    jobs_failed: int            # stored with status failed
    jobs_lost: int              # planned but not stored (the CLI died or was killed)
    rc: int
    cli_wall_s: float           # the CLI process, start to exit
    run_wall_s: float           # the store's run span: device preparation and every job
    controller_cpu_s: float     # user+sys of the CLI process (and anything it waited for)
    controller_user_s: float
    controller_sys_s: float
    controller_peak_rss_mib: float
    phones_cpu_s: float         # every process the fake phones ran (shells, run_job.sh, stand-in, dumpsys)
    adb_server_cpu_s: float     # this process: the fake adb server's threads
    host_busy_s: float          # every process on the machine, from /proc/stat
    load_avg_1m_before: float
    job_wall_s_mean: float      # one job, as the controller saw it (started_at..ended_at)
    device_run_s_mean: float    # run_job.sh's span per job, as the controller measured it
    orphans_reaped: int
    startup_wall_s: float       # CLI start until its first adb request (imports, suite, plan)
    startup_cpu_s: float        # the controller's CPU seconds by then (/proc/PID/stat, 1/CLK_TCK steps)
    prep_and_gaps_s: float      # run span minus the busiest phone's summed job walls
    busiest_phone_jobs_s: float  # the largest sum of job walls of one phone
    mean_phone_jobs_s: float     # the mean over phones of that sum
    errors: list[str] = field(default_factory=list)

    @property
    def others_cpu_s(self) -> float:
        return max(0.0, self.host_busy_s - self.controller_cpu_s - self.phones_cpu_s - self.adb_server_cpu_s)


def proc_cpu_s(pid: int) -> float | None:
    """user+sys CPU seconds of a live process, from /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def watch_startup(pid: int, srv: FakeAdbServer, t0: float, stop: threading.Event, out: dict) -> None:
    """Note the wall time and the controller's CPU seconds when its first adb request arrives."""
    while not stop.is_set():
        cpu = proc_cpu_s(pid)
        if srv.requests:
            out["wall_s"], out["cpu_s"] = time.perf_counter() - t0, cpu
            return
        time.sleep(0.01)


def write_farm(path: Path, meminfo_interval_s: float, poll_s: float | None) -> Path:
    android: dict[str, float] = {"meminfo_interval_s": meminfo_interval_s, "reconnect_timeout_s": 5}
    if poll_s is not None:
        android["poll_s"] = poll_s
    path.write_text(yaml.safe_dump({"android": android}))
    return path


def controller_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ANDROID_ADB_SERVER_HOST", "ANDROID_ADB_SERVER_PORT")}
    env["ADBUTILS_ADB_PATH"] = shutil.which("true") or "/bin/true"  # never start a real adb server
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["COLUMNS"] = "120"
    return env


def measure(n: int, workdir: Path, standin: Path, tflite: Path, variants: list[str], run_delay_s: float,
            runs: int, warmup_runs: int, meminfo_interval_s: float, poll_s: float | None,
            timeout_s: float, max_parallel: int | None = None) -> Point:
    """Run the smoke suite once on `n` fresh fake phones; account wall, CPU and the stored jobs."""
    workdir.mkdir(parents=True)
    store_url = f"sqlite:///{workdir}/x.db"
    farm = write_farm(workdir / "farm.yaml", meminfo_interval_s, poll_s)
    devices = [FakeDevice(f"PHONE{i:02d}", root=workdir / f"phone{i:02d}") for i in range(n)]
    with FakeAdbServer(devices) as srv:
        cmd = [sys.executable, "-m", "harness", "run", str(SMOKE), "--device", "android",
               "--adb", f"127.0.0.1:{srv.port}", "--benchmark-model", str(standin), "--farm", str(farm),
               "--store", store_url, "--cache", str(workdir / "cache"), "--no-report",
               "--set", f"options.extra.graph={tflite}",
               "--set", f"options.extra.run_delay={run_delay_s}",
               "--set", "variants=[" + ", ".join(variants) + "]",
               "--set", f"iterations={runs}", "--set", f"measure.warmup_runs={warmup_runs}"]
        if max_parallel is not None:
            cmd += ["--max-parallel", str(max_parallel)]
        load = os.getloadavg()[0]
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy0 = host_busy_s()
        t0 = time.perf_counter()
        with open(workdir / "cli.out", "wb") as out, open(workdir / "cli.err", "wb") as err:
            proc = subprocess.Popen(cmd, cwd=workdir, env=controller_env(), stdout=out, stderr=err)
            killer = threading.Timer(timeout_s, proc.kill)
            killer.start()
            startup: dict[str, float | None] = {}
            stop = threading.Event()
            watcher = threading.Thread(target=watch_startup, args=(proc.pid, srv, t0, stop, startup), daemon=True)
            watcher.start()
            try:
                _pid, status, ru = os.wait4(proc.pid, 0)
            finally:
                killer.cancel()
                stop.set()
                watcher.join()
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        cli_wall = time.perf_counter() - t0
    # the server has stopped (every shell waited, leftover process groups killed): reap the orphans
    orphans = reap_orphans()
    busy = host_busy_s() - busy0
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    phones = _cpu_s(kids1) - _cpu_s(kids0) - _cpu_s(ru)

    store = Store(store_url)
    errors: list[str] = []
    jobs = []
    run_wall = float("nan")
    runs_stored = store.list_runs()
    if runs_stored:
        run = store.load_run(store.resolve_run())
        jobs = run.jobs
        if run.ended_at is not None:
            run_wall = run.ended_at - run.started_at
        errors = [f"{j.device_id} {j.variant}: {j.result.error.kind}: {j.result.error.message}"
                  for j in jobs if j.status != "ok" and j.result.error]
    if proc.returncode != 0 and not errors:
        errors.append(f"CLI exit code {proc.returncode}: {(workdir / 'cli.err').read_text()[-1500:]}")
    job_walls = [j.result.ended_at - j.result.started_at for j in jobs
                 if j.result.started_at is not None and j.result.ended_at is not None]
    run_s = [float(j.result.extra["run_s"]) for j in jobs if isinstance(j.result.extra.get("run_s"), (int, float))]
    per_device: dict[str, float] = {}
    for j in jobs:
        if j.result.started_at is not None and j.result.ended_at is not None:
            per_device[j.device_id] = per_device.get(j.device_id, 0.0) + j.result.ended_at - j.result.started_at
    return Point(
        devices=n, jobs_planned=n * len(variants), jobs_ok=sum(j.status == "ok" for j in jobs),
        jobs_failed=sum(j.status != "ok" for j in jobs), jobs_lost=n * len(variants) - len(jobs), rc=proc.returncode,
        cli_wall_s=cli_wall,
        run_wall_s=run_wall, controller_cpu_s=_cpu_s(ru), controller_user_s=ru.ru_utime,
        controller_sys_s=ru.ru_stime, controller_peak_rss_mib=ru.ru_maxrss / 1024.0,
        phones_cpu_s=phones, adb_server_cpu_s=_cpu_s(self1) - _cpu_s(self0), host_busy_s=busy,
        load_avg_1m_before=load, job_wall_s_mean=statistics.fmean(job_walls) if job_walls else float("nan"),
        device_run_s_mean=statistics.fmean(run_s) if run_s else float("nan"), orphans_reaped=orphans,
        startup_wall_s=startup.get("wall_s") or float("nan"),
        startup_cpu_s=startup["cpu_s"] if startup.get("cpu_s") is not None else float("nan"),
        prep_and_gaps_s=run_wall - max(per_device.values(), default=0.0),
        busiest_phone_jobs_s=max(per_device.values(), default=float("nan")),
        mean_phone_jobs_s=statistics.fmean(per_device.values()) if per_device else float("nan"),
        errors=errors,
    )


# ------------------------------------------------------------------------------------ the table

def efficiency(point: Point, base: Point, wall: str) -> float:
    """Completed jobs per second at N over N/N0 times completed jobs per second at N0."""
    t_n, t_0 = getattr(point, wall), getattr(base, wall)
    if not (t_n > 0 and t_0 > 0 and base.jobs_ok > 0):
        return float("nan")
    return (point.jobs_ok / t_n) / ((point.devices / base.devices) * (base.jobs_ok / t_0))


def summarize(points: list[Point]) -> list[dict]:
    """One row per device count: the median-wall repeat's figures plus efficiencies against N0."""
    by_n: dict[int, list[Point]] = {}
    for p in points:
        by_n.setdefault(p.devices, []).append(p)
    chosen = {n: sorted(ps, key=lambda p: p.cli_wall_s)[(len(ps) - 1) // 2] for n, ps in by_n.items()}
    base = chosen[min(chosen)]
    rows = []
    for n in sorted(chosen):
        p = chosen[n]
        rows.append({**asdict(p), "others_cpu_s": p.others_cpu_s, "repeats": len(by_n[n]),
                     "cli_wall_all_s": [round(q.cli_wall_s, 2) for q in by_n[n]],
                     "cli_wall_rel": p.cli_wall_s / base.cli_wall_s,
                     "efficiency_cli": efficiency(p, base, "cli_wall_s"),
                     "efficiency_run": efficiency(p, base, "run_wall_s"),
                     "jobs_per_s": p.jobs_ok / p.cli_wall_s if p.cli_wall_s > 0 else float("nan")})
    return rows


def render(rows: list[dict], settings: dict) -> str:
    n0 = rows[0]["devices"]
    head = ["devices", "jobs ok/failed/lost", "wall s", f"wall / N={n0}", "eff (wall)", "run span s", "eff (run span)",
            "job s (phone part)", "ctrl CPU s = startup + run", "ctrl peak RSS MiB", "phones CPU s",
            "other procs CPU s", "load1 before"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        run_cpu = r["controller_cpu_s"] - r["startup_cpu_s"]
        cells = [str(r["devices"]), f"{r['jobs_ok']}/{r['jobs_failed']}/{r['jobs_lost']}", f"{r['cli_wall_s']:.2f}",
                 f"{r['cli_wall_rel']:.2f}", f"{r['efficiency_cli']:.2f}", f"{r['run_wall_s']:.2f}",
                 f"{r['efficiency_run']:.2f}", f"{r['job_wall_s_mean']:.2f} ({r['device_run_s_mean']:.2f})",
                 f"{r['controller_cpu_s']:.2f} = {r['startup_cpu_s']:.2f} + {run_cpu:.2f}",
                 f"{r['controller_peak_rss_mib']:.0f}", f"{r['phones_cpu_s']:.2f}", f"{r['others_cpu_s']:.2f}",
                 f"{r['load_avg_1m_before']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def notes(rows: list[dict], settings: dict) -> list[str]:
    s = settings
    cores = s["host_cores"]
    per_job_wait = (s["runs"] + s["warmup_runs"]) * s["run_delay_s"]
    first, last = rows[0], rows[-1]
    poll = s["poll_s"] if s["poll_s"] is not None else "default"
    out = [
        (f"Each phone runs the smoke suite's first {len(s['variants'])} ladder steps "
         f"({', '.join(s['variants'])}) on a tiny .tflite: {s['warmup_runs']} warm-up + {s['runs']} timed runs "
         f"with --run_delay={s['run_delay_s']} s, i.e. {per_job_wait:.1f} s of device-side waiting per job (the "
         "stand-in sleeps it, standing for a phone's own GPU time). The fake phones' real work (the stand-in's "
         "Python start-up and invokes, run_job.sh, the dumpsys stand-in) runs on this host and shares its CPUs "
         "with the controller."),
        (f"Farm: meminfo_interval_s={s['meminfo_interval_s']}, poll_s={poll}"
         + (f"; CLI --max-parallel {s['max_parallel']}" if s["max_parallel"] else "")
         + f". Host: {cores} CPUs, shared with "
         "other work (load1 before each run; 'other procs' = CPU seconds of every other process on the machine "
         "during the run, from /proc/stat)."),
        (f"eff = (completed jobs/s at N) / (N/{first['devices']} x completed jobs/s at N={first['devices']}); "
         "'wall' is the CLI process from start to exit, 'run span' the store's run started_at..ended_at "
         "(device preparation and jobs). Target >= 0.85 at 8. 'job s' is a job's mean wall as the controller "
         "saw it, in brackets the part the phone's run_job.sh took."),
        ("CPU seconds: ctrl = the CLI process (os.wait4 rusage), split at its first adb request (startup: "
         "imports, suite, plan) from the rest (discovery, pushes, jobs, store); phones = every process the "
         "fake phones ran, orphans included."),
    ]
    for r in rows:
        jobs = max(1, r["jobs_ok"] + r["jobs_failed"])
        run_cpu = r["controller_cpu_s"] - r["startup_cpu_s"]
        if r["jobs_failed"] or r["jobs_lost"] or r["rc"]:
            out.append(f"N={r['devices']}: CLI exit {r['rc']}, {r['jobs_failed']} jobs failed, {r['jobs_lost']} lost: "
                       + "; ".join(r["errors"][:3]))
        out.append(f"N={r['devices']}: startup {r['startup_wall_s']:.2f} s wall; preparation and gaps "
                   f"{r['prep_and_gaps_s']:.2f} s of the run span; controller handling per job (job wall - phone "
                   f"part) {r['job_wall_s_mean'] - r['device_run_s_mean']:.2f} s; ctrl CPU after startup "
                   f"{run_cpu / jobs:.3f} s per job; phones CPU {r['phones_cpu_s'] / jobs:.3f} s per job; "
                   f"fake adb server {r['adb_server_cpu_s']:.2f} CPU s"
                   + (f"; walls of the repeats {r['cli_wall_all_s']}" if r["repeats"] > 1 else ""))
    if len(rows) > 1:
        per_phone = len(s["variants"])
        extra = last["run_wall_s"] - first["run_wall_s"]
        phone_part = per_phone * (last["device_run_s_mean"] - first["device_run_s_mean"])
        ctrl_part = per_phone * ((last["job_wall_s_mean"] - last["device_run_s_mean"])
                                 - (first["job_wall_s_mean"] - first["device_run_s_mean"]))
        spread_part = ((last["busiest_phone_jobs_s"] - last["mean_phone_jobs_s"])
                       - (first["busiest_phone_jobs_s"] - first["mean_phone_jobs_s"]))
        prep_part = last["prep_and_gaps_s"] - first["prep_and_gaps_s"]
        out.append(
            f"Where N={last['devices']} loses against N={first['devices']}: its run span is {extra:+.2f} s longer = "
            f"{phone_part:+.2f} s phone side of a phone's {per_phone} jobs (the fake phones' host-side work, mostly "
            f"the stand-in's Python start-up, slows as {last['devices']} fake phones share {cores} CPUs) "
            f"{ctrl_part:+.2f} s controller handling of those jobs {spread_part:+.2f} s slowest phone against the "
            f"mean phone {prep_part:+.2f} s preparation (discovery, pushes, the stand-in's --help probe) and gaps "
            "between jobs.")
    wall = last["cli_wall_s"]
    mine = (last["controller_cpu_s"] + last["phones_cpu_s"] + last["adb_server_cpu_s"]) / wall
    verdict = "meets" if last["efficiency_run"] >= TARGET_EFFICIENCY else "misses"
    out.append(
        f"At N={last['devices']}: CPUs busy on average {mine:.2f} of {cores} with this bench (controller "
        f"{last['controller_cpu_s'] / wall:.2f}, fake phones {last['phones_cpu_s'] / wall:.2f}, fake adb server "
        f"{last['adb_server_cpu_s'] / wall:.2f}) and {last['others_cpu_s'] / wall:.2f} with other processes; the "
        f"controller's CPU after startup was {last['controller_cpu_s'] - last['startup_cpu_s']:.2f} s for "
        f"{last['jobs_ok'] + last['jobs_failed']} jobs. Run-span efficiency {last['efficiency_run']:.2f} {verdict} "
        f"the {TARGET_EFFICIENCY} target (wall: {last['efficiency_cli']:.2f}).")
    if (mine * wall + last["others_cpu_s"]) / wall > 0.8 * cores:
        out.append("The host's CPUs were near saturation during the runs: wall times are noisy and every part "
                   "(controller, fake phones) ran slower than on an idle host; a real farm's phones compute on "
                   "their own SoCs and leave the controller's host to it alone.")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="1,2,4,8", help="device counts, comma-separated (default 1,2,4,8)")
    ap.add_argument("--variants", type=int, default=2, help=f"ladder steps per phone, 1..{len(LADDER)} (default 2)")
    ap.add_argument("--run-delay", type=float, default=0.4, help="benchmark_model --run_delay in s (default 0.4)")
    ap.add_argument("--runs", type=int, default=4, help="timed runs per job (default 4)")
    ap.add_argument("--warmup-runs", type=int, default=1, help="warm-up runs per job (default 1)")
    ap.add_argument("--meminfo-interval", type=float, default=1.0,
                    help="farm meminfo_interval_s: s between dumpsys samples on a phone (default 1.0)")
    ap.add_argument("--poll", type=float, default=None, help="farm poll_s (default: the harness default)")
    ap.add_argument("--max-parallel", type=int, default=None,
                    help="pass --max-parallel N to the CLI (default: one worker per device)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per device count; the median wall is shown")
    ap.add_argument("--tflite", type=Path, default=None, help="the .tflite to run (default: a tiny block, "
                    "converted once and cached under $HARNESS_CACHE or ~/.cache/harness/bench)")
    ap.add_argument("--timeout", type=float, default=600, help="kill a CLI run after this many s (default 600)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work dirs (stores, logs) under this dir")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows and settings as JSON here")
    args = ap.parse_args(argv)

    try:
        counts = sorted({int(x) for x in args.devices.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--devices {args.devices!r}: expected comma-separated positive integers, e.g. 1,2,4,8")
    if not counts or counts[0] < 1:
        ap.error("--devices: give at least one device count >= 1")
    if not 1 <= args.variants <= len(LADDER):
        ap.error(f"--variants must be 1..{len(LADDER)} (the ladder: {', '.join(n for n, _ in LADDER)})")
    if args.runs < 1 or args.warmup_runs < 0 or args.run_delay < 0 or args.repeats < 1:
        ap.error("--runs >= 1, --warmup-runs >= 0, --run-delay >= 0 and --repeats >= 1, please")

    subreaper = become_subreaper()
    tflite = ensure_tiny_tflite((args.tflite or default_tflite_path()).resolve())  # made once, if missing
    variants = [name for name, _ in LADDER[: args.variants]]
    settings = {"variants": variants, "run_delay_s": args.run_delay, "runs": args.runs,
                "warmup_runs": args.warmup_runs, "meminfo_interval_s": args.meminfo_interval, "poll_s": args.poll,
                "max_parallel": args.max_parallel,
                "host_cores": os.cpu_count() or 1, "subreaper": subreaper, "tflite": str(tflite),
                "python": sys.version.split()[0]}
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-parallel-", dir=args.keep))
    points: list[Point] = []
    try:
        standin = write_standin(root / "benchmark_model")
        for rep in range(args.repeats):
            for n in counts:
                p = measure(n, root / f"n{n}-r{rep}", standin, tflite, variants, args.run_delay, args.runs,
                            args.warmup_runs, args.meminfo_interval, args.poll, args.timeout, args.max_parallel)
                print(f"N={n} repeat {rep + 1}: {p.cli_wall_s:.2f} s, {p.jobs_ok} ok, {p.jobs_failed} failed, "
                      f"controller {p.controller_cpu_s:.2f} CPU s", file=sys.stderr, flush=True)
                points.append(p)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = summarize(points)
    print(render(rows, settings))
    print()
    for line in notes(rows, settings):
        print("- " + line)
    if not subreaper:
        print("- prctl(PR_SET_CHILD_SUBREAPER) failed: the phones' CPU misses run_job.sh and what it ran")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    return 0 if all(p.jobs_failed == 0 and p.jobs_lost == 0 and p.rc == 0 for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
