"""Bad input and secrets (issue 20, item 6): each gives a clear error naming the problem and the fix,
exit 2, and loses nothing already stored. No model runs here."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.cli import EXIT_INPUT, main
from harness.store import Store
from harness.suite import SuiteError, load_suite

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "suites" / "smoke.yaml"


def harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


# ---------------------------------------------------------------- a. a binary suite file

def test_binary_suite_file_is_an_input_error(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_bytes(b"\xff\xfe\x00\x81name: x\n")
    proc = harness("run", str(suite), "--store", f"sqlite:///{tmp_path}/r.db")
    assert proc.returncode == EXIT_INPUT, proc.stderr
    assert "Traceback" not in proc.stderr and "UnicodeDecodeError" not in proc.stderr
    assert f"{suite}: not a text file" in proc.stderr and "YAML text file" in proc.stderr


# ---------------------------------------------------------------- b. an in-memory SQLite store

def test_in_memory_store_is_one_database_for_every_thread() -> None:
    store = Store("sqlite://")
    assert store.in_memory
    store.create_run("r1", "s", {})
    seen: list = []

    def reader(i: int) -> None:
        try:
            seen.append(store.load_run("r1").id)
            store.tag_run("r1", f"t{i}")
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            seen.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen == ["r1"] * 6
    assert sorted(store.list_tags()) == [f"t{i}" for i in range(6)]


def test_run_with_in_memory_store_warns_that_results_vanish(monkeypatch, capsys, tmp_path: Path) -> None:
    import harness.runner as runner
    import harness.session as session

    def fake_execute(plan, infos, store, run_id, *args, **kwargs):  # noqa: ANN001
        out: list = []
        t = threading.Thread(target=lambda: out.append(store.load_run(run_id).status))  # a device thread
        t.start()
        t.join(30)
        assert out == ["running"]
        store.finish_run(run_id, "completed")
        return runner.RunOutcome(run_id, "completed")

    monkeypatch.setattr(session, "execute", fake_execute)  # the session runs the plan
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(SMOKE), "--store", "sqlite://", "--no-report", "--set", "variants=[baseline]"]) == 0
    err = capsys.readouterr().err
    assert "-> sqlite://" in err and "in-memory database: the results vanish" in err
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- c. credentials in store URLs

def test_store_password_never_printed() -> None:
    proc = harness("report", "--store", "postgresql://u:S3cretPw@127.0.0.1:1/db")
    assert proc.returncode == EXIT_INPUT, proc.stderr
    assert "S3cretPw" not in proc.stderr + proc.stdout
    assert "postgresql://u:***@127.0.0.1:1/db" in proc.stderr and "Traceback" not in proc.stderr


def test_safe_url_masks_the_password() -> None:
    from harness.store import safe_url

    assert safe_url("postgresql+psycopg://u:pw@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert safe_url("sqlite:///results/harness.db") == "sqlite:///results/harness.db"
    assert "S3cretPw" not in safe_url("mysql+pymysql://u:S3cretPw@h/db")


# ---------------------------------------------------------------- d. read-only commands create no store

@pytest.mark.parametrize("argv", [["report"], ["report", "--list"], ["compare", "-b", "nightly"],
                                  ["tag", "latest", "nightly"]])
def test_read_only_commands_do_not_create_a_store(argv, tmp_path: Path, capsys) -> None:
    db = tmp_path / "new.db"
    assert main([*argv, "--store", f"sqlite:///{db}"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert f"no results store at {db}; run `harness run SUITE` first (or pass --store)" in err
    assert not db.exists()


def test_read_only_commands_read_an_existing_store(tmp_path: Path, capsys) -> None:
    db = tmp_path / "old.db"
    Store(f"sqlite:///{db}").create_run("20260101-000000-abcdef", "s", {})
    assert main(["report", "--list", "--store", f"sqlite:///{db}"]) == 0
    assert "20260101-000000-abcdef" in capsys.readouterr().out


# ---------------------------------------------------------------- e. --set errors and ranges

@pytest.mark.parametrize("override, words", [
    ("foo.bar=1", "--set foo.bar=1: foo: unknown field 'foo'"),
    ("threads=-3", "--set threads=-3: options.threads: Input should be greater than or equal to 0 (got -3)"),
    ("iterations=0", "--set iterations=0: measure.iterations: Input should be greater than or equal to 1"),
    ("warmup_runs=-1", "--set warmup_runs=-1: measure.warmup_runs: Input should be greater than or equal to 0"),
    ("timeout_seconds=0", "--set timeout_seconds=0: measure.timeout_seconds: Input should be greater than 0"),
    ("max_seconds=-1", "--set max_seconds=-1: measure.max_seconds: Input should be greater than 0"),
])
def test_set_errors_name_the_set_and_the_range(override: str, words: str) -> None:
    with pytest.raises(SuiteError) as err:
        load_suite(SMOKE, [override])
    assert words in str(err.value)
    assert f"{SMOKE}:" not in str(err.value)


def test_set_error_exits_2(capsys) -> None:
    assert main(["run", str(SMOKE), "--set", "threads=-3", "--store", "sqlite://"]) == EXIT_INPUT
    assert "--set threads=-3: options.threads" in capsys.readouterr().err


def test_range_error_from_the_file_names_its_line(tmp_path: Path) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\nmodel: tiny\noptions:\n  threads: -3\n")
    with pytest.raises(SuiteError, match=rf"{suite}:4: options.threads: Input should be greater than or equal to 0"):
        load_suite(suite)


# ---------------------------------------------------------------- f. no adb server

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the block ends


def test_unreachable_adb_server_is_a_note_not_a_device(tmp_path: Path, capsys, monkeypatch) -> None:
    port = _closed_port()
    assert main(["run", str(SMOKE), "--device", "android:NOPE", "--adb", f"127.0.0.1:{port}",
                 "--store", "sqlite://"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "device 'android:NOPE' not found: no such android device is attached" in err
    assert f"adb server 127.0.0.1:{port} not reachable" in err and "`adb start-server`" in err
    assert "android@" not in err  # the server is not listed as an attached device

    monkeypatch.setenv("COLUMNS", "300")
    assert main(["devices", "--adb", f"127.0.0.1:{port}"]) == 0
    out = capsys.readouterr().out
    assert f"note: adb server 127.0.0.1:{port} not reachable" in out
    assert f"android@127.0.0.1:{port}" not in out


# ---------------------------------------------------------------- g. file modes of compare's outputs

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_compare_outputs_get_the_umask_mode(tmp_path: Path, umask: int, mode: int) -> None:
    from harness.report.regression_render import write_text_atomic

    old = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "out" / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert path.read_text() == "<html></html>"
