"""Write the fixtures the Swift agent's tests read: `python tests/data/ios/make_fixtures.py`.

- job.json, job_e2e.json: JobSpecs as harness/devices/ios.py pushes them to the phone (runtime
  coreml, compute units, container-relative model paths; e2e adds the prompt's token ids).
- scheduler_reference.json: diffusers' DPM-Solver++ (2M) and Euler schedulers (the host's, built by
  harness.models.pipeline from SD 1.4's config) at 20 steps: timesteps, sigmas, and a short
  trajectory (8 latent values, a fixed model output per step, the scaled inputs and the latents
  after each step), replayed by Tests/HarnessAgentCoreTests/SchedulerTests.swift.

result.json is not written here: it is what ProtocolTests.swift's Codable types encode, kept by
hand in the same form. tests/test_ios.py checks that the files equal what this script writes now.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

STEPS = 20
LATENT = 8


def job_specs() -> dict[str, Any]:
    """file name -> the JobSpec the phone reads."""
    from harness.devices.ios import device_spec
    from harness.protocol import CheckPolicy, JobSpec, MeasurePolicy, ModelRef, RuntimeOptions
    from harness.variants import LADDER

    flags = dict(LADDER)["+flash_attention"].to_dict()
    unet = JobSpec(job_id="20261121-101500-a1b2c3-003", run_id="20261121-101500-a1b2c3",
                   device="ios:00008120-001A2B3C4D5E6F70", workload="unet_iteration", model=ModelRef(name="sd14"),
                   variant="+flash_attention", flags=flags,
                   options=RuntimeOptions(runtime="coreml", dtype="fp16", compute_units="cpuAndGPU"),
                   measure=MeasurePolicy(warmup_runs=2, iterations=10, max_seconds=120.0, timeout_seconds=1800.0),
                   check=CheckPolicy(enabled=False, rel_tolerance=0.05))
    models = {"unet": "Documents/models/5d41402abc4b2a76.mlpackage"}
    e2e = unet.model_copy(update={
        "job_id": "20261121-101500-a1b2c3-010", "workload": "e2e", "model": ModelRef(name="tiny", seed=3),
        "workload_args": {"steps": STEPS, "scheduler": "dpmsolver++", "guidance_scale": 7.5,
                          "prompt": "a photograph of an astronaut riding a horse", "seed": 3},
        "measure": MeasurePolicy(warmup_runs=1, iterations=2)})
    e2e_models = {"text_encoder": "Documents/models/7d793037a0760186.mlpackage", **models,
                  "vae_decoder": "Documents/models/9e107d9d372bb682.mlpackage"}
    token_ids = [[126, 127, 127, 127, 127, 127, 127, 127], [126, 52, 7, 88, 101, 3, 127, 127]]
    return {"job.json": device_spec(unet, models, 1.0),
            "job_e2e.json": device_spec(e2e, e2e_models, 1.0, token_ids)}


def scheduler_reference() -> dict[str, Any]:
    import numpy as np
    import torch

    from harness.models.pipeline import SD14_SCHEDULER_CONFIG, build_scheduler

    out: dict[str, Any] = {"steps": STEPS, "config": SD14_SCHEDULER_CONFIG, "schedulers": {}}
    noise = np.random.default_rng(0).standard_normal(LATENT).astype(np.float32)
    outputs = [np.random.default_rng(100 + i).standard_normal(LATENT).astype(np.float32) for i in range(STEPS)]
    for name in ("dpmsolver++", "euler"):
        sched = build_scheduler(name)
        sched.set_timesteps(STEPS)
        sample = torch.from_numpy(noise) * float(sched.init_noise_sigma)
        doc: dict[str, Any] = {
            "timesteps": [float(t) for t in sched.timesteps], "sigmas": [float(s) for s in sched.sigmas],
            "init_noise_sigma": float(sched.init_noise_sigma), "noise": noise.tolist(),
            "model_outputs": [o.tolist() for o in outputs], "scaled_inputs": [], "samples": [],
        }
        for i, t in enumerate(sched.timesteps):
            doc["scaled_inputs"].append(sched.scale_model_input(sample, t).tolist())
            sample = sched.step(torch.from_numpy(outputs[i]), t, sample, return_dict=False)[0]
            doc["samples"].append(sample.tolist())
        out["schedulers"][name] = doc
    return out


TREE_FILES = {
    "Manifest.json": '{"fileFormatVersion": "1.0.0"}',
    "Data/com.apple.CoreML/model.mlmodel": "model spec bytes",
    "Data/com.apple.CoreML/weights/weight.bin": "weight bytes",
}


def tree_hash() -> dict[str, Any]:
    """A tiny package's files and the host's tree_sha256 of them (JobRunner.swift treeSHA256 must agree)."""
    import tempfile

    from harness.devices.ios import tree_sha256

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "x.mlpackage"
        for rel, text in TREE_FILES.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        return {"files": TREE_FILES, "sha256": tree_sha256(root)}


def apple_json(doc: Any) -> str:
    """JSON as Foundation's JSONEncoder writes it with [.prettyPrinted, .sortedKeys,
    .withoutEscapingSlashes]: two-space indents, `"key" : value`, a Double with no fraction as an
    integer (411.0 -> 411), no newline at the end."""

    def swiftly(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {k: swiftly(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swiftly(v) for v in value]
        return value

    return json.dumps(swiftly(doc), indent=2, sort_keys=True, separators=(",", " : "), ensure_ascii=False)


def render() -> dict[str, str]:
    """file name -> text (result.json is checked, not written: see the module docstring)."""
    files = {name: spec.model_dump_json(indent=2) + "\n" for name, spec in job_specs().items()}
    files["scheduler_reference.json"] = json.dumps(scheduler_reference(), indent=1) + "\n"
    files["tree_hash.json"] = json.dumps(tree_hash(), indent=2) + "\n"
    return files


def main() -> None:
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
