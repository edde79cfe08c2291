"""Workloads the host agent runs, by name. Each is `run(spec, result_dict)`; imported lazily."""
from __future__ import annotations

import importlib
from typing import Any, Callable

from harness.protocol import JobSpec

WORKLOADS: dict[str, str] = {
    "unet_iteration": "harness.workloads.unet_iteration:run",
    "e2e": "harness.workloads.e2e:run",
}


def get_workload(name: str) -> Callable[[JobSpec, dict[str, Any]], None]:
    from harness.workloads.common import InputError

    if name not in WORKLOADS:
        raise InputError(f"workload {name!r} is not available on the host agent; known workloads: "
                         f"{', '.join(WORKLOADS)}")
    module, func = WORKLOADS[name].split(":")
    return getattr(importlib.import_module(module), func)
