"""The harness's timing overhead: its measured median per iteration against a bare timing loop.

Both time the same callable (one UNet iteration of a ladder step) in one process, alternating in
blocks so that drift of the machine hits both alike. The harness side is the agent's own
measurement loop (harness.workloads.common.measure_loop with its Timer and progress lines).
Prints a table; the target ratio is <= 1.02.

    .venv/bin/python bench/overhead.py [--model tiny|sd14] [--variant baseline] [--blocks 5] [--per-block 20]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.models.patch import apply_flags  # noqa: E402
from harness.models.unet import build_unet, example_inputs  # noqa: E402
from harness.protocol import JobSpec, MeasurePolicy  # noqa: E402
from harness.variants import ladder_flags  # noqa: E402
from harness.workloads.common import Timer, measure_loop  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="tiny (default) or sd14")
    ap.add_argument("--variant", default="+flash_attention", help="ladder step to time")
    ap.add_argument("--blocks", type=int, default=5, help="alternating blocks per side")
    ap.add_argument("--per-block", type=int, default=20, help="iterations per block")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.set_grad_enabled(False)
    unet = build_unet(args.model)
    apply_flags(unet, ladder_flags(args.variant))
    sample, t, ctx = example_inputs(args.model)

    def step():
        return unet(sample, t, encoder_hidden_states=ctx, return_dict=False)[0]

    for _ in range(3):
        step()
    spec = JobSpec(job_id="overhead", run_id="", device="host", variant=args.variant,
                   measure=MeasurePolicy(warmup_runs=0, iterations=args.per_block, max_seconds=1e9))
    timer = Timer("cpu")
    bare: list[float] = []
    harness: list[float] = []
    for _ in range(args.blocks):
        for _ in range(args.per_block):
            t0 = time.perf_counter_ns()
            step()
            bare.append((time.perf_counter_ns() - t0) / 1e6)
        with contextlib.redirect_stdout(io.StringIO()):  # the agent's progress lines, as in a real job
            _, samples = measure_loop(step, timer, spec)
        harness.extend(samples)

    b, h = statistics.median(bare), statistics.median(harness)
    print(f"model={args.model} variant={args.variant} torch threads={torch.get_num_threads()}")
    print(f"{'loop':<10} {'n':>5} {'median ms':>10} {'min ms':>9}")
    print(f"{'bare':<10} {len(bare):>5} {b:>10.3f} {min(bare):>9.3f}")
    print(f"{'harness':<10} {len(harness):>5} {h:>10.3f} {min(harness):>9.3f}")
    print(f"ratio harness/bare (median): {h / b:.4f}  (target <= 1.02)")


if __name__ == "__main__":
    main()
