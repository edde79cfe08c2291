"""Fake Android phones on a loopback adb server, for trying the Android path without a phone.

    python scripts/fake_phones.py                 # one phone, FAKE1, on a free port; Ctrl-C stops it
    python scripts/fake_phones.py -n 3 --port 5038

It starts the test suite's fake adb server (tests/fakes/adb_server.py: adbutils talks to it over the
real adb wire protocol; `shell` runs /bin/sh in a sandbox directory per phone) and writes the
benchmark_model stand-in (tests/fakes/benchmark_model_standin.py: runs the .tflite on this host's CPU
through ai-edge-litert and prints what the real tool prints), then prints the `harness run` arguments
that reach them. Latencies measured this way are the host CPU's, not a phone's: use it to check a
suite, the artifacts, the reports and the farm plumbing end to end.
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.adb_server import FakeAdbServer, FakeDevice  # noqa: E402
from tests.fakes.benchmark_model_standin import write_standin  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--phones", type=int, default=1, help="how many fake phones (default 1)")
    parser.add_argument("--port", type=int, default=0, help="adb server port (default: a free one)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the phones' sandboxes and the stand-in go (default: a temporary directory)")
    args = parser.parse_args(argv)
    # Ctrl-C (SIGINT) stops it even when it was started in the background, where a shell ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.phones < 1:
        parser.error("--phones must be at least 1")
    root = args.dir or Path(tempfile.mkdtemp(prefix="fake-phones-"))
    root.mkdir(parents=True, exist_ok=True)
    standin = write_standin(root / "benchmark_model")
    devices = [FakeDevice(f"FAKE{i + 1}", root=root / f"phone{i + 1}") for i in range(args.phones)]
    with FakeAdbServer(devices, port=args.port) as srv:
        serials = " ".join(f"--device android:{d.serial}" for d in devices)
        print(f"{len(devices)} fake phone(s) on 127.0.0.1:{srv.port} (sandboxes under {root})")
        print(f"harness run SUITE {serials} --adb 127.0.0.1:{srv.port} --benchmark-model {standin}")
        print("Ctrl-C stops them.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
