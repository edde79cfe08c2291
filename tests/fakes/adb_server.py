"""A fake ADB server on loopback that speaks the real smart-socket protocol, for tests.

``adbutils.AdbClient(host="127.0.0.1", port=server.port)`` talks to it unchanged. What it speaks
(the requests as adbutils 2.12's client code sends them; the replies modeled on adb/adbd):

- Requests are 4 hex digits of length + payload; replies ``OKAY``, or ``FAIL`` + 4 hex digits of
  length + message. Host services: ``host:version``, ``host:devices``, ``host:devices-l``,
  ``host:track-devices``, ``host:kill``, ``host:transport:<serial>``, ``host:transport-any``,
  ``host:transport-id:<id>``, ``host:tport:serial:<serial>`` / ``host:tport:any`` (OKAY + the
  8-byte little-endian transport id), and ``host-serial:<serial>:<cmd>`` /
  ``host-transport-id:<id>:<cmd>`` with ``get-state``, ``get-serialno``, ``get-devpath``,
  ``features`` and ``wait-for-<transport>-<state>``.
- After a transport switch: ``shell:<cmd>`` (v1: stdout and stderr merged, raw, then close),
  ``shell,v2[,raw]:<cmd>`` (packets: 1 byte id (1 stdout, 2 stderr, 3 exit) + 4-byte LE length +
  data; the exit packet carries one byte) and ``sync:`` with ``STAT``, ``LIST`` (``DENT`` entries
  including ``.``/``..``, then ``DONE``), ``SEND`` (``path,mode``; ``DATA`` chunks; ``DONE`` +
  mtime; ``OKAY`` or ``FAIL`` + LE length + message), ``RECV`` (``DATA`` chunks + ``DONE``, or
  ``FAIL`` "open failed: No such file or directory") and ``QUIT``.

Fake devices and their sandbox
------------------------------
Each :class:`FakeDevice` has a sandbox root directory on this machine; the device path
``/data/local/tmp/x`` is ``root/data/local/tmp/x``. Sync requests map every absolute path into
the sandbox. Shell commands run for real under Android's userland (below; ``userland="host"``:
under ``/bin/sh`` with the host's tools after the stand-ins) with the working directory at the
mapped ``/data/local/tmp`` and ``PATH`` starting with ``root/system/bin``, which holds stand-ins
for ``getprop``, ``dumpsys`` (``SurfaceFlinger``, ``meminfo <pid|name>``, ``battery``), ``pm``
and ``taskset``. The command text is rewritten before it runs: absolute paths that begin with ``/data``,
``/sdcard``, ``/storage``, ``/sys/class/thermal``, ``/sys/class/power_supply``, ``/system/bin``
or ``/proc/meminfo`` (at the start of a word, after a quote, ``=``, ``:``, a redirection or a
shell operator) get the sandbox root in front; the root is removed again from everything the
command prints, so ``pwd`` prints ``/data/local/tmp``. The sandbox holds the sysfs files a phone
has: ``sys/class/thermal/thermal_zoneN/{type,temp}`` (millidegrees),
``sys/class/power_supply/battery/temp`` (tenths of a degree) and ``proc/meminfo``.

With ``FakeDevice(userland="android")`` (the default) a command
runs under Debian's ``mksh`` (Android's shell; ``$0`` is ``mksh``) with PATH holding only
``root/system/bin``: a link to Debian's ``toybox`` (Android's command set) for each applet it lists,
``sh`` -> mksh, and the stand-ins (getprop, dumpsys, pm, and taskset, which ignores the CPU mask: this
host's cores are not a phone's), so that a bash-ism or a GNU-only option fails as it does on a phone.
Sync also answers the v2 requests (``STA2``/``LST2`` stat, ``LIS2`` list with ``DNT2`` entries) that
Google's adb client sends to a device whose features list ``stat_v2``/``ls_v2``. The device services
live in :class:`DeviceServices`, shared with the TCP phone.

Limits of the path rewriting: a path assembled at run time (``d=/da; cat ${d}ta/x``), a path in
a file the command reads, or any other absolute path (``/``, ``/proc/self``, ``/dev/null`` is
fine) is not mapped and reaches the host as is. Commands run as the test's user, and nothing
stops them from touching the host outside the sandbox: run
only trusted commands.

Fault injection (per device, changeable at any time):
``state`` ("offline"/"unauthorized": listed so, transport requests FAIL with adb's messages),
``drop_push_after_bytes`` (close the connection once that many DATA bytes of one SEND arrived),
``drop_shell_after_seconds`` / ``drop_shell_after_bytes`` (close the connection while a shell
command runs), ``disk_quota_bytes`` (a SEND that would take the sandbox over this many bytes gets
``FAIL`` "write failed: No space left on device"), and :meth:`FakeAdbServer.restart` (every
connection closed; optionally not listening for a while). A dropped connection is closed the way
a vanished device closes it (FIN; unread data in the server's buffer makes the kernel send RST).
The command keeps running, as on a phone, until it writes to its closed output (SIGPIPE); a
command that redirects its output (``nohup cmd > log 2>&1 &``) survives. A partial SEND is
deleted, as adbd does. ``stop()`` kills every process group a shell started (background jobs
included) and removes the sandboxes it created.

Counters per device: ``bytes_received`` (every DATA byte of every SEND), ``bytes_pushed`` and
``pushes_completed`` (SENDs that ended with OKAY).

Keep ``ADBUTILS_ADB_PATH`` pointing at a harmless program in tests that stop the listener: when
adbutils cannot connect it runs ``adb start-server`` before retrying.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

__all__ = ["FakeDevice", "FakeAdbServer", "ADB_SERVER_VERSION"]

MKSH = "/usr/bin/mksh"  # Debian's mksh: Android's /system/bin/sh
TOYBOX = "/usr/bin/toybox"  # Debian's toybox: Android's command set
USERLANDS = ("host", "android")
ADB_SERVER_VERSION = 41  # 1.0.41: adbutils uses host:tport:serial: from 41 on
_SYNC_DATA_MAX = 64 * 1024
_FEATURES = "shell_v2,cmd,fixed_push_mkdir,fixed_push_symlink_timestamp"
_UNAUTHORIZED_MSG = (
    "device unauthorized.\n"
    "This adb server's $ADB_VENDOR_KEYS is not set\n"
    "Try 'adb kill-server' if that seems wrong.\n"
    "Otherwise check for a confirmation dialog on your device."
)

DEFAULT_PROPS: dict[str, str] = {
    "ro.product.manufacturer": "samsung",
    "ro.product.brand": "samsung",
    "ro.product.model": "SM-S918B",
    "ro.product.name": "dm3qxxx",
    "ro.product.device": "dm3q",
    "ro.product.cpu.abi": "arm64-v8a",
    "ro.board.platform": "kalama",
    "ro.hardware": "qcom",
    "ro.soc.manufacturer": "QTI",
    "ro.soc.model": "SM8550",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.build.fingerprint":
        "samsung/dm3qxxx/dm3q:14/UP1A.231005.007/S918BXXU3BWK5:user/release-keys",
    "ro.build.type": "user",
    "ro.harness.stand_in": "fake phone",  # not a real phone: reports label it (harness.standin)
}
DEFAULT_GLES = (
    "Qualcomm, Adreno (TM) 740, OpenGL ES 3.2 V@0615.65 (GIT@3d1a4c7f4e, I9b1b4d1e7f, 1689750853)"
    " (Date:07/19/23)"
)
DEFAULT_THERMAL_C = {
    "cpu-0-0-usr": 41.2, "cpu-1-0-usr": 43.9, "gpuss-0": 39.8, "gpuss-1": 40.1,
    "skin-msm-therm": 33.5, "battery": 31.2,
}

# Absolute device paths rewritten into the sandbox when they start a word of a shell command.
_REWRITE_RE = re.compile(
    r"(?<![^\s'\"=:(<>|;&`,])/(data|sdcard|storage|sys/class/thermal|sys/class/power_supply"
    r"|system/bin|proc/meminfo)(?=/|$|[\s'\";|&)<>`,*])"
)


@dataclass
class FakeDevice:
    """One fake phone: its state, properties, sandbox root and faults (all mutable at run time)."""

    serial: str
    state: str = "device"  # "device" | "offline" | "unauthorized"
    # "host": commands run under /bin/sh with this machine's tools on PATH after the stand-ins;
    # "android": under mksh (Android's shell) with only toybox's applets and the stand-ins on PATH
    userland: str = "android"
    props: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PROPS))
    root: Path | None = None  # None: the server makes a temporary one (removed on stop)
    gles: str | None = DEFAULT_GLES  # None: SurfaceFlinger dump without a GLES line
    thermal_c: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THERMAL_C))
    battery_temp_c: float = 31.2
    mem_total_kb: int = 11_597_696
    # PSS (KiB) that `dumpsys meminfo <pid>` reports for any process
    meminfo_kb: dict[str, int] = field(default_factory=lambda: {
        "Native Heap": 232_184, "Stack": 1_312, "Gfx dev": 4_520, "Other dev": 24,
        ".so mmap": 18_842, "Other mmap": 1_740_012, "EGL mtrack": 2_048, "GL mtrack": 812_544,
        "Unknown": 3_480,
    })
    # faults
    drop_push_after_bytes: int | None = None
    drop_shell_after_seconds: float | None = None
    drop_shell_after_bytes: int | None = None
    disk_quota_bytes: int | None = None
    # counters (read them; the server updates them)
    bytes_received: int = 0
    bytes_pushed: int = 0
    pushes_completed: int = 0
    transport_id: int = 0

    def __post_init__(self) -> None:
        if self.userland not in USERLANDS:
            raise ValueError(f"unknown userland {self.userland!r}; known: {', '.join(USERLANDS)}")
        self._lock = threading.Lock()
        self._synced = ""
        self._owns_root = self.root is None
        if self.root is not None:
            self.root = Path(self.root)

    # ---- sandbox

    def host_path(self, device_path: str) -> Path:
        """The sandbox path of an absolute device path (relative ones are under /data/local/tmp)."""
        assert self.root is not None, "the device is not attached to a server yet"
        if not device_path.startswith("/"):
            device_path = "/data/local/tmp/" + device_path
        parts = [p for p in device_path.split("/") if p not in ("", ".")]
        clean: list[str] = []
        for part in parts:
            if part == "..":
                if clean:
                    clean.pop()
            else:
                clean.append(part)
        return self.root.joinpath(*clean) if clean else self.root

    def _prepare(self) -> None:
        """Create the sandbox tree, the stand-in executables and the sysfs/proc files."""
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix=f"fakeadb-{self.serial}-"))
        self.root = self.root.resolve()
        for d in ("data/local/tmp", "sdcard", "system/bin", "proc", ".fake_adb"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        _write_standins(self.root / "system/bin")
        if self.userland == "android":
            _link_toybox(self.root / "system/bin")
        self.sync_files()

    def sync_files(self) -> None:
        """Write the device's current props/thermal/battery/meminfo into its sandbox.

        Runs before every shell command; rewrites the files only when something changed."""
        assert self.root is not None
        snapshot = json.dumps([self.props, self.gles, self.meminfo_kb, self.battery_temp_c,
                               self.thermal_c, self.mem_total_kb], sort_keys=True)
        with self._lock:
            if snapshot == self._synced:
                return
            self._synced = snapshot
            state_dir = self.root / ".fake_adb"
            props = "".join(f"[{k}]: [{v}]\n" for k, v in sorted(self.props.items()))
            _atomic_write(state_dir / "props.txt", props)
            _atomic_write(state_dir / "state.json", json.dumps({
                "serial": self.serial, "gles": self.gles, "meminfo_kb": self.meminfo_kb,
                "battery_temp_c": self.battery_temp_c, "root": str(self.root),
            }))
            thermal = self.root / "sys/class/thermal"
            if thermal.exists():
                shutil.rmtree(thermal)
            for i, (ztype, temp_c) in enumerate(self.thermal_c.items()):
                zone = thermal / f"thermal_zone{i}"
                zone.mkdir(parents=True, exist_ok=True)
                (zone / "type").write_text(ztype + "\n")
                (zone / "temp").write_text(f"{round(temp_c * 1000)}\n")
            battery = self.root / "sys/class/power_supply/battery"
            battery.mkdir(parents=True, exist_ok=True)
            (battery / "temp").write_text(f"{round(self.battery_temp_c * 10)}\n")
            (battery / "capacity").write_text("87\n")
            _atomic_write(self.root / "proc/meminfo", _proc_meminfo(self.mem_total_kb))

    def disk_usage_bytes(self) -> int:
        """Bytes of regular files in the sandbox (what the disk quota counts), stand-ins and
        sysfs/proc files excluded."""
        assert self.root is not None
        total = 0
        skip = {self.root / "system", self.root / ".fake_adb", self.root / "sys",
                self.root / "proc"}
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) in skip:
                dirnames[:] = []
                continue
            for name in filenames:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
        return total

    def rewrite_command(self, cmd: str) -> str:
        assert self.root is not None
        root = str(self.root)
        return _REWRITE_RE.sub(lambda m: root + m.group(0), cmd)

    def shell_program(self) -> tuple[str, str]:
        """(argv[0], executable) of the shell that runs every command: Android's mksh, or /bin/sh."""
        return ("mksh", MKSH) if self.userland == "android" else ("/bin/sh", "/bin/sh")

    def shell_env(self) -> dict[str, str]:
        assert self.root is not None
        tmp = str(self.root / "data/local/tmp")
        bindir = str(self.root / "system/bin")
        return {
            "PATH": bindir if self.userland == "android"
            else f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": tmp,
            "TMPDIR": tmp,
            "FAKE_ADB_STATE": str(self.root / ".fake_adb"),
            "LANG": "C.UTF-8",
        }

    def _count(self, received: int = 0, pushed: int = 0, completed: int = 0) -> None:
        with self._lock:
            self.bytes_received += received
            self.bytes_pushed += pushed
            self.pushes_completed += completed


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _proc_meminfo(total_kb: int) -> str:
    free = total_kb // 9
    avail = total_kb * 4 // 10
    rows = [("MemTotal", total_kb), ("MemFree", free), ("MemAvailable", avail),
            ("Buffers", 6_112), ("Cached", total_kb // 4), ("SwapCached", 21_904),
            ("Active", total_kb // 5), ("Inactive", total_kb // 6), ("SwapTotal", 8_388_604),
            ("SwapFree", 6_291_452), ("Dirty", 1_120), ("AnonPages", total_kb // 6),
            ("Mapped", total_kb // 10), ("Shmem", 61_340), ("KernelStack", 93_120),
            ("PageTables", 181_004), ("VmallocTotal", 263_061_440), ("CmaTotal", 204_800)]
    return "".join(f"{name + ':':<16}{value:>8} kB\n" for name, value in rows)


_GETPROP_PY = r'''
# fake getprop: all properties, or one (its default, else an empty line, when unset, like Android's)
import os, sys

text = open(os.path.join(os.environ["FAKE_ADB_STATE"], "props.txt")).read()
if len(sys.argv) < 2:
    sys.stdout.write(text)
    sys.exit(0)
prefix = "[%s]: [" % sys.argv[1]
for line in text.splitlines():
    if line.startswith(prefix) and line.endswith("]"):
        print(line[len(prefix):-1])
        break
else:
    print(sys.argv[2] if len(sys.argv) > 2 else "")
'''

_PM_PY = r'''
# fake pm: `pm list packages` lists a few system packages; anything else is not known here
import sys

PACKAGES = ["android", "com.android.shell", "com.android.systemui"]
if sys.argv[1:3] == ["list", "packages"]:
    for name in PACKAGES:
        print("package:" + name)
    sys.exit(0)
sys.stderr.write("pm (stand-in): only `pm list packages` is implemented\n")
sys.exit(1)
'''

_TASKSET_SH = r"""#!/bin/sh
# fake taskset: accepts toybox's "taskset [-ap] MASK [PID | CMD [ARG...]]", ignores the mask
while [ $# -gt 0 ]; do case "$1" in -*) shift;; *) break;; esac; done
mask="$1"; shift
if [ $# -eq 0 ]; then echo "taskset: Need 1 argument" >&2; exit 1; fi
case "$1" in *[!0-9]*) exec "$@";; *) echo "pid $1's current affinity mask: $mask"; exit 0;; esac
"""

_DUMPSYS_PY = r'''
import json, os, sys

state = json.load(open(os.path.join(os.environ["FAKE_ADB_STATE"], "state.json")))
ROOT = state["root"]
HEAP = "%13s %8s %8s %8s %8s %8s %8s %8s %8s"


def row(*cols):
    print(HEAP % cols)


def on_this_device(pid):
    """Only processes started by this fake device's shells (they inherit FAKE_ADB_STATE)."""
    try:
        env = open("/proc/%s/environ" % pid, "rb").read().split(b"\0")
    except OSError:
        return False
    return ("FAKE_ADB_STATE=" + os.environ["FAKE_ADB_STATE"]).encode() in env


def find_pid(arg):
    if arg.isdigit():
        return int(arg) if on_this_device(arg) else None
    for entry in sorted(os.listdir("/proc")):
        if not entry.isdigit() or not on_this_device(entry):
            continue
        try:
            argv0 = open("/proc/%s/cmdline" % entry, "rb").read().split(b"\0")[0].decode()
        except OSError:
            continue
        if argv0 and (argv0 == arg or os.path.basename(argv0) == arg):
            return int(entry)
    return None


def meminfo(args):
    names = [a for a in args if not a.startswith("-")]
    if not names:
        print("Applications Memory Usage (in Kilobytes):")
        print("Total RAM: (fake) dumpsys meminfo needs a pid or a process name")
        return 0
    pid = find_pid(names[0])
    if pid is None:
        print("No process found for: %s" % names[0])
        return 0
    try:
        argv0 = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")[0].decode()
    except OSError:
        argv0 = "?"
    name = argv0.replace(ROOT, "")
    kb = state["meminfo_kb"]
    print("Applications Memory Usage (in Kilobytes):")
    print("Uptime: 8613312 Realtime: 8613312")
    print("")
    print("** MEMINFO in pid %d [%s] **" % (pid, name))
    row("", "Pss", "Private", "Private", "SwapPss", "Rss", "Heap", "Heap", "Heap")
    row("", "Total", "Dirty", "Clean", "Dirty", "Total", "Size", "Alloc", "Free")
    row("", *(["------"] * 8))
    native = kb.get("Native Heap", 0)
    row("Native Heap", native, native, 0, 0, native + 2048, native + 8192, native, 8192)
    row("Dalvik Heap", 0, 0, 0, 0, 0, 0, 0, 0)
    other = ["Stack", "Ashmem", "Gfx dev", "Other dev", ".so mmap", ".jar mmap", ".apk mmap",
             ".ttf mmap", ".dex mmap", ".oat mmap", ".art mmap", "Other mmap", "EGL mtrack",
             "GL mtrack", "Other mtrack"]
    total = native
    for label in other:
        v = kb.get(label, 0)
        if v:
            clean = v if label.endswith("mmap") else 0
            row(label, v, v - clean, clean, 0, v, "", "", "")
            total += v
    unknown = kb.get("Unknown", 0)
    row("Unknown", unknown, unknown, 0, 0, unknown, "", "", "")
    total += unknown
    row("TOTAL", total, total, 0, 0, total + 2048, native + 8192, native, 8192)
    graphics = kb.get("Gfx dev", 0) + kb.get("EGL mtrack", 0) + kb.get("GL mtrack", 0)
    code = kb.get(".so mmap", 0)
    print(" ")
    print(" App Summary")
    print("%21s %8s %21s %8s" % ("", "Pss(KB)", "", "Rss(KB)"))
    print("%21s %8s %21s %8s" % ("", "------", "", "------"))
    print("%21s %8d %21s %8d" % ("Java Heap:", 0, "", 0))
    print("%21s %8d %21s %8d" % ("Native Heap:", native, "", native + 2048))
    print("%21s %8d %21s %8d" % ("Code:", code, "", code))
    print("%21s %8d %21s %8d" % ("Stack:", kb.get("Stack", 0), "", kb.get("Stack", 0)))
    print("%21s %8d %21s %8d" % ("Graphics:", graphics, "", graphics))
    print("%21s %8d" % ("Private Other:", total - native - code - kb.get("Stack", 0) - graphics))
    print("%21s %8d" % ("System:", 0))
    print("%21s %8s %21s %8d" % ("Unknown:", "", "", unknown))
    print(" ")
    print("%21s %8d %21s %8d %21s %8d" % ("TOTAL PSS:", total, "TOTAL RSS:", total + 2048,
                                         "TOTAL SWAP PSS:", 0))
    return 0


def surfaceflinger():
    print("Build configuration: [sf PRESENT_TIME_OFFSET=0 FORCE_HWC_FOR_RBG_TO_YUV=1 "
          "MAX_VIRT_DISPLAY_DIM=4096 RUNNING_WITHOUT_SYNC_FRAMEWORK=0 "
          "NUM_FRAMEBUFFER_SURFACE_BUFFERS=3]")
    print("")
    print("Display identification data:")
    print('Display 4619827259835644672 (HWC display 0): port=0 pnpId=QCM displayName=""')
    print("")
    print("Wide-Color information:")
    print("Device supports wide color: 1")
    print("Device uses color management: 1")
    print("DisplayColorSetting: Managed")
    print("")
    print("Sync configuration: [using: EGL_ANDROID_native_fence_sync EGL_KHR_wait_sync]")
    print("")
    print("Scheduler:")
    print("  refresh rate: 120.00 Hz")
    print("")
    if state["gles"]:
        print("GLES: %s" % state["gles"])
    print("RenderEngine supports protected context: 1")
    print("RenderEngine is in protected context: 0")
    return 0


def battery():
    t = int(round(state["battery_temp_c"] * 10))
    lines = ["AC powered: false", "USB powered: true", "Wireless powered: false",
             "Dock powered: false", "Max charging current: 500000",
             "Max charging voltage: 5000000", "Charge counter: 4104000", "status: 2",
             "health: 2", "present: true", "level: 87", "scale: 100", "voltage: 4312",
             "temperature: %d" % t, "technology: Li-ion"]
    print("Current Battery Service state:")
    for line in lines:
        print("  " + line)
    return 0


def main(argv):
    if not argv:
        print("Currently running services:")
        for s in ("SurfaceFlinger", "battery", "meminfo"):
            print("  " + s)
        return 0
    service, rest = argv[0], argv[1:]
    if service == "meminfo":
        return meminfo(rest)
    if service == "SurfaceFlinger":
        return surfaceflinger()
    if service == "battery":
        return battery()
    sys.stderr.write("Can't find service: %s\n" % service)
    return 0


sys.exit(main(sys.argv[1:]))
'''


def _write_standins(bindir: Path) -> None:
    scripts = {
        "getprop": f"#!{sys.executable}\n" + _GETPROP_PY,
        "pm": f"#!{sys.executable}\n" + _PM_PY,
        "taskset": _TASKSET_SH,
        "dumpsys": f"#!{sys.executable}\n" + _DUMPSYS_PY,
    }
    for name, text in scripts.items():
        path = bindir / name
        path.write_text(text)
        path.chmod(0o755)


def toybox_applets(toybox: str = TOYBOX) -> list[str]:
    """The applets this toybox binary provides (`toybox` with no arguments lists them)."""
    out = subprocess.run([toybox], capture_output=True, text=True, check=True).stdout
    return [name for name in out.split() if name != "toybox"]


def _link_toybox(bindir: Path) -> None:
    """Android's /system/bin: a link to toybox for each applet, `sh` = mksh; the stand-ins stay."""
    if not (os.access(MKSH, os.X_OK) and os.access(TOYBOX, os.X_OK)):
        raise RuntimeError(f"the Android userland needs {MKSH} and {TOYBOX}: "
                           "apt-get install -y mksh toybox (Debian's packages of Android's shell and tools)")
    standins = {p.name for p in bindir.iterdir()}
    for name in toybox_applets():
        if name not in standins:
            link = bindir / name
            if not link.is_symlink():
                link.symlink_to(TOYBOX)
    if not (bindir / "sh").is_symlink():
        (bindir / "sh").symlink_to(MKSH)


# --------------------------------------------------------------------------- wire helpers


class _Dropped(Exception):
    """The connection is gone (the peer closed it, or a fault closed it)."""


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = conn.recv(n - len(buf))
        except OSError as e:
            raise _Dropped(str(e)) from e
        if not chunk:
            raise _Dropped("peer closed")
        buf += chunk
    return bytes(buf)


def _send(conn: socket.socket, data: bytes) -> None:
    try:
        conn.sendall(data)
    except OSError as e:
        raise _Dropped(str(e)) from e


def _okay(conn: socket.socket) -> None:
    _send(conn, b"OKAY")


def _fail(conn: socket.socket, message: str) -> None:
    data = message.encode()
    _send(conn, b"FAIL" + f"{len(data):04x}".encode() + data)


def _string_block(conn: socket.socket, text: str) -> None:
    data = text.encode()
    _send(conn, f"{len(data):04x}".encode() + data)


def _read_request(conn: socket.socket) -> str | None:
    try:
        head = _recv_exact(conn, 4)
    except _Dropped:
        return None
    try:
        size = int(head, 16)
    except ValueError:
        raise _Dropped(f"bad request length {head!r}") from None
    return _recv_exact(conn, size).decode("utf-8", errors="replace")


def _drop(conn: socket.socket) -> None:
    """Close a connection like a vanished device: FIN (RST if unread data is pending)."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


_STAT_V2_SIZE = 8 + 8 + 4 * 4 + 8 * 4  # dev ino mode nlink uid gid size atime mtime ctime


def _stat_v2(st: os.stat_result) -> bytes:
    return struct.pack("<QQIIIIQqqq", st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid,
                       st.st_gid, st.st_size, int(st.st_atime), int(st.st_mtime), int(st.st_ctime))


class _Unrooter:
    """Removes the sandbox root from streamed output, across chunk boundaries."""

    def __init__(self, root: str):
        self.needle = root.encode()
        self.pending = b""

    def feed(self, data: bytes) -> bytes:
        buf = (self.pending + data).replace(self.needle, b"")
        keep = 0
        for k in range(min(len(self.needle) - 1, len(buf)), 0, -1):
            if self.needle.startswith(buf[-k:]):
                keep = k
                break
        self.pending = buf[len(buf) - keep:] if keep else b""
        return buf[: len(buf) - keep] if keep else buf

    def flush(self) -> bytes:
        out, self.pending = self.pending, b""
        return out


# --------------------------------------------------------------------------- the server


class DeviceServices:
    """adbd's device services over one byte stream per service (``shell[,v2][,raw]:``, ``sync:``).

    Shared by the fake adb server (a smart socket after ``host:transport``) and the fake phone that
    speaks adbd's transport protocol (tests/fakes/adbd.py: one stream per OPEN). A service first
    writes ``OKAY`` or ``FAIL`` + 4 hex digits + message, as the adb server does to its client; the
    phone turns that into the transport's OKAY or CLSE."""

    def _init_services(self) -> None:
        self._lock = threading.RLock()
        self._pgids: set[int] = set()  # every shell's process group, killed on stop()
        self.requests: list[tuple[str | None, str]] = []  # (serial or None, request)

    def _vanish(self, conn: socket.socket) -> None:
        """A fault: the device vanishes while `conn` serves it (here: that connection closes)."""
        _drop(conn)

    def _kill_shells(self) -> None:
        with self._lock:
            pgids = list(self._pgids)
            self._pgids.clear()
        for pgid in pgids:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _device_service(self, conn: socket.socket, dev: FakeDevice, service: str) -> None:
        if service == "sync:":
            _okay(conn)
            self._sync(conn, dev)
            return
        m = re.match(r"^shell((?:,[^,:]*)*):(.*)$", service, re.DOTALL)  # v2, raw, pty, TERM=..
        if m:
            options = [o for o in m.group(1).split(",") if o]
            command = m.group(2)
            if not command:
                _fail(conn, "interactive shells are not supported by the fake adb server")
                return
            if "pty" in options:
                _fail(conn, "pty shells are not supported by the fake adb server")
                return
            _okay(conn)
            self._shell(conn, dev, command, v2="v2" in options)
            return
        _fail(conn, f"unknown device service '{service}' (not implemented by the fake adb server)")

    def _shell(self, conn: socket.socket, dev: FakeDevice, command: str, v2: bool) -> None:
        dev.sync_files()
        assert dev.root is not None
        cwd = dev.root / "data/local/tmp"
        argv0, shell = dev.shell_program()
        proc = subprocess.Popen(
            [argv0, "-c", dev.rewrite_command(command)], executable=shell,
            cwd=cwd, env=dev.shell_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE if v2 else subprocess.STDOUT,
            start_new_session=True,
        )
        with self._lock:
            self._pgids.add(proc.pid)
        root = str(dev.root)
        streams = {proc.stdout.fileno(): (1, _Unrooter(root))}  # type: ignore[union-attr]
        if v2:
            streams[proc.stderr.fileno()] = (2, _Unrooter(root))  # type: ignore[union-attr]
        sel = selectors.DefaultSelector()
        for fd in streams:
            sel.register(fd, selectors.EVENT_READ)
        started = time.monotonic()
        sent = 0
        dropped = False

        def emit(stream_id: int, data: bytes) -> None:
            nonlocal sent, dropped
            if not data:
                return
            limit = dev.drop_shell_after_bytes
            if limit is not None and sent + len(data) >= limit:
                data = data[: max(0, limit - sent)]
                dropped = True
            if data:
                _send(conn, struct.pack("<BI", stream_id, len(data)) + data if v2 else data)
                sent += len(data)

        try:
            open_fds = set(streams)
            while open_fds and not dropped:
                if self._client_gone(conn):
                    raise _Dropped("the client closed the shell connection")
                timeout = None
                if dev.drop_shell_after_seconds is not None:
                    timeout = max(0.0, started + dev.drop_shell_after_seconds - time.monotonic())
                    if timeout == 0.0:
                        dropped = True
                        break
                for key, _ in sel.select(timeout=timeout if timeout is not None else 0.2):
                    fd = key.fd
                    data = os.read(fd, 65536)
                    stream_id, unrooter = streams[fd]
                    if not data:
                        emit(stream_id, unrooter.flush())
                        sel.unregister(fd)
                        open_fds.discard(fd)
                    else:
                        emit(stream_id, unrooter.feed(data))
                    if dropped:
                        break
            if dropped:
                self._abandon(proc)
                self._vanish(conn)
                return
            code = proc.wait()  # its process group stays listed: `cmd &` may still run in it
            if code < 0:
                code = 128 - code
            if v2:
                _send(conn, struct.pack("<BI", 3, 1) + bytes([code & 0xFF]))
        except _Dropped:
            self._abandon(proc)
            raise
        finally:
            sel.close()

    @staticmethod
    def _client_gone(conn: socket.socket) -> bool:
        """True when the client (or restart()/stop()) closed the connection. Bytes the client
        sends during a shell (shell v2 stdin packets) are discarded."""
        if conn.fileno() == -1:
            return True
        try:
            data = conn.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        return not data

    def _abandon(self, proc: subprocess.Popen[bytes]) -> None:
        """The connection is gone: close our ends of the command's pipes and reap it later."""
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

        threading.Thread(target=proc.wait, daemon=True, name="fakeadb-reap").start()

    # ---- sync

    def _sync(self, conn: socket.socket, dev: FakeDevice) -> None:
        while True:
            try:
                head = _recv_exact(conn, 8)
            except _Dropped:
                return
            cmd, size = head[:4], struct.unpack("<I", head[4:])[0]
            if cmd == b"QUIT":
                return
            arg = _recv_exact(conn, size).decode("utf-8", errors="replace")
            self.requests.append((dev.serial, f"sync:{cmd.decode(errors='replace')} {arg}"))
            if cmd == b"STAT":
                self._sync_stat(conn, dev, arg)
            elif cmd in (b"STA2", b"LST2"):  # features stat_v2: stat() / lstat()
                self._sync_stat_v2(conn, dev, arg, cmd, follow=cmd == b"STA2")
            elif cmd == b"LIST":
                self._sync_list(conn, dev, arg)
            elif cmd == b"LIS2":  # feature ls_v2
                self._sync_list(conn, dev, arg, v2=True)
            elif cmd == b"RECV":
                self._sync_recv(conn, dev, arg)
            elif cmd == b"SEND":
                if not self._sync_send(conn, dev, arg):
                    return
            else:
                msg = f"unknown sync command {cmd!r}".encode()
                _send(conn, b"FAIL" + struct.pack("<I", len(msg)) + msg)
                return

    def _sync_stat(self, conn: socket.socket, dev: FakeDevice, path: str) -> None:
        try:
            st = os.lstat(dev.host_path(path))
            payload = struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))
        except OSError:
            payload = struct.pack("<III", 0, 0, 0)  # adbd answers a missing path with zeros
        _send(conn, b"STAT" + payload)

    def _sync_stat_v2(self, conn: socket.socket, dev: FakeDevice, path: str, cmd: bytes,
                      follow: bool) -> None:
        """SYNC.TXT's sync_stat_v2: id, error (errno), dev, ino, mode, nlink, uid, gid, size, atime,
        mtime, ctime."""
        try:
            host = dev.host_path(path)
            st = os.stat(host) if follow else os.lstat(host)
            _send(conn, cmd + struct.pack("<I", 0) + _stat_v2(st))
        except OSError as e:
            _send(conn, cmd + struct.pack("<I", e.errno or 2) + bytes(_STAT_V2_SIZE))

    def _sync_list(self, conn: socket.socket, dev: FakeDevice, path: str, v2: bool = False) -> None:
        host = dev.host_path(path)
        out = bytearray()
        try:
            names = [".", ".."] + sorted(os.listdir(host))
        except OSError:
            names = []
        for name in names:
            try:
                st = os.lstat(host / name)
            except OSError:
                continue
            raw = name.encode()
            if v2:
                out += b"DNT2" + struct.pack("<I", 0) + _stat_v2(st) + struct.pack("<I", len(raw)) + raw
            else:
                out += b"DENT" + struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF,
                                             int(st.st_mtime), len(raw)) + raw
        out += b"DONE" + bytes(4 + _STAT_V2_SIZE + 4 if v2 else 16)
        _send(conn, bytes(out))

    def _sync_recv(self, conn: socket.socket, dev: FakeDevice, path: str) -> None:
        host = dev.host_path(path)
        try:
            if host.is_dir():
                raise IsADirectoryError(21, "Is a directory")
            f = open(host, "rb")
        except OSError as e:
            msg = f"open failed: {e.strerror or e}".encode()
            _send(conn, b"FAIL" + struct.pack("<I", len(msg)) + msg)
            return
        with f:
            while chunk := f.read(_SYNC_DATA_MAX):
                _send(conn, b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        _send(conn, b"DONE" + bytes(4))

    def _sync_send(self, conn: socket.socket, dev: FakeDevice, spec: str) -> bool:
        """Receive one file. Returns False when the connection must close (after a FAIL)."""
        path, _, mode_text = spec.rpartition(",")
        if not path:
            path, mode_text = spec, "33188"
        mode = int(mode_text) & 0o7777 or 0o644
        dest = dev.host_path(path)
        usage = dev.disk_usage_bytes() - (dest.stat().st_size if dest.is_file() else 0)
        error: str | None = None
        received = 0
        fault = False
        f = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists() and not dest.is_file():
                raise IsADirectoryError(21, "Is a directory")
            f = open(dest, "wb")
        except OSError as e:
            error = f"couldn't create file: {e.strerror or e}"
        try:
            while True:
                head = _recv_exact(conn, 8)
                kind, size = head[:4], struct.unpack("<I", head[4:])[0]
                if kind == b"DONE":
                    mtime = size
                    break
                if kind != b"DATA":
                    error = error or f"invalid data message {kind!r}"
                    break
                data = _recv_exact(conn, size)
                received += len(data)
                dev._count(received=len(data))
                limit = dev.drop_push_after_bytes
                if limit is not None and received >= limit:
                    fault = True
                    raise _Dropped("fault: drop mid-push")
                if error is None and f is not None:
                    quota = dev.disk_quota_bytes
                    if quota is not None and usage + received > quota:
                        error = "write failed: No space left on device"
                        msg = error.encode()
                        # adbd reports at once, then keeps reading until the client's DONE
                        _send(conn, b"FAIL" + struct.pack("<I", len(msg)) + msg)
                        f.close()
                        f = None
                        dest.unlink(missing_ok=True)
                    else:
                        f.write(data)
        except _Dropped:
            if f is not None:
                f.close()
            dest.unlink(missing_ok=True)
            if fault:
                self._vanish(conn)
            else:
                _drop(conn)
            raise
        if error is not None:
            if f is not None:
                f.close()
                dest.unlink(missing_ok=True)
            if "No space left" not in error:
                msg = error.encode()
                _send(conn, b"FAIL" + struct.pack("<I", len(msg)) + msg)
            return False
        assert f is not None
        f.close()
        os.chmod(dest, mode)
        os.utime(dest, (mtime, mtime))
        dev._count(pushed=received, completed=1)
        _send(conn, b"OKAY" + bytes(4))
        return True


class FakeAdbServer(DeviceServices):
    """A threaded fake adb server on 127.0.0.1. Use as a context manager, or start()/stop()."""

    def __init__(self, devices: Iterable[FakeDevice] = (), host: str = "127.0.0.1",
                 port: int = 0, version: int = ADB_SERVER_VERSION):
        self.host = host
        self.version = version
        self._requested_port = port
        self._port: int | None = None
        self._devices: dict[str, FakeDevice] = {}
        self._next_transport_id = 1
        self._init_services()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._owned_roots: list[Path] = []
        self._stopping = threading.Event()
        for dev in devices:
            self.add_device(dev)

    # ---- lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake adb server is not started")
        return self._port

    def start(self) -> "FakeAdbServer":
        self._stopping.clear()
        self._listen(self._requested_port)
        return self

    def stop(self) -> None:
        """Stop listening, close every connection, kill leftover commands, remove temp roots."""
        self._stopping.set()
        self._close_listener()
        self._close_connections()
        self._kill_shells()
        for t in list(self._threads):
            t.join(timeout=5)
        with self._lock:
            roots, self._owned_roots = self._owned_roots, []
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> "FakeAdbServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart(self, downtime_s: float = 0.0) -> None:
        """Simulate an adb server restart: close every connection and give devices new transport
        ids; with ``downtime_s`` > 0 the port refuses connections for that long (this call
        blocks), then listens again on the same port."""
        if downtime_s > 0:
            self._close_listener()
        self._close_connections()
        with self._lock:
            for dev in self._devices.values():
                dev.transport_id = self._new_transport_id()
        if downtime_s > 0:
            time.sleep(downtime_s)
            self._listen(self.port)

    # ---- devices

    def add_device(self, dev: FakeDevice) -> FakeDevice:
        with self._lock:
            if dev.serial in self._devices:
                raise ValueError(f"a fake device {dev.serial!r} is already attached")
            dev._prepare()
            if dev._owns_root and dev.root is not None:
                self._owned_roots.append(dev.root)
            dev.transport_id = self._new_transport_id()
            self._devices[dev.serial] = dev
        return dev

    def remove_device(self, serial: str) -> FakeDevice:
        """Detach a device (as if unplugged); its sandbox is kept until stop()."""
        with self._lock:
            return self._devices.pop(serial)

    def device(self, serial: str) -> FakeDevice:
        return self._devices[serial]

    @property
    def devices(self) -> list[FakeDevice]:
        with self._lock:
            return list(self._devices.values())

    def _new_transport_id(self) -> int:
        tid = self._next_transport_id
        self._next_transport_id += 1
        return tid

    # ---- sockets

    def _listen(self, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, port))
        sock.listen(64)
        self._port = sock.getsockname()[1]
        self._listener = sock
        t = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True,
                             name=f"fakeadb-accept-{self._port}")
        self._accept_thread = t
        t.start()

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None

    def _close_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            _drop(conn)

    def _accept_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if self._stopping.is_set():
                conn.close()
                return
            with self._lock:
                self._conns.add(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                 name="fakeadb-conn")
            with self._lock:
                self._threads.add(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        except _Dropped:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())
            _drop(conn)

    # ---- host services

    def _lookup(self, conn: socket.socket, serial: str | None = None,
                transport_id: int | None = None, any_state: bool = False) -> FakeDevice | None:
        """Find a device for a transport request; reply FAIL (and return None) like adb does."""
        with self._lock:
            devices = list(self._devices.values())
        if serial is not None:
            found = [d for d in devices if d.serial == serial]
            if not found:
                _fail(conn, f"device '{serial}' not found")
                return None
        elif transport_id is not None:
            found = [d for d in devices if d.transport_id == transport_id]
            if not found:
                _fail(conn, f"no device with transport id '{transport_id}'")
                return None
        else:
            found = devices
            if not found:
                _fail(conn, "no devices/emulators found")
                return None
            if len(found) > 1:
                _fail(conn, "more than one device/emulator")
                return None
        dev = found[0]
        if not any_state:
            if dev.state == "offline":
                _fail(conn, "device offline")
                return None
            if dev.state == "unauthorized":
                _fail(conn, _UNAUTHORIZED_MSG)
                return None
            if dev.state != "device":
                _fail(conn, f"device still {dev.state}")
                return None
        return dev

    def _split_serial(self, rest: str) -> tuple[str, str]:
        """'SERIAL:cmd' where SERIAL may itself hold ':' (host:port serials)."""
        with self._lock:
            serials = sorted(self._devices, key=len, reverse=True)
        for serial in serials:
            if rest.startswith(serial + ":"):
                return serial, rest[len(serial) + 1:]
        serial, _, cmd = rest.rpartition(":")
        return serial, cmd

    def _handle(self, conn: socket.socket) -> None:
        req = _read_request(conn)
        if req is None:
            return
        self.requests.append((None, req))
        dev: FakeDevice | None = None
        if req == "host:version":
            _okay(conn)
            _string_block(conn, f"{self.version:04x}")
            return
        if req in ("host:devices", "host:devices-l"):
            _okay(conn)
            _string_block(conn, self._device_list(long=req.endswith("-l")))
            return
        if req == "host:track-devices":
            self._track_devices(conn)
            return
        if req == "host:kill":
            _okay(conn)
            threading.Thread(target=self.stop, daemon=True).start()
            return
        if req.startswith("host:transport:"):
            dev = self._lookup(conn, serial=req[len("host:transport:"):])
            if dev:
                _okay(conn)
        elif req in ("host:transport-any", "host:transport-usb", "host:transport-local"):
            dev = self._lookup(conn)
            if dev:
                _okay(conn)
        elif req.startswith("host:transport-id:"):
            dev = self._lookup(conn, transport_id=int(req.rsplit(":", 1)[1]))
            if dev:
                _okay(conn)
        elif req.startswith("host:tport:"):
            what = req[len("host:tport:"):]
            dev = (self._lookup(conn, serial=what[len("serial:"):]) if what.startswith("serial:")
                   else self._lookup(conn))
            if dev:
                _okay(conn)
                _send(conn, struct.pack("<Q", dev.transport_id))
        elif req.startswith("host-serial:") or req.startswith("host-transport-id:"):
            self._host_device_command(conn, req)
            return
        else:
            _fail(conn, f"unknown host service '{req}' (not implemented by the fake adb server)")
            return
        if dev is None:
            return
        service = _read_request(conn)
        if service is None:
            return
        self.requests.append((dev.serial, service))
        self._device_service(conn, dev, service)

    def _device_list(self, long: bool) -> str:
        lines = []
        for dev in self.devices:
            if not long:
                lines.append(f"{dev.serial}\t{dev.state}\n")
                continue
            extra = ""
            if dev.state == "device":
                model = dev.props.get("ro.product.model", "").replace(" ", "_")
                extra = (f" product:{dev.props.get('ro.product.name', '')} model:{model}"
                         f" device:{dev.props.get('ro.product.device', '')}")
            lines.append(f"{dev.serial:<22} {dev.state}{extra} transport_id:{dev.transport_id}\n")
        return "".join(lines)

    def _track_devices(self, conn: socket.socket) -> None:
        _okay(conn)
        last = None
        while not self._stopping.is_set() and conn.fileno() != -1:  # -1: closed by restart()
            current = self._device_list(long=False)
            if current != last:
                _string_block(conn, current)
                last = current
            time.sleep(0.05)

    def _host_device_command(self, conn: socket.socket, req: str) -> None:
        if req.startswith("host-serial:"):
            serial, cmd = self._split_serial(req[len("host-serial:"):])
            lookup = {"serial": serial}
        else:
            tid, _, cmd = req[len("host-transport-id:"):].partition(":")
            lookup = {"transport_id": int(tid)}
        if cmd.startswith("wait-for-"):
            wanted = cmd.rsplit("-", 1)[1]
            while not self._stopping.is_set():
                with self._lock:
                    devs = [d for d in self._devices.values()
                            if d.serial == lookup.get("serial") or
                            d.transport_id == lookup.get("transport_id")]
                if devs and (devs[0].state == wanted or wanted == "any"):
                    _okay(conn)
                    _okay(conn)
                    return
                time.sleep(0.05)
            return
        any_state = cmd in ("get-state", "get-serialno", "get-devpath")
        dev = self._lookup(conn, any_state=any_state, **lookup)  # type: ignore[arg-type]
        if dev is None:
            return
        if cmd == "get-state":
            _okay(conn)
            _string_block(conn, dev.state)
        elif cmd == "get-serialno":
            _okay(conn)
            _string_block(conn, dev.serial)
        elif cmd == "get-devpath":
            _okay(conn)
            _string_block(conn, "usb:1-1")
        elif cmd == "features":
            _okay(conn)
            _string_block(conn, _FEATURES)
        else:
            _fail(conn, f"unsupported host-serial command '{cmd}' in the fake adb server")
