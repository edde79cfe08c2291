"""A fake phone that speaks adbd's side of the adb transport protocol over TCP, for tests.

Google's adb server (Debian's ``adb`` package) reaches it with ``adb connect 127.0.0.1:PORT``, as a
device farm reaches its network phones; the phone's serial is then ``127.0.0.1:PORT``. What it speaks
(AOSP packages/modules/adb: protocol.txt, SYNC.TXT, shell_protocol.h):

- messages: a 24-byte little-endian header (command, arg0, arg1, payload length, payload byte sum,
  command ^ 0xffffffff) and the payload. ``CNXN(version, maxdata, "device::props;features=...")``
  answers the server's CNXN; ``OPEN(local, 0, "service\\0")`` opens a stream, answered by
  ``OKAY(local, remote)`` or, when the service cannot start, ``CLSE(0, remote)``; ``WRTE`` carries
  data one payload at a time, each acknowledged by ``OKAY`` before the next (no delayed_ack);
  ``CLSE`` closes a stream from either side.
- services: the same code as the fake adb server's device services (tests/fakes/adb_server.py,
  :class:`~tests.fakes.adb_server.DeviceServices`): ``shell:``, ``shell,v2[,raw]:`` (shell protocol
  packets), ``sync:`` with STAT/LIST/SEND/RECV and the v2 forms the server asks for once the banner
  lists ``stat_v2`` and ``ls_v2`` (STA2, LST2, LIS2/DNT2). Every command runs in the phone's sandbox
  (the device path ``/data/local/tmp`` is ``root/data/local/tmp``) under mksh with toybox's applets and
  the getprop/dumpsys/pm stand-ins on PATH (``FakeDevice(userland="android")``, the default).
- features in the banner: ``shell_v2`` (exit codes and split stderr), ``stat_v2``, ``ls_v2`` (the
  server's push/pull ask STA2/LST2/LIS2), ``fixed_push_mkdir`` (a SEND creates missing parent
  directories) and ``fixed_push_symlink_timestamp``. Not listed, not served: ``cmd``/``abb`` (the
  package manager's binder services), ``sendrecv_v2`` (compressed transfers), ``delayed_ack``.

Faults (on the :class:`FakeDevice`, read when the server connects or while it runs):
``state="unauthorized"`` (the phone asks for AUTH and rejects every signature and key: adb lists it
``unauthorized``), ``state="offline"`` (it accepts the TCP connection and never answers CNXN: adb
lists it ``offline``), the fake server's ``drop_push_after_bytes`` / ``drop_shell_after_*`` (here the
whole TCP connection closes, as when a phone leaves the network), ``disk_quota_bytes``, and
:meth:`FakeAdbd.drop` (every connection closed now; the port still listens, so adb's reconnect and
``adb connect`` get it back) and ``listening=False`` through :meth:`FakeAdbd.set_listening`.

Counters: the device's ``bytes_received`` / ``bytes_pushed`` / ``pushes_completed``, and
``connections`` (TCP connections accepted).
"""
from __future__ import annotations

import os
import queue
import shutil
import socket
import struct
import subprocess
import time
import threading
from pathlib import Path
from typing import Iterable

from tests.fakes.adb_server import (DeviceServices, FakeDevice, _Dropped, _drop, _recv_exact,
                                    _send)

__all__ = ["FakeAdbd", "FakePhones", "FEATURES", "AdbServer", "free_port", "userland_missing"]

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_STLS = 0x534C5453
A_VERSION = 0x01000001  # skips checksums from here on; older servers get them all the same
MAX_PAYLOAD = 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
FEATURES = "shell_v2,stat_v2,ls_v2,fixed_push_mkdir,fixed_push_symlink_timestamp"
_ACK_TIMEOUT_S = 120.0


