"""Android as a farm sees it: Google's adb server (Debian's `adb`) reaching test phones over TCP
(tests/fakes/adbd.py speaks adbd's side of the transport protocol), every command under Android's shell
(mksh) with toybox's tools, and benchmark_model's stand-in running the pushed .tflite on ai-edge-litert.

Each test starts its own adb server on a free port (`adb -P PORT`, HOME in tmp_path for its keys) and kills
it at teardown; the harness reaches it with `--adb 127.0.0.1:PORT`."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.devices.android import AGENT_SCRIPT
from harness.store import Store
from tests.fakes.adb_faults import DropPushes, has_pid, watch
from tests.fakes.adb_server import FakeDevice, toybox_applets
from tests.fakes.adbd import AdbServer, FakeAdbd, FakePhones, free_port

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "suites" / "smoke.yaml"

# `adb` (the fixture in conftest.py): Google's adb server on a private port, killed at teardown; it skips
# the test where Debian's adb, mksh or toybox is missing.


def _farm(path: Path, **extra) -> Path:
    data = {"android": {"meminfo_interval_s": 0.1, "poll_s": 0.5, "reconnect_timeout_s": 10}, **extra}
    path.write_text(yaml.safe_dump(data))
    return path


def _run_args(adb: AdbServer, standin: Path, store: str, farm: Path, *extra: str) -> list[str]:
    return ["run", str(SMOKE), "--adb", f"127.0.0.1:{adb.port}", "--benchmark-model", str(standin),
            "--farm", str(farm), "--store", store, *extra]


def _graph(tflite: Path, *more: str) -> list[str]:
    # run_delay: the tiny block runs in microseconds; 0.1 s between runs keeps benchmark_model alive for
    # meminfo samples (interval 0.1 s), as a real model does by itself
    return ["--set", f"options.extra.graph={tflite}", "--set", "options.extra.run_delay=0.1",
            "--set", "runtime=litert-cpu", *more]


# ------------------------------------------------------------------------------------ the wire, with adb itself

def test_adb_connects_shells_pushes_and_pulls_through_the_real_server(adb: AdbServer, tmp_path: Path) -> None:
    with FakePhones(2, root=tmp_path / "phones") as phones:
        for serial in phones.serials:
            assert "connected to" in adb("connect", serial).stdout
        for serial in phones.serials:
            adb.wait_state(serial, "device")
        serial = phones.serials[0]
        # Android's shell: mksh, toybox first on PATH, exit code and stderr apart (shell v2)
        out = adb("-s", serial, "shell", 'echo $0; echo "$KSH_VERSION"; echo $PATH; readlink $(which ls); '
                  'echo oops >&2; exit 3', check=False)
        lines = out.stdout.splitlines()
        assert out.returncode == 3 and out.stderr == "oops\n"
        assert lines[0] == "mksh" and "MIRBSD KSH" in lines[1] and lines[2] == "/system/bin"
        assert lines[3] == "/usr/bin/toybox"
        # sync: push and pull the same bytes (a few WRTE payloads), through STAT/STA2, SEND, RECV
        blob = tmp_path / "blob.bin"
        blob.write_bytes(os.urandom(1_500_000) + b"end")
        adb("-s", serial, "push", str(blob), "/data/local/tmp/in/dir/blob.bin")  # fixed_push_mkdir
        adb("-s", serial, "pull", "/data/local/tmp/in/dir/blob.bin", str(tmp_path / "back.bin"))
        assert hashlib.md5((tmp_path / "back.bin").read_bytes()).hexdigest() == hashlib.md5(blob.read_bytes()).hexdigest()
        on_phone = adb("-s", serial, "shell", "md5sum /data/local/tmp/in/dir/blob.bin").stdout.split()[0]
        assert on_phone == hashlib.md5(blob.read_bytes()).hexdigest()
        assert phones.phones[0].device.bytes_pushed == blob.stat().st_size
        listing = adb("-s", serial, "ls", "/data/local/tmp/in/dir").stdout
        assert "blob.bin" in listing
        missing = adb("-s", serial, "pull", "/data/local/tmp/nope", str(tmp_path / "x"), check=False)
        assert missing.returncode != 0 and "No such file" in missing.stdout + missing.stderr
        # the stand-ins for Android-only tools
        assert adb("-s", serial, "shell", "getprop ro.product.model").stdout == "SM-S918B\n"
        assert "package:com.android.shell" in adb("-s", serial, "shell", "pm list packages").stdout
        assert phones.phones[1].device.bytes_pushed == 0


def test_android_userland_has_no_bash_and_no_gnu_tools(adb: AdbServer, tmp_path: Path) -> None:
    """What the harness may rely on: POSIX sh as mksh runs it and toybox's options. A bash-ism or a GNU-only
    option fails here as on a phone."""
    with FakeAdbd(FakeDevice("U", userland="android", root=tmp_path / "u")) as phone:
        adb("connect", phone.serial)
        adb.wait_state(phone.serial, "device")

        def sh(cmd: str) -> subprocess.CompletedProcess:
            return adb("-s", phone.serial, "shell", cmd, check=False)

        assert sh("command -v bash").returncode != 0
        assert sh("echo $BASH_VERSION").stdout == "\n"
        assert "not GNU" in sh("sed --version").stdout  # toybox's sed
        assert sh("ls --time-style=full-iso /system").returncode != 0  # a GNU-only option
        assert "applets" not in sh("ls /system/bin").stdout and "cat" in sh("ls /system/bin").stdout.split()
        assert set(toybox_applets()) <= set(sh("ls /system/bin").stdout.split())


# ------------------------------------------------------------------------------------ the harness, through it

def test_smoke_suite_through_the_real_adb_server_on_a_network_phone(adb: AdbServer, tmp_path: Path,
                                                                   tiny_tflite: Path, standin: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device android:127.0.0.1:PORT`: the harness `adb connect`s it, runs run_job.sh under mksh with
    toybox, the stand-in times the pushed .tflite on ai-edge-litert; a second run pushes nothing. The
    device id with colons goes through the CLI, the store, the folders and the report."""
    monkeypatch.chdir(tmp_path)
    store_url = f"sqlite:///{tmp_path}/x.db"
    with FakeAdbd(FakeDevice("N1", userland="android", root=tmp_path / "n1")) as phone:
        dev_id = f"android:{phone.serial}"
        # the HOST:PORT serial as a farm.yaml devices: key and an alias target
        farm = _farm(tmp_path / "farm.yaml", devices={phone.serial: {"device_dir": "/data/local/tmp/net dir"}},
                     aliases={"net1": dev_id})
        args = _run_args(adb, standin, store_url, farm, "--device", "net1", *_graph(tiny_tflite),
                         "--report", str(tmp_path / "r.html"))
        assert main(args) == 0
        first = phone.device.bytes_pushed
        assert first == standin.stat().st_size + AGENT_SCRIPT.stat().st_size + tiny_tflite.stat().st_size
        assert phone.device.host_path("/data/local/tmp/net dir/run_job.sh").is_file()
        assert adb.states() == {phone.serial: "device"}  # connected by the harness itself
        args[args.index("net1")] = dev_id
        assert main(args[:-2] + ["--no-report"]) == 0
        second = phone.device.bytes_pushed - first
        assert second == 0
        print(f"\nthrough the real adb server, bytes pushed: first run {first}, second run {second}")
    store = Store(store_url)
    runs = store.list_runs()
    assert len(runs) == 2
    run = store.load_run(sorted(runs, key=lambda r: r["started_at"])[0]["id"])
    assert len(run.jobs) == 5 and all(j.status == "ok" for j in run.jobs)
    assert {j.device_id for j in run.jobs} == {dev_id}
    for job in run.jobs:
        res = job.result
        assert res.timing_method == "benchmark_model"
        summary = res.execution.latency_summary_ms
        assert summary.n == 5 and 0 < summary.min <= summary.median <= summary.max
        assert res.memory.peak_rss_bytes > 10 * 2**20  # the stand-in's own process, ai-edge-litert loaded
    assert len(list(Path(f"results/runs/{run.id}").glob("*/device/stdout.txt"))) == 5
    assert dev_id in (tmp_path / "r.html").read_text()


