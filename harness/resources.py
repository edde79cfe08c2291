"""Files the harness ships beside its code: the device agents (device_agents/host/agent.py,
device_agents/android/run_job.sh) and the built-in suites (suites/*.yaml).

In a checkout they are the repository's top-level folders. In an installed wheel they are package data:
pyproject's `package-dir` maps device_agents/ to `harness._agents` and suites/ to `harness._suites`, so a
`pip install` outside the checkout carries them. Every caller asks here instead of walking up from its
own file."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _folder(checkout_name: str, package: str) -> Path:
    checkout = REPO / checkout_name
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec(package)  # the wheel's data folder (a namespace package: no __init__.py)
    if spec is None or not spec.submodule_search_locations:
        return checkout  # neither a checkout nor an installed wheel: callers name the missing path
    return Path(list(spec.submodule_search_locations)[0])


def agent_path(*parts: str) -> Path:
    """A device agent file, e.g. agent_path("host", "agent.py")."""
    return _folder("device_agents", "harness._agents").joinpath(*parts)


def suites_dir() -> Path:
    """The folder of the built-in suites (smoke.yaml, table1.yaml, ...)."""
    return _folder("suites", "harness._suites")


def builtin_suites() -> list[str]:
    """The built-in suites' names (file names without .yaml)."""
    folder = suites_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def builtin_suite(name: str) -> Path | None:
    """The built-in suite called `name` ("smoke" or "smoke.yaml"), or None."""
    if "/" in name or "\\" in name:
        return None
    path = suites_dir() / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    return path if path.is_file() else None
