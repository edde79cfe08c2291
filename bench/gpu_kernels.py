"""Each Triton kernel's error and speed against the PyTorch op it replaces, on SD 1.4 shapes (CUDA).

    python bench/gpu_kernels.py [--dtype fp16] [--json OUT.json] [--only winograd]

Error: ||out - ref|| / ||ref|| against an fp32 (fp64 for convolutions) reference on fresh random
inputs, for the Triton kernel and for the PyTorch op. Time: GPU time per call, from 10 calls captured
in a CUDA graph and replayed under triton.testing.do_bench (median; CUDA events). PyTorch ops: F.group_norm + F.silu (channels-last), chunk +
F.gelu + mul, softmax(QK^T)V in three ops, F.scaled_dot_product_attention (PyTorch's own flash /
memory-efficient kernels), F.conv2d (cuDNN, channels-last).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def graph_ms(fn, calls: int = 10) -> float:
    """GPU time of one fn() call: `calls` calls captured in a CUDA graph, replays timed by
    triton.testing.do_bench (median, CUDA events, L2 flushed between replays), divided by `calls`.
    (Timing eager calls would measure the host's launch overhead for the small kernels.)"""
    import triton.testing

    fn()  # compile / autotune outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return triton.testing.do_bench(graph.replay, warmup=10, rep=60, return_mode="median") / calls


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--only", help="only cases whose name contains this")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu_kernels.py needs a CUDA GPU; run it through the device tool", file=sys.stderr)
        return 2
    import triton.testing

    from harness.models.kernels.triton.check import all_cases, run_case

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    rows = []
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}, {args.dtype}")
    for case in all_cases(dtype, "cuda"):
        if args.only and args.only not in case.name:
            continue
        try:
            row = run_case(case, seed=0)
            a = row.pop("args")
            row["triton_ms"] = graph_ms(lambda: case.triton_fn(*a))
            row["torch_ms"] = graph_ms(lambda: case.torch_fn(*a))
            row["speedup"] = row["torch_ms"] / row["triton_ms"]
            row["ok"] = row["triton_rel_err"] <= row["tolerance"]
            del a
        except Exception as exc:  # noqa: BLE001 - one failing case must not hide the others
            row = {"case": case.name, "error": f"{type(exc).__name__}: {exc}"[:300], "ok": False}
        rows.append(row)
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"{'case':52s} {'err triton':>10s} {'err torch':>10s} {'triton ms':>10s} {'torch ms':>10s} {'x':>6s} ok")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:52s} ERROR {r['error']}")
            continue
        print(f"{r['case']:52s} {r['triton_rel_err']:10.2e} {r['torch_rel_err']:10.2e} {r['triton_ms']:10.4f} "
              f"{r['torch_ms']:10.4f} {r['speedup']:6.2f} {'ok' if r['ok'] else 'FAIL'}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
