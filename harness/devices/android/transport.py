"""The wire to one Android phone: every adbutils call of a job, as the remote-agent template's transport.

Shell commands go through shell v2 (exit code and stderr apart) with a timeout; every string that reaches
the device shell goes through `shlex.quote`. A push is skipped when the file's md5 on the phone is the
host's. `run_job.sh` runs in the background (it survives a dropped adb connection) and leaves a DONE
marker; its files are read back in one shell call. A call that fails because the phone or the adb server
went away raises DeviceDisconnectedError; an unauthorized phone DeviceUnavailableError.
"""
from __future__ import annotations

import hashlib
import re
import shlex
import socket
import time
from pathlib import Path
from typing import Any, Callable

import adbutils
from adbutils.errors import AdbConnectionError, AdbError, AdbTimeout

from harness.devices.android.parse_device import THERMAL_ZONES_SHELL_CMD
from harness.devices.android.settings import (
    OFFLINE_HINT, UNAUTHORIZED_HINT, AndroidSettings, is_network_serial, parse_adb_server,
)
from harness.devices.android.units import flag_value
from harness.devices.base import DeviceDisconnectedError, DeviceError, DeviceUnavailableError, JobFailure
from harness.devices.remote import AgentRun, Poll, RemoteFile, Transport
from harness.resources import agent_path

AGENT_SCRIPT = agent_path("android", "run_job.sh")  # harness.resources
THERMAL_DIR = "/sys/class/thermal"
BATTERY_TEMP_FILE = "/sys/class/power_supply/battery/temp"
# Files run_job.sh leaves in its result directory, pulled after the run.
RESULT_FILES = ("exit_code", "stdout.txt", "stderr.txt", "meminfo.txt", "thermal_before.txt",
                "thermal_after.txt", "battery_before.txt", "battery_after.txt", "started_at",
                "ended_at", "agent.log")
RESULT_PROTO = "result.pb"
_FILE_MARK = "@@harness-file"
_PROTO_MARK = "@@harness-result-proto"


def adb_connect(client, target: str, timeout_s: float = 10.0) -> str | None:
    """`adb connect TARGET` through `client`'s server: None when connected, else adb's answer."""
    try:
        answer = client.connect(target, timeout=timeout_s).strip()
    except (AdbError, OSError, EOFError) as exc:
        return str(exc).strip() or type(exc).__name__
    return None if answer.startswith(("connected to", "already connected to")) else answer


