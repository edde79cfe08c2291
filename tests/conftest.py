"""Session-wide fixtures shared across test modules."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_fp16_components(tmp_path_factory) -> Path:
    """An artifact cache holding the tiny model's three baseline .tflite components with fp16 weights
    (text encoder, UNet, VAE decoder), built once per session: each conversion takes ~40-70 s here, and
    several modules need exactly these files. Use `seed_cache(dest)` to start a module's own cache from it."""
    from harness.export import COMPONENTS, ensure_artifact
    from harness.protocol import ModelRef
    from harness.variants import Flags

    # One folder for the whole session, also across pytest-xdist workers (their base temps share a parent);
    # the cache's own conversion lock makes a second worker wait for the first and then find the files.
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "tiny-fp16-components"
    path.mkdir(exist_ok=True)
    for component in COMPONENTS:
        ensure_artifact(ModelRef(name="tiny"), Flags(), "tflite", "fp16", cache_dir=path, component=component)
    return path


@pytest.fixture(scope="session")
def seed_cache(tiny_fp16_components):
    """seed_cache(dest): copy the session's tiny fp16 components into the cache folder `dest` (created);
    ensure_artifact then finds them there as cached entries of `dest`."""

    def seed(dest: Path) -> Path:
        shutil.copytree(tiny_fp16_components, dest, dirs_exist_ok=True)
        return dest

    return seed


# The files with the longest conversions and runs first (stable within a file): pytest-xdist's loadfile
# scheduling hands files to workers in collection order, so the long ones start early instead of
# leaving one worker running alone at the end (measured: test_litert_gpu.py, collected late, ran its
# 4-conversion setup alone for the last ~4 minutes).
HEAVY_FIRST = ("test_litert_gpu.py", "test_cli.py", "test_litert_e2e.py", "test_export_components.py",
               "test_android.py", "test_adbd.py", "test_export.py", "test_sweep.py", "test_android_e2e.py",
               "test_litert_runtime.py")


@pytest.fixture
def adb(tmp_path, monkeypatch):
    """Google's adb server (Debian's `adb`) on a private port for one test, driven by the plain `adb` client
    (tests/fakes/adbd.py: AdbServer); killed at teardown. Skips where adb, mksh or toybox is missing."""
    from tests.fakes.adbd import AdbServer, userland_missing

    missing = userland_missing()
    if missing:
        pytest.skip(missing)
    # adbutils runs `adb start-server` (default port) when a connect fails: never here.
    monkeypatch.setenv("ADBUTILS_ADB_PATH", shutil.which("true") or "/bin/true")
    monkeypatch.delenv("ANDROID_ADB_SERVER_HOST", raising=False)
    monkeypatch.delenv("ANDROID_ADB_SERVER_PORT", raising=False)
    server = AdbServer(tmp_path / "adbhome")
    server("start-server")
    try:
        yield server
    finally:
        server("kill-server", check=False)


def pytest_collection_modifyitems(session, config, items):  # noqa: ARG001 - pytest's hook signature
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))
