"""Where one Table-1 row's time goes: each phase of a unet_iteration job, timed in one process.

The row's phases as the host agent runs them (harness.workloads.unet_iteration.run_torch), each timed
here on one model, side by side, so the shared machine's drift hits before and after alike:

  build      the UNet from its config, random weights (default init)
  ref_build  a second build for the reference (before: on a reference-cache miss; after: none, the
             reference runs on the row's own model before it is patched)
  ref_fwd    the unpatched forward (once per model and inputs: cached across rows, before and after)
  patch      apply_flags
  precompute Winograd's filter transforms (patch.precompute_weights; before: inside the first call)
  first_run  before: the untimed first call (also the reference check); after: none, the memory
             pass is the first call on the CPU and serves the check
  iteration  one warm call (warmup_runs + iterations of them per row)
  profiler   before: the measured-memory pass (torch profiler)
  trace      before: the planned-memory pass (dispatch-mode trace)
  memory     after: both memory figures from one traced, profiled call (the row's first call)
  op_times   the op-time pass (after: only when measure.passes asks; table1.yaml does not)

Prints the table and the row's totals before/after for the given warmup and iteration counts.

    .venv/bin/python bench/bench_time.py [--model sd14] [--variant +winograd] [--warmup 0] [--iterations 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import torch  # noqa: E402

from harness import memory  # noqa: E402
from harness.models.patch import apply_flags, precompute_weights  # noqa: E402
from harness.models.unet import build_unet, example_inputs  # noqa: E402
from harness.variants import ladder_flags  # noqa: E402
from harness.workloads.common import op_times  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sd14", help="sd14 (default) or tiny")
    ap.add_argument("--variant", default="+winograd", help="ladder step (default +winograd)")
    ap.add_argument("--warmup", type=int, default=0, help="warmup runs per row (table1.yaml: 0)")
    ap.add_argument("--iterations", type=int, default=3, help="timed iterations per row (table1.yaml: 3)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    t: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        t[name] = time.perf_counter() - t0
        rss = psutil.Process().memory_info().rss / 2**30
        print(f"  {name:<10} {t[name]:8.1f} s  (RSS now {rss:.1f} GiB, load {os.getloadavg()[0]:.1f})",
              file=sys.stderr, flush=True)
        return out

    print(f"{args.model} {args.variant}, load {os.getloadavg()[0]:.1f} at start", file=sys.stderr)
    inputs = example_inputs(args.model)
    ref = timed("ref_build", lambda: build_unet(args.model))
    timed("ref_fwd", lambda: ref(inputs[0], inputs[1], encoder_hidden_states=inputs[2], return_dict=False)[0])
    del ref
    unet = timed("build", lambda: build_unet(args.model))
    timed("patch", lambda: apply_flags(unet, ladder_flags(args.variant)))
    timed("precompute", lambda: precompute_weights(unet))

    def step():
        return unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2], return_dict=False)[0]

    timed("first_run", step)
    runs = []
    for _ in range(2):
        timed("iteration", step)
        runs.append(t["iteration"])
    t["iteration"] = min(runs)
    before_mem = (timed("profiler", lambda: memory.measure_peak_tensor_bytes(step, device="cpu")),
                  timed("trace", lambda: memory.planned_tensor_bytes(step)))
    after_mem = timed("memory", lambda: memory.measure_and_plan_tensor_bytes(step, device="cpu"))
    timed("op_times", lambda: op_times(unet, step, "cpu"))
    load_end = os.getloadavg()[0]

    n = args.warmup + args.iterations
    before = {"build": t["build"], "ref_build": t["ref_build"], "ref_fwd": t["ref_fwd"], "patch": t["patch"],
              "precompute": t["precompute"], "first_run": t["first_run"], f"{n} x iteration": n * t["iteration"], "profiler": t["profiler"],
              "trace": t["trace"], "memory": 0.0, "op_times": t["op_times"]}
    after = dict(before, ref_build=0.0, first_run=0.0, profiler=0.0, trace=0.0, memory=t["memory"], op_times=0.0)
    print(f"\n{args.model} {args.variant}: one row's phases (s), measured side by side in one process; "
          f"load {load_end:.1f} at the end on {os.cpu_count()} cores")
    print(f"{'phase':<16}{'before':>10}{'after':>10}")
    for k in before:
        print(f"{k:<16}{before[k]:>10.1f}{after[k]:>10.1f}")
    rows = ("ref_build", "ref_fwd")  # once per suite (the first row on a cold cache), before and after
    b_row = sum(v for k, v in before.items() if k not in rows)
    a_row = sum(v for k, v in after.items() if k not in rows)
    print(f"{'row (warm cache)':<16}{b_row:>10.1f}{a_row:>10.1f}   after/before {a_row / b_row:.2f}")
    print(f"{'first row (cold)':<16}{b_row + before['ref_build'] + before['ref_fwd']:>10.1f}"
          f"{a_row + after['ref_fwd']:>10.1f}")
    print(f"memory figures: before measured {before_mem[0][0]} planned {before_mem[1]}; "
          f"after measured {after_mem[0]} planned {after_mem[2]}")


if __name__ == "__main__":
    main()
