"""The harness installs as a package: the wheel carries the device agents and the built-in suites (mapped
into harness._agents / harness._suites by pyproject), and, installed outside the checkout, runs the smoke
suite by name from an unrelated directory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_under_harness():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "harness").rglob("__init__.py")}
    assert listed - {"harness._agents", "harness._suites"} == found


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds, installed (without its dependencies, which this venv has) into a folder
    outside the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("harness-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"harness/_agents/host/agent.py", "harness/_agents/android/run_job.sh", "harness/_suites/smoke.yaml",
            "harness/report/templates/run.html.j2"} <= names
    assert not any(n.startswith("harness/_agents/ios/") for n in names)  # the Swift app is built on a Mac
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                    str(tmp / "site"), str(wheel)], check=True, capture_output=True, timeout=300)
    return tmp / "site"


def test_installed_wheel_runs_the_smoke_suite_by_name_elsewhere(installed: Path, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed)}  # ahead of the checkout's editable install
    where = subprocess.run([sys.executable, "-c", "import harness, harness.resources as r; "
                            "print(harness.__file__); print(r.agent_path('host', 'agent.py'))"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60, check=True)
    module, agent = where.stdout.split()
    assert Path(module).is_relative_to(installed) and Path(agent).is_relative_to(installed)
    # two of the five rows: the first and the all-optimizations one (every kernel module is imported)
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "smoke", "--quick", "--store",
                           f"sqlite:///{tmp_path}/r.db", "--no-report", "--format", "json",
                           "--set", "variants=[baseline,+winograd]"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["status"] == "completed" and doc["counts"]["ok"] == doc["counts"]["jobs"] == 2
    assert not (elsewhere / "suites").exists()  # nothing of the checkout was needed
