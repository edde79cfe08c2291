"""adbutils 2.12 against the fake ADB server: the real client code over the real wire protocol.

These tests also pin down how adbutils itself behaves on failures (which exception, which
message), since the Android device code has to catch exactly those.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import struct
import threading
import time
from pathlib import Path

import adbutils
import pytest
from adbutils.errors import AdbConnectionError, AdbError, AdbTimeout

from harness.devices.android.parse_device import (
    THERMAL_ZONES_SHELL_CMD,
    ParseError,
    parse_battery_temp,
    parse_devices_gles,
    parse_getprop,
    parse_meminfo_graphics,
    parse_meminfo_total_ram,
    parse_thermal_zones,
)

try:
    from tests.fakes.adb_server import FakeAdbServer, FakeDevice
except ModuleNotFoundError:  # pytest's default import mode puts tests/, not the repo root, on sys.path
    from fakes.adb_server import FakeAdbServer, FakeDevice  # type: ignore[no-redef]


@pytest.fixture(autouse=True)
def _harmless_adb(monkeypatch: pytest.MonkeyPatch) -> None:
    # adbutils runs `adb start-server` when a connect fails: never start a real adb server here.
    monkeypatch.setenv("ADBUTILS_ADB_PATH", shutil.which("true") or "/bin/true")


@pytest.fixture
def server(tmp_path: Path):
    devices = [
        FakeDevice("R5CW30ABCDE", root=tmp_path / "phone"),
        FakeDevice("OFF1", state="offline", root=tmp_path / "off"),
        FakeDevice("UNAUTH1", state="unauthorized", root=tmp_path / "unauth"),
    ]
    with FakeAdbServer(devices) as srv:
        yield srv


@pytest.fixture
def client(server: FakeAdbServer) -> adbutils.AdbClient:
    return adbutils.AdbClient(host="127.0.0.1", port=server.port, socket_timeout=20)


@pytest.fixture
def dev(client: adbutils.AdbClient) -> adbutils.AdbDevice:
    return client.device("R5CW30ABCDE")


# --------------------------------------------------------------------------- host services


def test_version_and_devices_with_states(client: adbutils.AdbClient, server: FakeAdbServer) -> None:
    assert client.server_version() == 41
    assert [(i.serial, i.state) for i in client.list()] == [
        ("R5CW30ABCDE", "device"), ("OFF1", "offline"), ("UNAUTH1", "unauthorized")]
    long = {i.serial: i for i in client.list(extended=True)}
    assert long["R5CW30ABCDE"].tags["model"] == "SM-S918B"
    assert long["R5CW30ABCDE"].transport_id == server.device("R5CW30ABCDE").transport_id
    assert long["OFF1"].state == "offline" and "model" not in long["OFF1"].tags
    assert [d.serial for d in client.device_list()] == ["R5CW30ABCDE"]


def test_old_server_version_uses_host_transport(tmp_path: Path) -> None:
    # adbutils switches transports with host:tport:serial: from server version 41 on, and with
    # host:transport: before that; the fake speaks both.
    with FakeAdbServer([FakeDevice("OLD1", root=tmp_path / "old")], version=40) as srv:
        client = adbutils.AdbClient(host="127.0.0.1", port=srv.port)
        assert client.device("OLD1").shell("echo ok") == "ok"
        assert (None, "host:transport:OLD1") in srv.requests
        assert ("OLD1", "shell:echo ok") in srv.requests


def test_get_state_of_every_state(client: adbutils.AdbClient) -> None:
    assert client.device("R5CW30ABCDE").get_state() == "device"
    assert client.device("OFF1").get_state() == "offline"
    assert client.device("UNAUTH1").get_state() == "unauthorized"


def test_offline_unauthorized_and_unknown_devices_fail_like_adb(client: adbutils.AdbClient) -> None:
    with pytest.raises(AdbError, match="^device offline$"):
        client.device("OFF1").shell("echo hi")
    with pytest.raises(AdbError, match=r"device unauthorized\.\nThis adb server's \$ADB_VENDOR_KEYS is not set"):
        client.device("UNAUTH1").shell("echo hi")
    with pytest.raises(AdbError, match="device 'NOPE' not found"):
        client.device("NOPE").shell("echo hi")
    with pytest.raises(AdbError, match="device offline"):
        client.device("OFF1").sync.stat("/data/local/tmp")


def test_state_changes_at_run_time(client: adbutils.AdbClient, server: FakeAdbServer) -> None:
    fake = server.device("R5CW30ABCDE")
    fake.state = "offline"
    assert client.list()[0].state == "offline"
    with pytest.raises(AdbError, match="device offline"):
        client.device("R5CW30ABCDE").shell("echo hi")
    fake.state = "device"
    assert client.device("R5CW30ABCDE").shell("echo back") == "back"


def test_track_devices_reports_changes(client: adbutils.AdbClient, server: FakeAdbServer) -> None:
    events = client.track_devices()
    first = {next(events) for _ in range(3)}
    assert {(e.serial, e.status) for e in first} == {
        ("R5CW30ABCDE", "device"), ("OFF1", "offline"), ("UNAUTH1", "unauthorized")}
    server.device("UNAUTH1").state = "device"
    change = {next(events) for _ in range(2)}
    assert {(e.present, e.serial, e.status) for e in change} == {
        (False, "UNAUTH1", "absent"), (True, "UNAUTH1", "device")}
    events.close()


# --------------------------------------------------------------------------- shell


def test_props(dev: adbutils.AdbDevice, server: FakeAdbServer) -> None:
    assert dev.prop.model == "SM-S918B"
    assert dev.prop.device == "dm3q"
    assert dev.getprop("ro.soc.model") == "SM8550"
    assert dev.getprop("no.such.prop") == ""
    assert parse_getprop(dev.shell("getprop")) == server.device("R5CW30ABCDE").props
    server.device("R5CW30ABCDE").props["debug.harness"] = "two words"
    assert dev.getprop("debug.harness") == "two words"


def test_shell_v1_merges_stderr_and_hides_the_sandbox(dev: adbutils.AdbDevice, tmp_path: Path) -> None:
    out = dev.shell("pwd; echo out; echo err >&2; ls -d /data/local/tmp /sdcard")
    assert out == "/data/local/tmp\nout\nerr\n/data/local/tmp\n/sdcard"
    assert str(tmp_path) not in dev.shell("echo $PWD; readlink -f /data/local/tmp")


def test_shell2_v2_exit_code_and_stderr(dev: adbutils.AdbDevice) -> None:
    r = dev.shell2("echo out; echo err >&2; exit 3", v2=True)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = dev.shell2("kill -9 $$", v2=True)
    assert r.returncode == 128 + 9
    # shell2 without v2 appends "; echo X4EXIT:$?" to learn the exit code
    r = dev.shell2("echo out; false")
    assert (r.returncode, r.output) == (1, "out\n")


def test_shell_timeout_raises_adbtimeout(dev: adbutils.AdbDevice) -> None:
    t0 = time.monotonic()
    with pytest.raises(AdbTimeout, match="adb read timeout"):
        dev.shell("sleep 5; echo late", timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert dev.shell("echo next") == "next"


def test_taskset_standin_runs_the_command(dev: adbutils.AdbDevice) -> None:
    assert dev.shell("taskset f0 echo pinned") == "pinned"


# --------------------------------------------------------------------------- sync


def test_push_applies_mode_bits_and_the_file_runs(dev: adbutils.AdbDevice, tmp_path: Path,
                                                  server: FakeAdbServer) -> None:
    script = tmp_path / "agent.sh"
    script.write_text("#!/bin/sh\necho \"agent $1 in $(pwd)\"\n")
    size = dev.sync.push(script, "/data/local/tmp/harness/agent.sh", mode=0o755)
    assert size == script.stat().st_size
    info = dev.sync.stat("/data/local/tmp/harness/agent.sh")
    assert info.mode == stat.S_IFREG | 0o755 and info.size == size
    assert dev.shell("/data/local/tmp/harness/agent.sh x") == "agent x in /data/local/tmp"
    assert dev.shell("cd harness && ./agent.sh y") == "agent y in /data/local/tmp/harness"
    host = server.device("R5CW30ABCDE").host_path("/data/local/tmp/harness/agent.sh")
    assert host.read_bytes() == script.read_bytes()

    dev.sync.push(b"#!/bin/sh\necho no\n", "/data/local/tmp/noexec.sh", mode=0o644)
    assert dev.sync.stat("/data/local/tmp/noexec.sh").mode == stat.S_IFREG | 0o644
    assert dev.shell2("./noexec.sh", v2=True).returncode == 126


def test_push_to_a_directory_appends_the_name(dev: adbutils.AdbDevice, tmp_path: Path) -> None:
    src = tmp_path / "model.tflite"
    src.write_bytes(b"TFL3" * 10)
    dev.sync.push(src, "/data/local/tmp")
    assert dev.sync.stat("/data/local/tmp/model.tflite").size == 40


def test_pull_file_round_trip(dev: adbutils.AdbDevice, tmp_path: Path) -> None:
    payload = os.urandom(300_000)  # several DATA chunks each way
    dev.sync.push(payload, "/data/local/tmp/blob.bin", mode=0o644)
    assert dev.shell("md5sum /data/local/tmp/blob.bin").split()[0] == hashlib.md5(payload).hexdigest()
    dst = tmp_path / "blob.bin"
    assert dev.sync.pull_file("/data/local/tmp/blob.bin", dst) == len(payload)
    assert dst.read_bytes() == payload
    assert dev.sync.read_text("/data/local/tmp/blob.bin", encoding="latin-1").encode("latin-1") == payload


def test_missing_files(dev: adbutils.AdbDevice, tmp_path: Path) -> None:
    info = dev.sync.stat("/data/local/tmp/missing.json")
    assert (info.mode, info.size, info.mtime) == (0, 0, None)
    assert not dev.sync.exists("/data/local/tmp/missing.json")
    with pytest.raises(AdbError, match="open failed: No such file or directory"):
        dev.sync.pull_file("/data/local/tmp/missing.json", tmp_path / "x.json")
    # DESIGN.md: sync.pull() of a missing path "succeeds" with an empty directory
    assert dev.sync.pull("/data/local/tmp/missing.json", tmp_path / "pulled") == 0
    assert (tmp_path / "pulled").is_dir() and not any((tmp_path / "pulled").iterdir())


def test_listing(dev: adbutils.AdbDevice) -> None:
    dev.sync.push(b"a" * 10, "/data/local/tmp/d/a.txt")
    dev.sync.push(b"b" * 20, "/data/local/tmp/d/b.txt")
    entries = {f.path: f for f in dev.sync.list("/data/local/tmp/d")}
    assert set(entries) == {".", "..", "a.txt", "b.txt"}
    assert entries["b.txt"].size == 20 and stat.S_ISREG(entries["b.txt"].mode)
    assert stat.S_ISDIR(entries["."].mode)


def test_bytes_pushed_counters(dev: adbutils.AdbDevice, server: FakeAdbServer) -> None:
    fake = server.device("R5CW30ABCDE")
    dev.sync.push(b"x" * 1000, "/data/local/tmp/one")
    dev.sync.push(b"y" * 5000, "/data/local/tmp/two")
    assert (fake.bytes_pushed, fake.bytes_received, fake.pushes_completed) == (6000, 6000, 2)


# --------------------------------------------------------------------------- faults


def test_drop_mid_push(dev: adbutils.AdbDevice, server: FakeAdbServer) -> None:
    fake = server.device("R5CW30ABCDE")
    fake.drop_push_after_bytes = 64 * 1024
    # A small file is usually in the socket buffers already when the connection drops: adbutils
    # then reads an empty status and raises AdbError(''). On a loaded machine the client may still
    # be sending when the drop comes, and the socket error escapes instead (CI saw BrokenPipeError),
    # so callers must handle both ...
    with pytest.raises((AdbError, OSError)) as small:
        dev.sync.push(os.urandom(100_000), "/data/local/tmp/small.bin")
    assert (str(small.value) == "") if isinstance(small.value, AdbError) else small.value.errno
    # ... a large one is still being sent: the socket error escapes as a plain OSError
    # (BrokenPipeError / ConnectionResetError), not as an AdbError.
    with pytest.raises(OSError) as large:
        dev.sync.push(os.urandom(20_000_000), "/data/local/tmp/large.bin")
    assert not isinstance(large.value, AdbError)
    fake.drop_push_after_bytes = None
    assert not dev.sync.exists("/data/local/tmp/small.bin")  # adbd deletes a partial file
    assert not dev.sync.exists("/data/local/tmp/large.bin")
    assert fake.bytes_pushed == 0 and fake.bytes_received >= 2 * 64 * 1024
    assert dev.shell("echo still-here") == "still-here"


def test_disk_full(dev: adbutils.AdbDevice, server: FakeAdbServer) -> None:
    fake = server.device("R5CW30ABCDE")
    dev.sync.push(b"z" * 300_000, "/data/local/tmp/first.bin")
    fake.disk_quota_bytes = 500_000
    # adbutils reads only the 4-byte status and raises AdbError("FAIL") without the message
    with pytest.raises(AdbError, match="^FAIL$"):
        dev.sync.push(b"w" * 300_000, "/data/local/tmp/second.bin")
    assert not dev.sync.exists("/data/local/tmp/second.bin")
    assert dev.sync.push(b"v" * 100_000, "/data/local/tmp/third.bin") == 100_000  # still fits
    assert fake.pushes_completed == 2


def _raw_sync_send(port: int, serial: str, path: str, data: bytes) -> bytes:
    """SEND one file over a raw socket and return everything the server answered after DONE."""
    def request(sock: socket.socket, text: str) -> None:
        sock.sendall(f"{len(text):04x}{text}".encode())
        assert sock.recv(4) == b"OKAY"

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request(sock, f"host:transport:{serial}")
        request(sock, "sync:")
        spec = f"{path},{0o100644}".encode()
        sock.sendall(b"SEND" + struct.pack("<I", len(spec)) + spec)
        sock.sendall(b"DATA" + struct.pack("<I", len(data)) + data)
        sock.sendall(b"DONE" + struct.pack("<I", int(time.time())))
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
        return reply


def test_disk_full_wire_message(server: FakeAdbServer) -> None:
    server.device("R5CW30ABCDE").disk_quota_bytes = 1000
    reply = _raw_sync_send(server.port, "R5CW30ABCDE", "/data/local/tmp/big", b"q" * 5000)
    msg = b"write failed: No space left on device"
    assert reply == b"FAIL" + struct.pack("<I", len(msg)) + msg


def test_shell_v1_returns_partial_output_on_drop(dev: adbutils.AdbDevice, server: FakeAdbServer) -> None:
    server.device("R5CW30ABCDE").drop_shell_after_seconds = 0.3
    t0 = time.monotonic()
    assert dev.shell("echo start; sleep 5; echo end", timeout=10) == "start"  # silently partial
    assert time.monotonic() - t0 < 3
    # shell2 without v2 cannot find its exit marker in the partial output
    with pytest.raises(AdbError, match="shell output invalid"):
        dev.shell2("echo start; sleep 5; echo end", timeout=10)


def test_shell2_v2_raises_eoferror_on_drop(dev: adbutils.AdbDevice, server: FakeAdbServer) -> None:
    server.device("R5CW30ABCDE").drop_shell_after_seconds = 0.3
    with pytest.raises(EOFError) as err:
        dev.shell2("echo start; sleep 5; echo end", timeout=10, v2=True)
    assert not isinstance(err.value, AdbError)


def test_drop_after_printed_bytes(dev: adbutils.AdbDevice, server: FakeAdbServer) -> None:
    server.device("R5CW30ABCDE").drop_shell_after_bytes = 10
    assert dev.shell("seq 1 1000", rstrip=False) == "1\n2\n3\n4\n5\n"
    with pytest.raises(EOFError):
        dev.shell2("seq 1 1000", v2=True)


def test_a_redirected_background_command_survives_a_drop(dev: adbutils.AdbDevice,
                                                         server: FakeAdbServer) -> None:
    fake = server.device("R5CW30ABCDE")
    fake.drop_shell_after_seconds = 0.2
    dev.shell("nohup sh -c 'sleep 0.5; echo done > bg.txt' > /dev/null 2>&1 & sleep 3", timeout=10)
    fake.drop_shell_after_seconds = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and dev.shell("cat bg.txt 2>/dev/null") != "done":
        time.sleep(0.1)
    assert dev.shell("cat bg.txt") == "done"


def test_restart_closes_connections_and_renumbers_transports(dev: adbutils.AdbDevice,
                                                             client: adbutils.AdbClient,
                                                             server: FakeAdbServer) -> None:
    before = server.device("R5CW30ABCDE").transport_id
    stream = dev.shell("sleep 5; echo late", stream=True)
    server.restart()
    assert stream.read_until_close() == ""
    assert server.device("R5CW30ABCDE").transport_id != before
    assert dev.shell("echo alive") == "alive"
    assert client.list(extended=True)[0].transport_id == server.device("R5CW30ABCDE").transport_id


def test_restart_with_downtime_refuses_connections(client: adbutils.AdbClient,
                                                   server: FakeAdbServer) -> None:
    port = server.port
    t = threading.Thread(target=server.restart, kwargs={"downtime_s": 1.0})
    t.start()
    time.sleep(0.2)
    with pytest.raises(AdbConnectionError):  # after adbutils' `adb start-server` (here: `true`)
        client.server_version()
    t.join()
    assert server.port == port
    assert client.server_version() == 41


# --------------------------------------------------------------------------- stand-ins + parsers


def test_device_text_from_the_fake_parses(dev: adbutils.AdbDevice, server: FakeAdbServer) -> None:
    fake = server.device("R5CW30ABCDE")
    zones = parse_thermal_zones(dev.shell(THERMAL_ZONES_SHELL_CMD))
    assert {z.type: z.temp_c for z in zones} == pytest.approx(fake.thermal_c)
    assert parse_battery_temp(dev.shell("cat /sys/class/power_supply/battery/temp")) == pytest.approx(31.2)
    assert dev.battery().temperature == pytest.approx(31.2)  # adbutils' own dumpsys battery parser
    assert parse_meminfo_total_ram(dev.shell("cat /proc/meminfo")) == fake.mem_total_kb * 1024
    assert parse_devices_gles(dev.shell("dumpsys SurfaceFlinger")) == fake.gles
    fake.gles = None
    assert parse_devices_gles(dev.shell("dumpsys SurfaceFlinger")) is None
    fake.thermal_c = {"gpuss-0": 71.5}
    fake.battery_temp_c = 40.0
    assert [(z.type, z.temp_c) for z in parse_thermal_zones(dev.shell(THERMAL_ZONES_SHELL_CMD))] == [
        ("gpuss-0", 71.5)]
    assert parse_battery_temp(dev.shell("dumpsys battery")) == pytest.approx(40.0)


def test_dumpsys_meminfo_of_a_running_command(dev: adbutils.AdbDevice, server: FakeAdbServer) -> None:
    fake = server.device("R5CW30ABCDE")
    out = dev.shell("sleep 5 > /dev/null 2>&1 & pid=$!; dumpsys meminfo $pid; kill $pid")
    mem = parse_meminfo_graphics(out)
    kb = fake.meminfo_kb
    assert mem.gl_mtrack_kb == kb["GL mtrack"] and mem.egl_mtrack_kb == kb["EGL mtrack"]
    assert mem.graphics_kb == kb["GL mtrack"] + kb["EGL mtrack"] + kb["Gfx dev"]
    assert mem.process == "sleep"
    with pytest.raises(ParseError, match="no process"):
        parse_meminfo_graphics(dev.shell("dumpsys meminfo 1"))  # not a process of this device


def test_fake_phones_script_serves_phones_that_harness_devices_lists(tmp_path: Path) -> None:
    """scripts/fake_phones.py: the printed adb address reaches its phones; Ctrl-C stops it cleanly."""
    import re
    import signal
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, str(repo / "scripts" / "fake_phones.py"), "-n", "2", "--dir",
                             str(tmp_path / "fp")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        m = re.search(r"on 127\.0\.0\.1:(\d+)", first)
        assert m, first
        assert "--benchmark-model" in proc.stdout.readline()
        listed = subprocess.run([sys.executable, "-m", "harness", "devices", "--adb", f"127.0.0.1:{m[1]}"],
                                capture_output=True, text=True, timeout=120, cwd=repo,
                                env={**os.environ, "COLUMNS": "300"})
        assert listed.returncode == 0, listed.stderr
        assert "android:FAKE1" in listed.stdout and "android:FAKE2" in listed.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out
