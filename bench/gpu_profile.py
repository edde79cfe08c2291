"""Where the GPU time of one SD 1.4 UNet iteration goes (batch 2, fp16, CUDA): kernel time by category
for harness ladder rows and for diffusers' UNet under torch.compile, from torch.profiler (CUPTI).

    python bench/gpu_profile.py [--variants flash,winograd] [--no-compile] [--top 15] [--json OUT]

Each model runs 3 eager iterations under the profiler after warm-up; the table gives the GPU kernel
time per iteration by category (attention, convolution, GEMM, normalization, GEGLU/GELU, fused
elementwise from Inductor, other elementwise, copies/layout), the kernel count, and the sum; the
top kernels by time follow. Kernel time excludes launch gaps, so the sum approximates a CUDA-graph
replay of the same iteration.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CATEGORIES = [  # first match wins; patterns on the lower-cased kernel name
    ("attention", r"flash|fmha|attn|attention|_exp_matmul|_row_stats|softmax"),
    ("winograd transforms", r"_input_transform|_output_transform"),
    ("convolution", r"conv|implicit|fprop|dgrad|winograd|nchwtonhwc|nhwctonchw"),
    ("normalization", r"_gn_|group_norm|groupnorm|layer_norm|layernorm|norm"),
    ("geglu/gelu", r"geglu|gelu"),
    ("gemm", r"gemm|cutlass|sm90_xmma|sm80_xmma|cublas|matmul|ampere|hopper|nvjet"),
    ("inductor fused", r"^triton_"),
    ("copy/layout", r"copy|transpose|permute|cat|contiguous"),
    ("elementwise", r"elementwise|vectorized|reduce|unrolled"),
]


def category(name: str) -> str:
    low = name.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, low):
            return cat
    return "other"


def profile(fn, iterations: int = 3) -> dict:
    from torch.profiler import ProfilerActivity, profile as tprofile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iterations):
            fn()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type.name != "CUDA":
            continue
        dur_ms = ev.device_time_total / 1000 if hasattr(ev, "device_time_total") else ev.cuda_time_total / 1000
        kernels[ev.name][0] += dur_ms / iterations
        kernels[ev.name][1] += 1 / iterations
    cats: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, (ms, n) in kernels.items():
        c = category(name)
        cats[c][0] += ms
        cats[c][1] += n
    return {"total_ms": sum(v[0] for v in kernels.values()), "categories": {k: v for k, v in cats.items()},
            "kernels": sorted(([k, v[0], v[1]] for k, v in kernels.items()), key=lambda r: -r[1])}


def harness_model(variant: str):
    from harness.suite import expand, load_suite
    from harness.models.kernels.epilogue import gemm_1x1_convs
    from harness.models.patch import apply_flags, keep_channels_last
    from harness.models.unet import build_unet, example_inputs
    from harness.variants import Flags

    suite = load_suite(ROOT / "suites" / "table1_gpu.yaml")
    job = next(j for j in expand(suite, run_id="profile").jobs if variant in j.variant)
    spec = job.spec
    unet = build_unet(spec.model, None, spec.model.seed, "fp16")
    apply_flags(unet, Flags.from_dict(spec.flags))
    unet = unet.cuda().to(memory_format=torch.channels_last)
    keep_channels_last(unet)  # as the harness's unet_iteration does on CUDA
    gemm_1x1_convs(unet)
    inputs = example_inputs(spec.model, spec.model.seed, "fp16", "cuda")
    return job.variant, lambda: unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2], return_dict=False)[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="flash,winograd", help="ladder variants to profile (substrings)")
    ap.add_argument("--no-compile", action="store_true", help="leave out diffusers under torch.compile")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu_profile.py needs a CUDA GPU; run it through the device tool", file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    results = {}
    for v in [s for s in args.variants.split(",") if s]:
        name, fn = harness_model(v)
        results[f"harness {name}"] = profile(fn)
        del fn
        torch.cuda.empty_cache()
    if not args.no_compile:
        from harness.models.unet import build_unet, example_inputs

        unet = build_unet("sd14", None, 0, "fp16").cuda().to(memory_format=torch.channels_last)
        inputs = example_inputs("sd14", 0, "fp16", "cuda")
        compiled = torch.compile(unet)
        results["diffusers torch.compile"] = profile(
            lambda: compiled(inputs[0], inputs[1], encoder_hidden_states=inputs[2], return_dict=False)[0])
    names = list(results)
    cats = [c for c, _ in CATEGORIES] + ["other"]
    print(f"GPU kernel ms per iteration ({torch.cuda.get_device_name(0)}, torch {torch.__version__})")
    print(f"{'category':22s}" + "".join(f" | {n[-28:]:>28s}" for n in names))
    for c in cats:
        cells = [results[n]["categories"].get(c, [0.0, 0]) for n in names]
        if not any(ms for ms, _ in cells):
            continue
        print(f"{c:22s}" + "".join(f" | {ms:9.3f} ms ({int(round(k)):5d} k)".rjust(31) for ms, k in cells))
    print(f"{'total':22s}" + "".join(f" | {results[n]['total_ms']:9.3f} ms".rjust(31) for n in names))
    for n in names:
        print(f"\n{n}: top {args.top} kernels")
        for name, ms, k in results[n]["kernels"][:args.top]:
            print(f"  {ms:8.3f} ms {k:5.0f}x  [{category(name)}] {name[:110]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