def _message(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return struct.pack("<6I", command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF,
                       command ^ 0xFFFFFFFF) + data


class _Stream:
    """One OPENed service: a socketpair between the service thread and the transport."""

    def __init__(self, local_id: int, remote_id: int):
        self.local_id = local_id
        self.remote_id = remote_id
        self.service_end, self.bridge_end = socket.socketpair()
        self.acked = threading.Event()
        self.inbound: queue.Queue[bytes | None] = queue.Queue()
        self.closed = threading.Event()

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.acked.set()
            self.inbound.put(None)
            _drop(self.bridge_end)


class _Transport:
    """One TCP connection from the adb server."""

    def __init__(self, phone: "FakeAdbd", sock: socket.socket):
        self.phone = phone
        self.sock = sock
        self.send_lock = threading.Lock()
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.max_payload = MAX_PAYLOAD
        self.online = False
        self.closed = threading.Event()

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        with self.send_lock:
            _send(self.sock, _message(command, arg0, arg1, data))

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        _drop(self.sock)
        for stream in list(self.streams.values()):
            stream.close()
        self.streams.clear()

    # ---- reading

    def serve(self) -> None:
        try:
            while not self.closed.is_set():
                head = _recv_exact(self.sock, 24)
                command, arg0, arg1, length, _check, magic = struct.unpack("<6I", head)
                if magic != command ^ 0xFFFFFFFF:
                    raise _Dropped(f"bad message magic {magic:#x}")
                data = _recv_exact(self.sock, length) if length else b""
                self.handle(command, arg0, arg1, data)
        except _Dropped:
            pass
        finally:
            self.close()
            self.phone._forget(self)

    def handle(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        dev = self.phone.device
        if command == A_CNXN:
            self.max_payload = max(4096, min(MAX_PAYLOAD, arg1))
            if dev.state == "offline":
                return  # never answers: the server keeps the phone "offline"
            if dev.state == "unauthorized":
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
                return
            self.online = True
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.phone.banner().encode())
        elif command == A_AUTH:
            if arg0 == AUTH_SIGNATURE:  # every signature is rejected: ask again with a new token
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
            # AUTH_RSAPUBLICKEY: the "Allow USB debugging?" dialog nobody accepts; no answer
        elif command == A_OPEN and self.online:
            self.open(arg0, data.rstrip(b"\0").decode("utf-8", errors="replace"))
        elif command == A_OKAY:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.remote_id = arg0
                stream.acked.set()
        elif command == A_WRTE:
            stream = self.streams.get(arg1)
            if stream is None:
                self.send(A_CLSE, 0, arg0)
            else:
                stream.inbound.put(data)
        elif command == A_CLSE:
            stream = self.streams.pop(arg1, None)
            if stream is not None:
                stream.close()
        # A_SYNC (obsolete) and A_STLS (TLS, wireless debugging only) are ignored

    # ---- streams

    def open(self, remote_id: int, service: str) -> None:
        local_id = self.next_id
        self.next_id += 1
        stream = _Stream(local_id, remote_id)
        self.streams[local_id] = stream
        self.phone.requests.append((self.phone.device.serial, service))  # as the fake server logs them
        self.phone._register(stream.service_end, self)
        for target, name in ((self._run_service, "svc"), (self._to_server, "out"),
                             (self._from_server, "in")):
            threading.Thread(target=target, args=(stream, service), daemon=True,
                             name=f"fakeadbd-{name}-{local_id}").start()

    def _run_service(self, stream: _Stream, service: str) -> None:
        try:
            self.phone._device_service(stream.service_end, self.phone.device, service)
        except _Dropped:
            pass
        except OSError:
            pass
        finally:
            self.phone._unregister(stream.service_end)
            _drop(stream.service_end)

    def _to_server(self, stream: _Stream, service: str) -> None:
        """The service's output: its OKAY/FAIL opens the stream or closes it, the rest goes as WRTE."""
        sock = stream.bridge_end
        try:
            status = _recv_exact(sock, 4)
            if status != b"OKAY":
                size = int(_recv_exact(sock, 4), 16)
                reason = _recv_exact(sock, size).decode(errors="replace")
                self.phone.requests.append((self.phone.device.serial, f"refused {service}: {reason}"))
                self.send(A_CLSE, 0, stream.remote_id)
                return
            self.send(A_OKAY, stream.local_id, stream.remote_id)
            while not stream.closed.is_set():
                try:
                    data = sock.recv(self.max_payload)
                except OSError:
                    data = b""
                if not data:
                    break
                stream.acked.clear()
                self.send(A_WRTE, stream.local_id, stream.remote_id, data)
                if not stream.acked.wait(_ACK_TIMEOUT_S):
                    raise _Dropped("the server acknowledged no write")
            if not stream.closed.is_set() and not self.closed.is_set():
                self.send(A_CLSE, stream.local_id, stream.remote_id)
        except (_Dropped, ValueError):
            pass
        finally:
            self.streams.pop(stream.local_id, None)
            stream.close()

    def _from_server(self, stream: _Stream, service: str) -> None:
        """WRTE payloads into the service, each acknowledged once the service's socket took it."""
        while True:
            data = stream.inbound.get()
            if data is None or stream.closed.is_set():
                return
            try:
                stream.bridge_end.sendall(data)
                self.send(A_OKAY, stream.local_id, stream.remote_id)
            except (OSError, _Dropped):
                return


class FakeAdbd(DeviceServices):
    """One fake phone listening on 127.0.0.1:PORT for the adb server. A context manager."""

    def __init__(self, device: FakeDevice, host: str = "127.0.0.1", port: int = 0):
        self._init_services()
        self.device = device
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._listener: socket.socket | None = None
        self._transports: set[_Transport] = set()
        self._service_transport: dict[socket.socket, _Transport] = {}
        self._owns_root = device.root is None
        self.connections = 0

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake phone is not started")
        return self._port

    @property
    def serial(self) -> str:
        """The serial the adb server gives this phone after `adb connect`."""
        return f"{self.host}:{self.port}"

    def banner(self) -> str:
        p = self.device.props
        return (f"device::ro.product.name={p.get('ro.product.name', '')};"
                f"ro.product.model={p.get('ro.product.model', '')};"
                f"ro.product.device={p.get('ro.product.device', '')};features={FEATURES}")

    # ---- lifecycle

    def start(self) -> "FakeAdbd":
        self.device._prepare()
        self.set_listening(True)
        return self

    def stop(self) -> None:
        self.set_listening(False)
        self.drop()
        self._kill_shells()
        if self._owns_root and self.device.root is not None:
            shutil.rmtree(self.device.root, ignore_errors=True)

    def __enter__(self) -> "FakeAdbd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_listening(self, listening: bool) -> None:
        """Listen on the phone's port (the same one again after a pause), or stop listening."""
        if listening and self._listener is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port if self._port is not None else self._requested_port))
            sock.listen(16)
            self._port = sock.getsockname()[1]
            self._listener = sock
            threading.Thread(target=self._accept_loop, args=(sock,), daemon=True,
                             name=f"fakeadbd-accept-{self._port}").start()
        elif not listening and self._listener is not None:
            sock, self._listener = self._listener, None
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def drop(self) -> None:
        """The phone leaves the network: every connection to it closes now."""
        with self._lock:
            transports = list(self._transports)
        for t in transports:
            t.close()

    @property
    def online(self) -> bool:
        """True while an adb server holds a connection that passed CNXN."""
        with self._lock:
            return any(t.online and not t.closed.is_set() for t in self._transports)

    # ---- internals

    def _accept_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = _Transport(self, conn)
            with self._lock:
                self._transports.add(transport)
                self.connections += 1
            threading.Thread(target=transport.serve, daemon=True, name="fakeadbd-transport").start()

    def _forget(self, transport: _Transport) -> None:
        with self._lock:
            self._transports.discard(transport)

    def _register(self, conn: socket.socket, transport: _Transport) -> None:
        with self._lock:
            self._service_transport[conn] = transport

    def _unregister(self, conn: socket.socket) -> None:
        with self._lock:
            self._service_transport.pop(conn, None)

    def _vanish(self, conn: socket.socket) -> None:
        """A fault fired in a service: the phone drops off the network (its TCP connection closes)."""
        with self._lock:
            transport = self._service_transport.get(conn)
        if transport is not None:
            transport.close()
        _drop(conn)


