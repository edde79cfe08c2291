"""Session-wide fixtures shared across test modules."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# pytest-xdist runs one test file per worker at once: give each worker, and the harness jobs, converters and
# scripts it starts (they inherit the environment), its share of the cores. With every process taking all
# cores, OpenMP threads spinning on an oversubscribed machine made torch-heavy tests several times slower
# (tests/test_e2e.py measured 10x on its small models; the CLI's smoke run took 180 s beside a conversion,
# 43 s alone). A value you set yourself wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
    if "torch" in sys.modules:  # imported before this file (by a plugin): OpenMP has read the variable already
        sys.modules["torch"].set_num_threads(_THREADS)

try:
    from tests.fakes.tiny_block import BLOCK_SRC as _BLOCK_SRC
    from tests.fakes.tiny_block import BROADCAST_SRC as _BROADCAST_SRC
except ModuleNotFoundError:  # pytest's default import mode puts tests/, not the repo root, on sys.path
    from fakes.tiny_block import BLOCK_SRC as _BLOCK_SRC  # type: ignore[no-redef]
    from fakes.tiny_block import BROADCAST_SRC as _BROADCAST_SRC  # type: ignore[no-redef]


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


def _block_tflite(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, src: str, name: str) -> Path:
    key = hashlib.sha256(src.encode()).hexdigest()[:12]
    cache = getattr(pytestconfig, "cache", None)
    folder = Path(cache.mkdir("android_tflite")) if cache is not None else tmp_path_factory.mktemp("tflite")
    out = folder / f"{name}-{key}.tflite"
    if not out.is_file():
        code = (src + "import litert_torch, sys\ntorch.manual_seed(0)\n"
                "litert_torch.convert(Block().eval(), (torch.randn(1, 8, 8, 8),)).export(sys.argv[1])\n")
        subprocess.run([sys.executable, "-c", code, str(out) + ".tmp"], check=True, capture_output=True, timeout=300)
        os.replace(str(out) + ".tmp", out)
    return out


@pytest.fixture(scope="session")
def tiny_tflite(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny .tflite made with litert-torch (cached across sessions in pytest's cache dir, if enabled);
    GPU-clean: the stand-in runs it wholly on LiteRT's GPU accelerator."""
    return _block_tflite(pytestconfig, tmp_path_factory, _BLOCK_SRC, "block")


@pytest.fixture(scope="session")
def broadcast_tflite(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny .tflite LiteRT's GPU engine does not take wholly (a BROADCAST_TO)."""
    return _block_tflite(pytestconfig, tmp_path_factory, _BROADCAST_SRC, "bcast")


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark_model stand-in (tests/fakes/benchmark_model_standin.py) as an executable file."""
    try:
        from tests.fakes.benchmark_model_standin import write_standin
    except ModuleNotFoundError:
        from fakes.benchmark_model_standin import write_standin  # type: ignore[no-redef]
    return write_standin(tmp_path_factory.mktemp("standin") / "benchmark_model")
