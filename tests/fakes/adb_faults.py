"""Faults for the fake adb servers (tests/fakes/adb_server.py and the real adb over tests/fakes/adbd.py): a
phone that drops its pushes, a watcher that injects a fault when a condition holds, and what a phone's
job folder shows. Shared by test_android.py and test_adbd.py."""
from __future__ import annotations

import threading
import time

try:
    from tests.fakes.adb_server import FakeDevice
except ModuleNotFoundError:  # pytest's default import mode puts tests/, not the repo root, on sys.path
    from fakes.adb_server import FakeDevice  # type: ignore[no-redef]

DEVICE_DIR = "/data/local/tmp/harness"


class DropPushes(FakeDevice):
    """Drops the connection during its next `drops` pushes (after the first data chunk), then behaves."""

    def __init__(self, *args, drops: int = 1, **kw):
        self._drops = drops
        super().__init__(*args, **kw)

    @property
    def drop_push_after_bytes(self):  # read by the server once per DATA chunk
        if self._drops > 0:
            self._drops -= 1
            return 1
        return None

    @drop_push_after_bytes.setter
    def drop_push_after_bytes(self, value) -> None:
        pass


def watch(cond, action, stop: threading.Event, interval: float = 0.01) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            if cond():
                action()
                return
            time.sleep(interval)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def has_pid(dev: FakeDevice, index: str) -> bool:
    jobs = dev.host_path(DEVICE_DIR + "/jobs")
    return jobs.is_dir() and any(p.name.split("-")[3:4] == [index] and (p / "pid").is_file() for p in jobs.iterdir())