class FakePhones:
    """N fake phones (each its own port and sandbox), for scripts/fake_phones.py and tests."""

    def __init__(self, n: int, root: Path | None = None, serial_prefix: str = "ADBD",
                 devices: Iterable[FakeDevice] | None = None):
        if devices is None:
            devices = [FakeDevice(f"{serial_prefix}{i + 1}", userland="android",
                                  root=(Path(root) / f"phone{i + 1}") if root else None)
                       for i in range(n)]
        self.phones = [FakeAdbd(d) for d in devices]

    def __enter__(self) -> "FakePhones":
        for p in self.phones:
            p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.phones:
            p.stop()

    @property
    def serials(self) -> list[str]:
        return [p.serial for p in self.phones]


# ------------------------------------------------------------------------------------ Google's adb server, for tests

ADB_PATH = shutil.which("adb") or "/usr/bin/adb"


def userland_missing() -> str | None:
    """Why the real-server tests cannot run here (None when Debian's adb, mksh and toybox are installed)."""
    from tests.fakes.adb_server import MKSH, TOYBOX

    missing = [p for p in (ADB_PATH, MKSH, TOYBOX) if not os.access(p, os.X_OK)]
    if missing:
        return (f"needs Debian's adb, mksh and toybox ({', '.join(missing)} missing): "
                "apt-get install -y adb mksh toybox (.ci/run installs them)")
    return None


def free_port() -> int:
    """A TCP port nobody listens on now (for a private adb server, or a phone that is not there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AdbServer:
    """Google's adb server on a private port, driven through the plain `adb` client."""

    def __init__(self, home: Path):
        self.port = free_port()
        home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HOME": str(home), "ANDROID_ADB_SERVER_PORT": str(self.port)}

    def __call__(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([ADB_PATH, "-P", str(self.port), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def states(self) -> dict[str, str]:
        lines = self("devices").stdout.splitlines()[1:]
        return dict(line.split("\t", 1) for line in lines if "\t" in line)

    def wait_state(self, serial: str, want: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while self.states().get(serial) != want:
            assert time.monotonic() < deadline, (serial, want, self.states())
            time.sleep(0.2)
