#!/usr/bin/env python3
"""Minimal reproducer: LiteRT's host GPU accelerator crashes on a STABLEHLO_COMPOSITE.

Builds two one-op graphs with litert-torch, RMS normalization of a [1, 4, 16] tensor, written out
and inside the `odml.rms_norm` composite (which ML Drift lists as supported), and compiles each on
the GPU accelerator in a child process (harness.runtimes.litert_gpu.probe). Prints one line each:

    without the composite: fully accelerated (SwiftShader Device (Subzero) (CPU emulation, Vulkan))
    with the odml.rms_norm composite: the GPU engine crashed (signal 11) compiling the graph on ...

Seen with ai-edge-litert 2.1.6 to 2.3.0, on SwiftShader and on an NVIDIA H100 through Vulkan, for
every composite (odml.group_norm, odml.scaled_dot_product_attention, odml.rms_norm). Cause, read in
a debugger: while it builds its kernel, the accelerator marks the composite's decomposition subgraph
as delegation-skippable through `tflite::Subgraph::subgraphs_`, which its own build of the class
keeps at offset 0x230; the runtime library's Subgraph keeps that vector at 0xf0 and holds 0 at
0x230, so the accelerator dereferences a null pointer. Exit code 0 when both lines came out as above.

    python scripts/gpu_composite_repro.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(out: Path) -> tuple[Path, Path]:
    import litert_torch
    import torch
    from litert_torch.hlfb import StableHLOCompositeBuilder
    from torch import nn

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    class Plain(nn.Module):
        def forward(self, x):
            return rms(x, torch.ones(x.shape[-1]))

    class Composite(nn.Module):
        def forward(self, x):
            builder = StableHLOCompositeBuilder("odml.rms_norm", {"epsilon": 1e-5})
            x, w = builder.mark_inputs(x, torch.ones(x.shape[-1]))
            return builder.mark_outputs(rms(x, w))

    x = (torch.randn(1, 4, 16),)
    with torch.no_grad():
        plain, comp = out / "rms_plain.tflite", out / "rms_composite.tflite"
        litert_torch.convert(Plain().eval(), x).export(str(plain))
        litert_torch.convert(Composite().eval(), x).export(str(comp))
    return plain, comp


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="write the two .tflite files here (default: a temp dir)")
    args = parser.parse_args(argv)
    from harness.runtimes.litert_gpu import probe

    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        plain, comp = build(out)
        first, second = probe(plain), probe(comp)
        print(f"without the composite: {first.summary()}")
        print(f"with the odml.rms_norm composite: {second.summary()}")
    return 0 if first.fully_accelerated and second.crashed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
