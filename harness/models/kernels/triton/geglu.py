"""Fused GEGLU for CUDA tensors: out = hidden * gelu(gate) with (hidden, gate) = proj_out.chunk(2, -1),
in one pass (the exact erf GELU, computed in fp32): reads the [M, 2F] projection once, writes [M, F]."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _geglu_kernel(h_ptr, y_ptr, M, F, stride_hm, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_f = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = (rows < M)[:, None] & (cols < F)[None, :]
    base = h_ptr + (rows * stride_hm)[:, None] + cols[None, :]
    hidden = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(base + F, mask=mask, other=0.0).to(tl.float32)
    gelu = 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))
    tl.store(y_ptr + (rows * F)[:, None] + cols[None, :], (hidden * gelu).to(y_ptr.dtype.element_ty), mask=mask)


def geglu(proj_out: torch.Tensor) -> torch.Tensor:
    """hidden * gelu(gate) for proj_out [..., 2F] (CUDA fp16/bf16) -> [..., F]."""
    two_f = proj_out.shape[-1]
    if two_f % 2:
        raise ValueError(f"GEGLU needs an even last dimension, got {two_f}")
    f = two_f // 2
    h = proj_out.reshape(-1, two_f)
    if h.stride(-1) != 1:
        h = h.contiguous()
    m = h.shape[0]
    y = torch.empty((m, f), device=h.device, dtype=h.dtype)
    block_m, block_f = 16, 256
    grid = (triton.cdiv(m, block_m), triton.cdiv(f, block_f))
    _geglu_kernel[grid](h, y, m, f, h.stride(0), BLOCK_M=block_m, BLOCK_F=block_f, num_warps=4)
    return y.reshape(*proj_out.shape[:-1], f)
