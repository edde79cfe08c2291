"""Time artifact conversions and a cache hit; print a table.

    python bench/export.py                       # SD 1.4, every ladder row, .tflite (fp16 weights)
    python bench/export.py --format all          # .tflite and .mlpackage
    python bench/export.py --model tiny          # the small config: seconds to minutes
    python bench/export.py --cache DIR --keep    # keep the artifacts (default: a fresh temporary cache)
    python bench/export.py --dtype int8          # int8 weight-only artifacts
    python bench/export.py --component all       # also the text encoder and the VAE decoder

Each conversion runs alone in its own process (as `harness export` does); at SD 1.4 size one takes
1 to 2.5 minutes and 13 to 18 GiB, so run this alone on the machine. Columns: conversion wall time
(the worker process, from request to artifact in the cache), of which the converter itself and the
reference check, the worker's peak RSS, the artifact's size, weights and planned tensor MB, the
reference error, and the time of a cache hit (lookup and sha256 of the file, no conversion).
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.export import COMPONENTS, DTYPES, FORMATS, ExportError, ensure_artifact, plan_artifacts  # noqa: E402
from harness.protocol import ModelRef  # noqa: E402
from harness.variants import LADDER  # noqa: E402

MB = float(1 << 20)


def children_peak_rss_bytes() -> int:
    """Peak RSS of the largest finished child process so far (the conversion workers)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd14", help="sd14 (default) or tiny")
    parser.add_argument("--format", default="tflite", help="tflite | coreml | all")
    parser.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    parser.add_argument("--component", default="unet", choices=[*COMPONENTS, "all"],
                        help="unet (default), text_encoder, vae_decoder or all")
    parser.add_argument("--cache", type=Path, help="cache directory (default: a fresh temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary cache")
    parser.add_argument("--rows", default="all", help="comma-separated ladder rows (default: all five)")
    args = parser.parse_args(argv)
    formats = list(FORMATS) if args.format == "all" else [args.format]
    rows = list(LADDER) if args.rows == "all" else [(n, f) for n, f in LADDER if n in args.rows.split(",")]
    cache = args.cache or Path(tempfile.mkdtemp(prefix="harness-bench-export-"))
    model = ModelRef(name=args.model)
    components = list(COMPONENTS) if args.component == "all" else [args.component]
    print(f"model {args.model}, {args.dtype} weights, formats {', '.join(formats)}, cache {cache}", file=sys.stderr)

    table = []
    for planned in plan_artifacts(model, rows, formats, args.dtype, cache, components):
        name, flags = planned.variants[0]
        shares = ", ".join(n for n, _ in planned.variants[1:])
        comp = planned.component
        print(f"converting {name} -> {comp} {planned.fmt} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            art = ensure_artifact(model, flags, planned.fmt, args.dtype, cache, variant=name, component=comp)
        except ExportError as exc:
            table.append((name, comp, planned.fmt, shares, f"FAILED: {str(exc)[:80]}", "", "", "", "", "", "", "",
                          ""))
            continue
        wall = time.perf_counter() - t0
        peak = children_peak_rss_bytes()
        t1 = time.perf_counter()
        hit = ensure_artifact(model, flags, planned.fmt, args.dtype, cache, variant=name, component=comp)
        hit_s = time.perf_counter() - t1
        assert hit.cached, "the second call should have been a cache hit"
        ref = art.meta.get("reference", {})
        err = ref["rel_error"] if ref.get("rel_error") is not None else ref.get("torch_program_rel_error")
        table.append((name, comp, planned.fmt, shares, "cached before" if art.cached else "built", f"{wall:.1f}",
                      f"{art.meta.get('convert_seconds', 0):.1f}", f"{art.meta.get('check_seconds', 0):.1f}",
                      f"{peak / 2**30:.1f}", f"{art.size_bytes / MB:.0f}",
                      f"{art.meta.get('weight_bytes', 0) / MB:.0f}/{art.meta.get('planned_tensor_bytes', 0) / MB:.0f}",
                      "" if err is None else f"{err:.2g}", f"{hit_s:.2f}"))

    header = ("row", "component", "format", "shared with", "status", "wall s", "convert s", "check s", "peak GiB (max so far)",
              "file MB", "weights/tensors MB", "ref. err", "cache hit s")
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    if args.cache is None and not args.keep:
        shutil.rmtree(cache, ignore_errors=True)
    elif args.cache is None:
        print(f"artifacts kept in {cache}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
