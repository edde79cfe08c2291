"""Fake Android phones on a loopback adb server, for trying the Android path without a phone.

    python scripts/fake_phones.py                 # one phone, FAKE1, on a free port; Ctrl-C stops it
    python scripts/fake_phones.py -n 3 --port 5038
    python scripts/fake_phones.py --adbd 2        # 2 phones for Google's adb server: `adb connect` each line

With ``--adbd N`` it starts N phones that speak adbd's side of the adb transport protocol over TCP
(tests/fakes/adbd.py; commands run under mksh with toybox's tools), prints one ``127.0.0.1:PORT`` line
per phone and waits: ``adb connect 127.0.0.1:PORT`` lists it as a device of the real adb server, and
``harness run SUITE --device android:127.0.0.1:PORT --benchmark-model DIR/benchmark_model`` reaches it
(the harness connects it itself). The stand-in's path is printed on stderr.

It starts the test suite's fake adb server (tests/fakes/adb_server.py: adbutils talks to it over the
real adb wire protocol; `shell` runs /bin/sh in a sandbox directory per phone) and writes the
benchmark_model stand-in (tests/fakes/benchmark_model_standin.py: runs the .tflite on this host's CPU
through ai-edge-litert and prints what the real tool prints), then prints the `harness run` arguments
that reach them. Latencies measured this way are the host CPU's, not a phone's: use it to check a
suite, the artifacts, the reports and the farm plumbing end to end.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fakes.adb_server import FakeAdbServer, FakeDevice  # noqa: E402
from tests.fakes.adbd import FakePhones  # noqa: E402
from tests.fakes.benchmark_model_standin import write_standin  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _engine_python() -> None:
    """The stand-in runs under this interpreter (its #! line): it needs ai-edge-litert. Started by a
    Python without it (`python scripts/fake_phones.py` outside the venv), run again under the
    project's venv when there is one, else stop with the fix."""
    try:
        import ai_edge_litert  # noqa: F401
        return
    except ImportError:
        pass
    venv_python = REPO / ".venv" / "bin" / "python"
    # (a venv's python links to the base interpreter: tell them apart by sys.prefix)
    if venv_python.exists() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve() \
            and not os.environ.get("FAKE_PHONES_REEXEC"):
        os.environ["FAKE_PHONES_REEXEC"] = "1"
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    sys.stderr.write(f"error: {sys.executable} has no ai_edge_litert, which the benchmark_model stand-in runs on;"
                     " run this script with the project's Python: `make setup`, then"
                     " `.venv/bin/python scripts/fake_phones.py`\n")
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--phones", type=int, default=1, help="how many fake phones (default 1)")
    parser.add_argument("--port", type=int, default=0, help="adb server port (default: a free one)")
    parser.add_argument("--adbd", type=int, default=None, metavar="N",
                        help="start N phones for Google's adb server (adb connect each printed HOST:PORT)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the phones' sandboxes and the stand-in go (default: a temporary directory)")
    args = parser.parse_args(argv)
    # Ctrl-C (SIGINT) stops it even when it was started in the background, where a shell ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.phones < 1:
        parser.error("--phones must be at least 1")
    if args.adbd is not None and args.adbd < 1:
        parser.error("--adbd must be at least 1")
    _engine_python()
    root = args.dir or Path(tempfile.mkdtemp(prefix="fake-phones-"))
    root.mkdir(parents=True, exist_ok=True)
    standin = write_standin(root / "benchmark_model")
    if args.adbd is not None:
        return _adbd(args.adbd, root, standin)
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


def _adbd(n: int, root: Path, standin: Path) -> int:
    with FakePhones(n, root=root) as phones:
        for serial in phones.serials:
            print(serial)
        sys.stdout.flush()
        print(f"{n} fake phone(s) for the adb server (sandboxes under {root}); benchmark_model stand-in: "
              f"{standin}; e.g. harness run SUITE --device android:{phones.serials[0]} --benchmark-model "
              f"{standin}. Ctrl-C stops them.", file=sys.stderr, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
