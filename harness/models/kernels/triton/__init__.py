"""Triton (CUDA) kernels for the four optimizations, used when a tensor is on a CUDA device in fp16/bf16.

- `groupnorm`: fused GroupNorm (+ the SiLU that follows it in the UNet's resnet blocks, + the time
  embedding added before `norm2`): two kernels, group statistics and normalize/affine/SiLU.
- `geglu`: fused GEGLU, hidden * gelu(gate) in one pass over the projection's output.
- `attention`: the paper's partially fused softmax (row-statistics kernel over the materialized
  scores, then exp(S - m) fed into the product with V and normalized on the output) and a flash
  attention forward (online softmax, head dims padded to a power of two inside the kernel).
- `winograd`: Winograd F(4x4, 3x3) for channels-last tensors: a Triton input transform, one batched
  GEMM over the 36 transform positions, and a Triton output transform with the bias.
- `resnet`: a diffusers ResnetBlock2D forward that uses the fused GroupNorm+SiLU.

`enabled(t)` says whether a tensor goes to these kernels: CUDA, fp16/bf16, Triton importable, and the
environment variable HARNESS_TRITON not set to 0. Every other tensor (the CPU paths) keeps the PyTorch
implementations in `harness.models.kernels`.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch

_HALF = (torch.float16, torch.bfloat16)


@lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton imports and a CUDA device exists."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return torch.cuda.is_available()


def enabled(t: torch.Tensor) -> bool:
    """Whether `t` is computed by the Triton kernels (CUDA fp16/bf16, Triton present, not disabled)."""
    return (t.is_cuda and t.dtype in _HALF and os.environ.get("HARNESS_TRITON", "1") != "0"
            and triton_available())


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
