"""Issue 19's changes one at a time, on a CUDA GPU, in one process: the + FlashAttention row of
suites/table1_gpu.yaml (memory pass only, no op-time pass) under

  triton, NCHW copies      the Triton flash kernel everywhere, diffusers' transformer blocks copying back to NCHW,
                           every bias added after its convolution (the code before the changes)
  choice, channels-last    the fastest flash kernel per shape (harness.models.kernels.choice: Triton, torch's
                           FlashAttention-2, cuDNN's) and channels-last transformer blocks (what the harness
                           runs by default; HARNESS_FOLD_BIAS=0)
  ..., bias folds          and the convolutions' biases added inside kernels that run anyway
                           (harness.models.kernels.epilogue, HARNESS_FOLD_BIAS=1: not yet measured)

then diffusers' UNet under torch.compile(mode="reduce-overhead") as the comparator, then the first
configuration again (drift). Prints bench/gpu_table1.py's table with a row per configuration.

    python bench/gpu_changes.py [--iterations 30] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

import gpu_table1  # noqa: E402
import harness.models.patch as patch  # noqa: E402
import harness.workloads.unet_iteration as unet_iteration  # noqa: E402
from harness.models.kernels import choice  # noqa: E402

CONFIGS = (("triton, NCHW copies", "triton", False, False), ("choice, channels-last", None, True, False),
           ("choice, channels-last, bias folds", None, True, True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu_changes.py needs a CUDA GPU; run it through the device tool", file=sys.stderr)
        return 2
    keep_channels_last, run_torch = patch.keep_channels_last, unet_iteration.run_torch

    def memory_pass_only(spec, result):
        measure = spec.measure.model_copy(update={"passes": ["memory"]})
        return run_torch(spec.model_copy(update={"measure": measure}), result)

    unet_iteration.run_torch = memory_pass_only  # harness_rows looks it up at call time
    rows: list[dict] = []

    def row(label: str, flash: str | None, channels_last: bool, fold: bool) -> None:
        os.environ.pop("HARNESS_FLASH", None) if flash is None else os.environ.__setitem__("HARNESS_FLASH", flash)
        os.environ["HARNESS_FOLD_BIAS"] = "1" if fold else "0"
        choice.reset("flash")
        patch.keep_channels_last = keep_channels_last if channels_last else (lambda model: 0)
        t0 = time.time()
        for r in gpu_table1.harness_rows(args.iterations, ["+flash_attention"]):
            rows.append({**r, "row": f"{r['row']} [{label}]"})
        print(f"[{label}] {time.time() - t0:.0f} s", flush=True)

    for config in CONFIGS:
        row(*config)
    diffusers, _ = gpu_table1.diffusers_rows(args.iterations, False, ("reduce-overhead",))
    rows += diffusers
    row(f"{CONFIGS[0][0]}, again", *CONFIGS[0][1:])
    if args.json:
        args.json.write_text(json.dumps({"gpu": torch.cuda.get_device_name(0), "rows": rows}, indent=1, default=str))
    print(gpu_table1.render(rows, torch.cuda.get_device_name(0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
