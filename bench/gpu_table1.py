"""Table 1 on a CUDA GPU: the SD 1.4 UNet iteration (batch 2, fp16) per cumulative optimization,
through the harness's host runtime (the `unet_iteration` workload of suites/table1_gpu.yaml, called in
process), side by side in the same process with diffusers' own UNet2DConditionModel: eager (PyTorch
SDPA), torch.compile (default) and torch.compile(mode="reduce-overhead") (CUDA graphs).

    python bench/gpu_table1.py [--json OUT.json] [--skip-compile] [--compile-modes reduce-overhead]
                               [--variants +flash_attention,+winograd] [--iterations 30]

Columns: ms is what the GPU executes per iteration: the harness rows replay a CUDA graph of the
iteration (median of >= 30 replays, CUDA events), diffusers' eager and compile rows are timed per call
with CUDA events (eager: also as a CUDA-graph replay), reduce-overhead is timed per call (it replays
its own CUDA graphs). eager ms: per-call eager time. tensor MB: peak of intermediate tensors during one
eager iteration above the weights (CUDA allocator); for reduce-overhead, the memory its CUDA-graph pool
holds after warm-up (allocated minus weights). err: max |out - ref| / max |ref| against diffusers'
eager fp16 output.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from harness.models.kernels.choice import events_ms  # noqa: E402

MB = 1e6


def harness_rows(iterations: int, variants: list[str] | None) -> list[dict]:
    from harness.suite import expand, load_suite
    from harness.workloads.unet_iteration import run_torch

    suite = load_suite(ROOT / "suites" / "table1_gpu.yaml")
    plan = expand(suite, run_id="gpu-table1")
    rows = []
    for job in plan.jobs:
        if variants and job.variant not in variants:
            continue
        spec = job.spec.model_copy(update={"measure": job.spec.measure.model_copy(update={"iterations": iterations})})
        result: dict = {"extra": {}}
        t0 = time.time()
        print(f"[harness] {job.variant} ...", flush=True)
        try:
            run_torch(spec, result)
        except Exception as exc:  # noqa: BLE001 - report the row as failed, keep going
            rows.append({"row": f"harness {job.variant}", "error": f"{type(exc).__name__}: {exc}"[:400]})
            continue
        finally:
            torch.cuda.empty_cache()
        extra, mem, check = result["extra"], result.get("memory"), result.get("check")
        row = {"row": f"harness {job.variant}", "wall_s": round(time.time() - t0, 1)}
        if result.get("error"):
            row["error"] = result["error"]["message"][:400]
        if result.get("samples_ms"):
            row.update(ms=statistics.median(result["samples_ms"]), n=len(result["samples_ms"]),
                       eager_ms=extra.get("eager_median_ms"), timing=result.get("execution", {}).get("timing_method"))
        if mem is not None:
            row["tensor_mb"] = (mem.tensor_bytes_measured or 0) / MB
            row["weight_mb"] = (mem.weight_bytes or 0) / MB
        if check is not None:
            row["err"] = check.rel_error
        row["replaced"] = extra.get("replaced")
        row["winograd_ran"] = extra.get("winograd_ran")
        row["flash_ran"] = extra.get("flash_ran")
        row["op_times_ms"] = result.get("op_times_ms")
        row["graph_vs_eager_max_abs"] = extra.get("graph_vs_eager_max_abs")
        rows.append(row)
        print(f"[harness] {job.variant}: {row.get('ms')} ms (eager {row.get('eager_ms')}), err {row.get('err')}, "
              f"{row.get('wall_s')} s", flush=True)
    return rows


def diffusers_rows(iterations: int, skip_compile: bool,
                   modes: tuple[str, ...] = ("default", "reduce-overhead")) -> tuple[list[dict], torch.Tensor]:
    from harness import memory
    from harness.models.unet import build_unet, example_inputs
    from harness.workloads.common import cuda_graph_replay_ms

    inputs = example_inputs("sd14", 0, "fp16", "cuda")
    unet = build_unet("sd14", None, 0, "fp16").cuda().to(memory_format=torch.channels_last)
    weights = memory.weight_bytes(unet)
    torch.set_grad_enabled(False)

    def call(model):
        return model(inputs[0], inputs[1], encoder_hidden_states=inputs[2], return_dict=False)[0]

    rows = []
    ref = call(unet).float()
    eager = events_ms(lambda: call(unet), iterations)
    peak, _ = memory.measure_peak_tensor_bytes(lambda: call(unet), device="cuda")
    graph, _ = cuda_graph_replay_ms(lambda: call(unet), iterations)
    rows.append({"row": "diffusers eager (SDPA)", "ms": statistics.median(eager), "eager_ms": statistics.median(eager),
                 "graph_ms": statistics.median(graph), "tensor_mb": peak / MB, "weight_mb": weights / MB, "err": 0.0,
                 "n": len(eager), "timing": "cuda_events per call"})
    print(f"[diffusers] eager {rows[-1]['ms']:.2f} ms, as a CUDA graph {rows[-1]['graph_ms']:.2f} ms", flush=True)
    if skip_compile:
        return rows, ref
    for mode in modes:
        torch._dynamo.reset()
        torch.cuda.empty_cache()
        t0 = time.time()
        compiled = torch.compile(unet, mode=None if mode == "default" else mode)
        try:
            for _ in range(3):
                out = call(compiled)
            torch.cuda.synchronize()
            compile_s = time.time() - t0
            err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
            samples = events_ms(lambda: call(compiled), iterations)
            if mode == "default":
                peak, _ = memory.measure_peak_tensor_bytes(lambda: call(compiled), device="cuda")
            else:
                peak = torch.cuda.memory_allocated() - weights
            rows.append({"row": f"diffusers torch.compile {mode}", "ms": statistics.median(samples), "tensor_mb": peak / MB,
                         "weight_mb": weights / MB, "err": err, "n": len(samples), "compile_s": round(compile_s, 1),
                         "timing": "cuda_events per call"})
            print(f"[diffusers] compile {mode}: {rows[-1]['ms']:.2f} ms (compile {compile_s:.0f} s)", flush=True)
        except Exception as exc:  # noqa: BLE001
            rows.append({"row": f"diffusers torch.compile {mode}", "error": f"{type(exc).__name__}: {exc}"[:400]})
        del compiled
    torch._dynamo.reset()
    return rows, ref


def render(rows: list[dict], gpu: str) -> str:
    ro = next((r.get("ms") for r in rows if r["row"] == "diffusers torch.compile reduce-overhead" and r.get("ms")), None)
    lines = [f"SD 1.4 UNet iteration, batch 2, fp16, {gpu}, torch {torch.__version__}",
             f"| {'row':40s} | {'ms':>8s} | {'eager ms':>8s} | {'tensor MB':>9s} | {'err':>8s} | {'x CG-compile':>12s} |",
             f"|{'-' * 42}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 10}|{'-' * 14}|"]
    for r in rows:
        if r.get("error") and not r.get("ms"):
            lines.append(f"| {r['row']:40s} | ERROR: {r['error'][:120]}")
            continue
        f = lambda v, fmt: format(v, fmt) if isinstance(v, (int, float)) else "-"
        ratio = r["ms"] / ro if ro and r.get("ms") else None
        lines.append(f"| {r['row']:40s} | {f(r.get('ms'), '8.2f')} | {f(r.get('eager_ms'), '8.2f')} | "
                     f"{f(r.get('tensor_mb'), '9.0f')} | {f(r.get('err'), '8.1e')} | {f(ratio, '12.2f')} |")
    for r in rows:
        if r.get("winograd_ran"):
            ran = r["winograd_ran"]
            lines.append(f"{r['row']}: {ran['winograd']} of {ran['winograd'] + ran['direct']} Winograd-eligible 3x3 convs "
                         f"ran Winograd; {ran['direct']} ran cuDNN, faster on their shapes (measured once per shape; "
                         f"HARNESS_WINOGRAD=always forces Winograd everywhere)")
        if r.get("flash_ran"):
            ran = ", ".join(f"{n} on {k}" for k, n in sorted(r["flash_ran"].items()))
            lines.append(f"{r['row']}: flash attention shapes ran {ran} (the fastest per shape, measured once; "
                         f"HARNESS_FLASH=triton|sdpa_flash|sdpa_cudnn forces one)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--skip-compile", action="store_true", help="leave out the two torch.compile rows")
    ap.add_argument("--compile-modes", default="default,reduce-overhead",
                    help="torch.compile modes to time diffusers' UNet under (comma-separated)")
    ap.add_argument("--skip-harness", action="store_true")
    ap.add_argument("--variants", help="comma-separated ladder variants (default: all)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu_table1.py needs a CUDA GPU; run it through the device tool", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0)
    rows: list[dict] = []
    if not args.skip_harness:
        rows += harness_rows(args.iterations, args.variants.split(",") if args.variants else None)
    drows, _ = diffusers_rows(args.iterations, args.skip_compile, tuple(m for m in args.compile_modes.split(",") if m))
    rows += drows
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "torch": torch.__version__, "rows": rows}, indent=1, default=str))
    print(render(rows, gpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