def test_not_ready_phones_fail_their_jobs_with_the_reason(adb: AdbServer, tmp_path: Path, tiny_tflite: Path,
                                                         standin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device android` with one ready phone, one that rejects authorization, one that never answers CNXN and
    a farm `connect:` target nobody listens on: the ready phone's jobs run; every other phone's jobs fail
    naming its state and what to do (none is skipped silently)."""
    monkeypatch.chdir(tmp_path)
    dead = f"127.0.0.1:{free_port()}"
    devices = [FakeDevice("OK", userland="android", root=tmp_path / "ok"),
               FakeDevice("AUTH", userland="android", state="unauthorized", root=tmp_path / "auth"),
               FakeDevice("MUTE", userland="android", state="offline", root=tmp_path / "mute")]
    with FakePhones(0, devices=devices) as phones:
        ok, auth, mute = phones.serials
        farm = _farm(tmp_path / "farm.yaml", connect=[ok, auth, mute, dead])
        store_url = f"sqlite:///{tmp_path}/n.db"
        assert main(_run_args(adb, standin, store_url, farm, "--device", "android", "--no-report",
                              *_graph(tiny_tflite, "--set", "variants=[baseline]"))) == 1
        assert adb.states() == {ok: "device", auth: "unauthorized", mute: "offline"}
    store = Store(store_url)
    run = store.load_run(store.resolve_run())
    by_dev = {j.device_id: j for j in run.jobs}
    assert set(by_dev) == {f"android:{s}" for s in (ok, auth, mute, dead)}
    assert by_dev[f"android:{ok}"].status == "ok"
    for serial, words in ((auth, "unauthorized"), (mute, "offline"), (dead, "unreachable")):
        res = by_dev[f"android:{serial}"].result
        assert res.status != "ok" and words in res.error.message, (serial, res.error)
    assert "adb connect" in by_dev[f"android:{dead}"].result.error.message


# ------------------------------------------------------------------------------------ faults, through it

def test_fault_matrix_through_the_real_adb_server(adb: AdbServer, tmp_path: Path, tiny_tflite: Path,
                                                  standin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fault on FAULTY while GOOD runs beside it (2 jobs each, through Google's adb server): 0 results
    lost in every row; a transient fault is retried and completes, a lasting one fails with its reason."""

    monkeypatch.chdir(tmp_path)
    holder: dict = {}

    def when_running(action):
        return [(lambda: has_pid(holder["phone"].device, "000"), action)]

    def drop_run_once() -> None:
        dev = holder["phone"].device
        dev.drop_shell_after_seconds = 0.3
        start = holder["phone"].connections
        watch(lambda: holder["phone"].connections > start,
              lambda: setattr(dev, "drop_shell_after_seconds", None), threading.Event())

    def kill_server() -> None:
        adb("kill-server")
        time.sleep(1.0)
        adb("start-server")

    def lock_out(state: str):
        def act() -> None:
            holder["phone"].device.state = state
            holder["phone"].drop()  # it reconnects into the new state
        return act

    scenarios = [
        ("dropped mid-push (once)", lambda root: DropPushes("FAULTY", root=root, drops=1, userland="android"), [], ()),
        ("dropped mid-run (once)", None, when_running(drop_run_once), ("--set", "options.extra.run_delay=0.15")),
        ("adb kill-server + start-server mid-run", None, when_running(kill_server),
         ("--set", "options.extra.run_delay=0.15")),
        ("authorization rejected mid-run", None, when_running(lock_out("unauthorized")),
         ("--set", "options.extra.run_delay=0.15")),
        ("never answers CNXN after a drop", None, when_running(lock_out("offline")),
         ("--set", "options.extra.run_delay=0.15")),
        ("full disk", lambda root: FakeDevice("FAULTY", root=root, userland="android", disk_quota_bytes=20_000), [],
         ()),
    ]
    rows = []
    for i, (name, factory, watches, extra) in enumerate(scenarios):
        tmp = tmp_path / f"s{i}"
        faulty = (factory or (lambda root: FakeDevice("FAULTY", root=root, userland="android")))(tmp / "faulty")
        good = FakeDevice("GOOD", root=tmp / "good", userland="android")
        store_url = f"sqlite:///{tmp}/f.db"
        stop = threading.Event()
        with FakePhones(0, devices=[faulty, good]) as phones:
            holder["phone"] = phones.phones[0]
            fserial, gserial = phones.serials
            watchers = [watch(c, a, stop) for c, a in watches]
            rc = main(_run_args(adb, standin, store_url, _farm(tmp / "farm.yaml"), "--device", f"android:{fserial}",
                                "--device", f"android:{gserial}", "--retries", "1", "--no-report",
                                *_graph(tiny_tflite, "--set", "variants=[baseline, +opt_softmax]",
                                        "--set", "iterations=3", *extra)))
            stop.set()
            for w in watchers:
                w.join(timeout=5)
        run = Store(store_url).load_run(Store(store_url).resolve_run())
        f_jobs = [j for j in run.jobs if j.device_id == f"android:{fserial}"]
        rows.append({"fault": name, "rc": rc, "lost": 4 - len(run.jobs),
                     "good_ok": sum(j.status == "ok" for j in run.jobs if j.device_id == f"android:{gserial}"),
                     "completed": sum(j.status == "ok" for j in f_jobs),
                     "retried": sum(j.attempts - 1 for j in f_jobs),
                     "failed": sum(j.status == "failed" for j in f_jobs),
                     "errors": [j.result.error.message for j in f_jobs if j.result.error],
                     "drops_left": getattr(faulty, "_drops", None)})
        adb("disconnect", check=False)  # the next row's phones get new ports
    table = ["| fault (FAULTY) | completed | retried | failed | lost | reason |", "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['fault']} | {r['completed']} | {r['retried']} | {r['failed']} | {r['lost']} | "
                     f"{(r['errors'] or ['-'])[0][:100]} |")
    print("\n" + "\n".join(table))
    by = {r["fault"]: r for r in rows}
    for r in rows:
        assert r["lost"] == 0 and r["good_ok"] == 2, r
        assert r["rc"] == (0 if r["failed"] == 0 else 1), r
    # the push that dropped was sent again within prepare(): no job attempt was lost to it
    assert by["dropped mid-push (once)"]["completed"] == 2 and by["dropped mid-push (once)"]["drops_left"] == 0
    for name in ("dropped mid-run (once)", "adb kill-server + start-server mid-run"):
        assert by[name]["completed"] == 2 and by[name]["retried"] >= 1, by[name]
    # an unauthorized phone is not waited for: its job fails at once, naming the dialog to accept
    assert by["authorization rejected mid-run"]["failed"] >= 1
    assert "Allow USB debugging" in by["authorization rejected mid-run"]["errors"][0]
    assert by["never answers CNXN after a drop"]["failed"] >= 1
    assert by["full disk"]["failed"] == 2 and "full" in by["full disk"]["errors"][0]


# ------------------------------------------------------------------------------------ scripts/fake_phones.py

def test_fake_phones_script_prints_phones_adb_connects(adb: AdbServer, tmp_path: Path) -> None:
    import signal
    import sys

    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "fake_phones.py"), "--adbd", "2", "--dir",
                             str(tmp_path / "fp")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        serials = [proc.stdout.readline().strip() for _ in range(2)]
        assert all(s.startswith("127.0.0.1:") for s in serials) and len(set(serials)) == 2, serials
        for serial in serials:
            adb("connect", serial)
            adb.wait_state(serial, "device")
        assert adb("-s", serials[1], "shell", "echo $0").stdout == "mksh\n"
        assert (tmp_path / "fp" / "benchmark_model").read_text().splitlines()[0] == f"#!{sys.executable}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_fake_phones_script_started_by_a_python_without_the_engine(tmp_path: Path) -> None:
    """Issue 20 item 4: `python scripts/fake_phones.py` by a Python without ai-edge-litert wrote a stand-in whose
    #! named that Python, and every job failed. Now it runs again under the project's .venv (the stand-in then
    names the venv's Python), or, with no .venv, stops at once naming the fix."""
    import signal

    system = shutil.which("python3", path="/usr/bin:/bin")
    if not system or subprocess.run([system, "-c", "import ai_edge_litert"], capture_output=True).returncode == 0:
        pytest.skip("needs a system python3 without ai_edge_litert")
    venv = REPO / ".venv" / "bin" / "python"
    proc = subprocess.Popen([system, str(REPO / "scripts" / "fake_phones.py"), "--adbd", "1", "--dir",
                             str(tmp_path / "fp")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    try:
        first = proc.stdout.readline()
        if venv.exists():
            assert first.startswith("127.0.0.1:"), proc.stderr.read()
            shebang = (tmp_path / "fp" / "benchmark_model").read_text().splitlines()[0][2:]
            assert subprocess.run([shebang, "-c", "import ai_edge_litert"]).returncode == 0
        else:
            assert first == "" and proc.wait(timeout=30) == 2
            err = proc.stderr.read()
            assert "no ai_edge_litert" in err and ".venv/bin/python scripts/fake_phones.py" in err
            assert not (tmp_path / "fp" / "benchmark_model").exists()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def test_connect_targets_from_farm_and_device_ids_and_bad_input() -> None:
    """No adb server needed: what the harness `adb connect`s, and a clear error for a malformed `connect:`."""
    from harness.devices.android import AndroidConfigError, connect_targets
    from harness.devices.base import DeviceContext

    ctx = DeviceContext(farm={"connect": ["10.0.0.5:5555", "[fe80::1]:5555", "10.0.0.5:5555"]},
                        extra={"device_ids": ["android:10.0.0.6:5555", "android:R5CW30ABCDE", "host", "ios:X:1"]})
    assert connect_targets(ctx) == ["10.0.0.5:5555", "[fe80::1]:5555", "10.0.0.6:5555"]
    with pytest.raises(AndroidConfigError, match=r"must be a list of HOST:PORT"):
        connect_targets(DeviceContext(farm={"connect": "10.0.0.5:5555"}))
    with pytest.raises(AndroidConfigError, match=r"farm connect: phone 'pixel' is not HOST:PORT"):
        connect_targets(DeviceContext(farm={"connect": ["pixel"]}))
