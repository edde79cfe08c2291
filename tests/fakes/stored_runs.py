"""A stored run of ladder rows with given results, for report tests (no device, no workload)."""
from __future__ import annotations

from typing import Any

from harness.protocol import JobResult
from harness.store import RunRecord, Store
from harness.variants import LADDER


def ladder_run(url: str, device: dict[str, Any], results: list[JobResult], options: dict[str, Any],
               run_id: str = "r1") -> RunRecord:
    """Run `run_id` on `device` with one job per result, in ladder order (the first len(results) rows)."""
    store = Store(url)
    store.create_run(run_id, "t", {"name": "t", "model": {"name": "tiny", "weights": None}})
    store.record_device(run_id, device)
    for i, ((name, flags), res) in enumerate(zip(LADDER, results)):
        store.record_job(run_id, job_key=f"k{i}", job_index=i, device_id=device["id"], workload="unet_iteration",
                         model="tiny", variant=name, variant_index=i, flags=flags.to_dict(), options=options,
                         options_hash="h", result=res)
    store.finish_run(run_id, "completed")
    return store.load_run(run_id)