class AdbTransport(Transport):
    """One phone (`serial`) through one adb server (`HOST:PORT`)."""

    def __init__(self, device_id: str, server: str, serial: str, settings: AndroidSettings):
        host, port = parse_adb_server(server)
        self.id, self.server, self.serial, self.settings = device_id, server, serial, settings
        self.client = adbutils.AdbClient(host=host, port=port, socket_timeout=settings.socket_timeout_s)
        self.dev = self.client.device(serial)
        self.remote_bin = f"{settings.device_dir}/bin/benchmark_model"
        self.remote_agent = f"{settings.device_dir}/run_job.sh"
        self.supported_flags: set[str] | None = None
        self._probed = False
        self._hashes: dict[tuple[str, str, int, int], str] = {}

    # ---- plumbing

    def as_device_error(self, exc: BaseException, doing: str) -> DeviceError:
        where = f"{self.id} (adb server {self.server})"
        msg = str(exc).strip()
        if isinstance(exc, AdbTimeout) or isinstance(exc, socket.timeout):
            return DeviceDisconnectedError(f"{where} stopped answering while {doing} (timeout); it may have dropped")
        if isinstance(exc, AdbConnectionError):
            return DeviceDisconnectedError(f"the adb server {self.server} is unreachable while {doing}: {msg}")
        low = msg.lower()
        if "unauthorized" in low:
            return DeviceUnavailableError(f"{where} is unauthorized ({doing}): {UNAUTHORIZED_HINT}")
        if "offline" in low:
            return DeviceDisconnectedError(f"{where} went offline while {doing}")
        if "not found" in low:
            return DeviceDisconnectedError(f"{where} disappeared from its adb server while {doing}")
        what = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
        return DeviceDisconnectedError(f"the connection to {where} closed while {doing} ({what}): the device dropped")

    def call(self, doing: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except (AdbError, EOFError, OSError) as exc:
            raise self.as_device_error(exc, doing) from exc

    def sh(self, cmd: str, doing: str, timeout: float = 30.0):
        """Run one shell command (shell v2: exit code and stderr apart)."""
        return self.call(doing, self.dev.shell2, cmd, timeout=timeout, v2=True)

    def reconnect(self, timeout_s: float) -> None:
        """Wait for a device that dropped to be back ('device' state)."""
        deadline = time.monotonic() + timeout_s
        state = "unknown"
        next_connect = 0.0
        while True:
            try:
                state = self.dev.get_state()
            except (AdbError, OSError, EOFError) as exc:
                state = str(exc).strip() or type(exc).__name__
            if state == "device":
                return
            if is_network_serial(self.serial) and time.monotonic() >= next_connect:
                # a network phone the server dropped (or forgot after `adb kill-server`): connect again
                next_connect = time.monotonic() + 1.0
                adb_connect(self.client, self.serial, timeout_s=5.0)
                continue
            if state == "unauthorized" or state.startswith("device unauthorized"):
                # Google's adb server answers get-state of an unauthorized phone with FAIL "device unauthorized."
                raise DeviceUnavailableError(f"{self.id} came back unauthorized: {UNAUTHORIZED_HINT}")
            if time.monotonic() >= deadline:
                raise DeviceDisconnectedError(
                    f"{self.id} did not come back within {timeout_s:.0f} s (adb state: {state}); {OFFLINE_HINT}")
            time.sleep(0.25)

    # ---- files

    def file_hash(self, path: Path, algo: str) -> str:
        st = path.stat()
        key = (str(path), algo, st.st_size, st.st_mtime_ns)
        if key not in self._hashes:
            h = hashlib.new(algo)
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            self._hashes[key] = h.hexdigest()
        return self._hashes[key]

    def local_hash(self, path: Path) -> str:
        return self.file_hash(path, "md5")

    def remote_hashes(self, paths: list[str]) -> dict[str, str | None]:
        """Create the folders of `paths` (and the jobs folder) and return the md5 of each path on the device
        (None: missing or unreadable)."""
        dirs = sorted({p.rsplit("/", 1)[0] for p in paths} | {f"{self.settings.device_dir}/jobs"})
        q = shlex.quote
        cmd = (f"mkdir -p {' '.join(q(d) for d in dirs)} || exit 3; "
               f"for f in {' '.join(q(p) for p in paths)}; do if [ -f \"$f\" ]; then "
               f"set -- $(md5sum < \"$f\" 2>/dev/null); echo \"${{1:-?}}\"; else echo missing; fi; done")
        res = self.sh(cmd, "checking md5 sums on the device")
        if res.returncode == 3:
            raise JobFailure("device", f"cannot create {self.settings.device_dir} on {self.id}: "
                              f"{(res.stderr or res.stdout).strip()}; set device_dir in farm.yaml to a writable "
                              "directory (default /data/local/tmp/harness)")
        lines = res.stdout.splitlines()
        result: dict[str, str | None] = {}
        for i, path in enumerate(paths):
            word = lines[i].strip().lower() if i < len(lines) else ""
            result[path] = word if re.fullmatch(r"[0-9a-f]{32}", word) else None
        return result

    def push(self, file: RemoteFile) -> int:
        local, remote = file.local, file.remote
        try:
            return int(self.dev.sync.push(str(local), remote, mode=file.mode))
        except AdbError as exc:
            if str(exc).strip() == "FAIL":
                size = local.stat().st_size
                raise JobFailure(
                    "disk_full",
                    f"the device refused {local.name} ({size:,} bytes) at {remote} (adb sync FAIL): its disk is "
                    f"most likely full ('No space left on device'), or the directory is not writable. Free space "
                    f"(`adb -s {self.serial} shell df /data`; old runs: rm -r {self.settings.device_dir}/models) or "
                    "set device_dir in farm.yaml to a larger writable partition") from exc
            raise self.as_device_error(exc, f"pushing {local.name}") from exc
        except (EOFError, OSError) as exc:
            raise self.as_device_error(exc, f"pushing {local.name}") from exc

    def probe_flags(self) -> set[str] | None:
        """Which flags this benchmark_model takes, from its --help (printed to stderr, exit 1); asked once."""
        if not self._probed:
            res = self.sh(f"{shlex.quote(self.remote_bin)} --help", "asking benchmark_model for its flags")
            names = set(re.findall(r"^\s*--([A-Za-z][A-Za-z0-9_-]*)=", res.stdout + "\n" + res.stderr, re.MULTILINE))
            self.supported_flags = names or None
            self._probed = True
        return self.supported_flags

    def read_temps(self) -> tuple[str, str]:
        """The thermal zones' and the battery's text, as run_job.sh records them."""
        thermal = self.sh(THERMAL_ZONES_SHELL_CMD, "reading thermal zones").stdout
        battery = self.sh(f"cat {shlex.quote(BATTERY_TEMP_FILE)} 2>/dev/null || dumpsys battery",
                          "reading the battery temperature").stdout
        return thermal, battery

    # ---- the agent

    def clear_jobs(self) -> None:
        """Kill what an earlier, abandoned attempt left running (a drop leaves the agent going) and remove
        its files. Only processes whose command line names benchmark_model or run_job.sh are killed."""
        jobs = shlex.quote(f"{self.settings.device_dir}/jobs")
        cmd = (f'for d in {jobs}/*; do [ -d "$d" ] || continue; '
               f'for f in "$d/agent.pid" "$d/pid"; do p=$(cat "$f" 2>/dev/null); [ -n "$p" ] || continue; '
               f'case "$(cat "/proc/$p/cmdline" 2>/dev/null)" in *benchmark_model*|*run_job.sh*) '
               f'kill -9 "$p" 2>/dev/null;; esac; done; rm -rf "$d"; done; true')
        self.sh(cmd, "cleaning up earlier jobs")

    def launch(self, run: AgentRun) -> None:
        """Start run_job.sh in the background; run.payload: (benchmark_model args, affinity, meminfo interval)."""
        q = shlex.quote
        out = run.job_dir
        args, affinity, interval = run.payload
        agent_args = [out, self.remote_bin, flag_value(float(interval)), affinity or "", THERMAL_DIR,
                      BATTERY_TEMP_FILE, "--", *args]
        launch = (f"mkdir -p {q(out)} || exit 1; "
                  f"sh {q(self.remote_agent)} {' '.join(q(a) for a in agent_args)} "
                  f"> {q(out + '/agent.log')} 2>&1 < /dev/null & echo $! > {q(out + '/agent.pid')}; echo launched")
        res = self.sh(launch, "starting the device agent")
        if res.returncode != 0 or "launched" not in res.stdout:
            raise JobFailure("device", f"could not start {self.remote_agent} on {self.id}: "
                              f"{(res.stderr or res.stdout).strip()}")

    def poll(self, run: AgentRun) -> Poll:
        """One shell call that waits up to poll_s for the DONE marker."""
        q = shlex.quote
        steps = max(1, int(self.settings.poll_s / 0.2))
        cmd = (f"out={q(run.job_dir)}; i=0; while [ ! -f \"$out/DONE\" ] && [ \"$i\" -lt {steps} ]; do sleep 0.2; "
               f"i=$((i+1)); done; if [ -f \"$out/DONE\" ]; then echo \"done $(cat \"$out/DONE\")\"; "
               f"elif kill -0 \"$(cat \"$out/agent.pid\" 2>/dev/null)\" 2>/dev/null; then echo running; "
               f"elif [ -f \"$out/DONE\" ]; then echo \"done $(cat \"$out/DONE\")\"; else echo gone; fi")
        status = self.sh(cmd, "waiting for benchmark_model", timeout=self.settings.poll_s + 30).stdout.split()
        if status and status[0] == "done":
            return Poll("done", rc=int(status[1]) if len(status) > 1 and status[1].lstrip("-").isdigit() else 255)
        return Poll("gone" if status and status[0] == "gone" else "running")

    def kill(self, run: AgentRun) -> None:
        q = shlex.quote(run.job_dir)
        self.sh(f'for f in {q}/agent.pid {q}/pid; do p=$(cat "$f" 2>/dev/null); '
                f'[ -n "$p" ] && kill -9 "$p" 2>/dev/null; done; true', "stopping benchmark_model")

    def collect(self, run: AgentRun) -> dict[str, Any]:
        """Read the agent's text files (one shell call), pull the result proto if there is one, remove
        the job's directory from the device, and keep copies under run.local_dir."""
        out, local_dir = run.job_dir, run.local_dir
        local_dir.mkdir(parents=True, exist_ok=True)
        q = shlex.quote
        cmd = (f"cd {q(out)} || exit 3; for f in {' '.join(RESULT_FILES)}; do if [ -f \"$f\" ]; then "
               f"echo \"{_FILE_MARK} $f\"; cat \"$f\"; echo; fi; done; "
               f"if [ -f {RESULT_PROTO} ]; then echo {_PROTO_MARK}; else cd / && rm -rf {q(out)}; fi")
        res = self.sh(cmd, "reading the job's result files", timeout=120)
        if res.returncode == 3:
            return {}
        files: dict[str, str | None] = {name: None for name in (*RESULT_FILES, RESULT_PROTO)}
        text = res.stdout
        has_proto = text.rstrip().endswith(_PROTO_MARK)
        if has_proto:
            text = text.rstrip()[: -len(_PROTO_MARK)]
        parts = re.split(rf"^{_FILE_MARK} (\S+)\n", text, flags=re.MULTILINE)
        for name, body in zip(parts[1::2], parts[2::2]):
            body = body[:-1] if body.endswith("\n") else body  # the newline echoed after each file
            files[name] = body
            (local_dir / name).write_text(body)
        if has_proto:
            data = self.call(f"pulling {RESULT_PROTO}", self.dev.sync.read_bytes, f"{out}/{RESULT_PROTO}")
            (local_dir / RESULT_PROTO).write_bytes(data)
            self.sh(f"rm -rf {q(out)}", "removing the job's files from the device")
        return files
