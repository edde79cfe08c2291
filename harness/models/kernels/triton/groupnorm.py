"""Fused GroupNorm (+ optional per-(n, c) add before it, + optional SiLU after it) for CUDA tensors.

Two kernels over a [N, C, HW] view with any strides (channels-last or contiguous NCHW):
1. statistics: program (n*G + g, s) sums x and x^2 (fp32) over a chunk of BLOCK_HW positions and the
   group's C/G channels, and writes the two partial sums;
2. normalize: program (n*G + g, s) reduces the group's S partial sums to mean and 1/std, then writes
   (x - mean) * rstd * weight + bias, SiLU'd when asked, for the same chunk (read again from L2).
The input is read twice and the output written once; nothing else touches device memory. The UNet's
resnet blocks use `add` for the time embedding (norm2(h + temb)) and `silu` for the nonlinearity.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from harness.models.kernels.triton import next_pow2


@triton.jit
def _gn_stats_kernel(x_ptr, add_ptr, ws_ptr, C, HW, G, CPG, S, stride_n, stride_c, stride_hw,
                     HAS_ADD: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_CG: tl.constexpr):
    ng = tl.program_id(0)
    s = tl.program_id(1)
    n = ng // G
    g = ng % G
    hw = s * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cg = tl.arange(0, BLOCK_CG)
    c = g * CPG + cg
    mask = (hw < HW)[:, None] & (cg < CPG)[None, :]
    x = tl.load(x_ptr + n * stride_n + (hw * stride_hw)[:, None] + (c * stride_c)[None, :], mask=mask,
                other=0.0).to(tl.float32)
    if HAS_ADD:
        a = tl.load(add_ptr + n * C + c, mask=cg < CPG, other=0.0).to(tl.float32)
        x = tl.where(mask, x + a[None, :], 0.0)
    total = tl.sum(tl.sum(x, axis=1), axis=0)
    total_sq = tl.sum(tl.sum(x * x, axis=1), axis=0)
    tl.store(ws_ptr + (ng * S + s) * 2, total)
    tl.store(ws_ptr + (ng * S + s) * 2 + 1, total_sq)


@triton.jit
def _gn_apply_kernel(x_ptr, add_ptr, ws_ptr, w_ptr, b_ptr, y_ptr, C, HW, G, CPG, S, eps,
                     stride_n, stride_c, stride_hw, y_stride_n, y_stride_c, y_stride_hw,
                     HAS_ADD: tl.constexpr, HAS_AFFINE: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_HW: tl.constexpr, BLOCK_CG: tl.constexpr, BLOCK_S: tl.constexpr):
    ng = tl.program_id(0)
    s = tl.program_id(1)
    n = ng // G
    g = ng % G
    si = tl.arange(0, BLOCK_S)
    part = tl.load(ws_ptr + (ng * S + si) * 2, mask=si < S, other=0.0)
    part_sq = tl.load(ws_ptr + (ng * S + si) * 2 + 1, mask=si < S, other=0.0)
    count = (HW * CPG).to(tl.float32)
    mean = tl.sum(part, axis=0) / count
    var = tl.maximum(tl.sum(part_sq, axis=0) / count - mean * mean, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)

    hw = s * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cg = tl.arange(0, BLOCK_CG)
    c = g * CPG + cg
    cmask = cg < CPG
    mask = (hw < HW)[:, None] & cmask[None, :]
    x = tl.load(x_ptr + n * stride_n + (hw * stride_hw)[:, None] + (c * stride_c)[None, :], mask=mask,
                other=0.0).to(tl.float32)
    if HAS_ADD:
        a = tl.load(add_ptr + n * C + c, mask=cmask, other=0.0).to(tl.float32)
        x = x + a[None, :]
    if HAS_AFFINE:
        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        scale = w * rstd
        shift = b - mean * scale
    else:
        scale = tl.zeros([BLOCK_CG], dtype=tl.float32) + rstd
        shift = tl.zeros([BLOCK_CG], dtype=tl.float32) - mean * rstd
    y = x * scale[None, :] + shift[None, :]
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    tl.store(y_ptr + n * y_stride_n + (hw * y_stride_hw)[:, None] + (c * y_stride_c)[None, :],
             y.to(y_ptr.dtype.element_ty), mask=mask)


def _nchw_view_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(stride_n, stride_c, stride_hw) when t's spatial dims flatten to one stride, else None."""
    if t.dim() == 3:
        return t.stride(0), t.stride(1), t.stride(2)
    if t.dim() == 4:
        sn, sc, sh, sw = t.stride()
        if t.shape[2] == 1 or sh == t.shape[3] * sw:
            return sn, sc, sw
        return None
    if t.dim() == 2:
        return t.stride(0), t.stride(1), 0
    return None


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, silu: bool = False,
               add: torch.Tensor | None = None) -> torch.Tensor:
    """GroupNorm of x [N, C, *] (CUDA fp16/bf16; 2-, 3- or 4-D); `add` [N, C] (or [N, C, 1, 1]) is
    added to x first; `silu` applies SiLU to the result. The output keeps x's memory format."""
    if x.dim() not in (2, 3, 4):
        raise ValueError(f"triton group_norm takes [N, C], [N, C, L] or [N, C, H, W], got {tuple(x.shape)}")
    batch, channels = x.shape[0], x.shape[1]
    if channels % num_groups != 0:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {num_groups} groups")
    strides = _nchw_view_strides(x)
    if strides is None:
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x.contiguous()
        strides = _nchw_view_strides(x)
    y = torch.empty_like(x)
    y_strides = _nchw_view_strides(y)
    if y_strides is None:
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        y_strides = _nchw_view_strides(y)
    hw = x[0, 0].numel()
    cpg = channels // num_groups
    block_cg = next_pow2(cpg)
    block_hw = max(16, min(next_pow2(hw), 4096 // block_cg))
    n_split = triton.cdiv(hw, block_hw)
    ws = torch.empty((batch * num_groups, n_split, 2), device=x.device, dtype=torch.float32)
    if add is not None:
        add = add.reshape(batch, channels).contiguous()
    has_add = add is not None
    has_affine = weight is not None and bias is not None
    if (weight is None) != (bias is None):
        raise ValueError("triton group_norm needs both weight and bias, or neither")
    grid = (batch * num_groups, n_split)
    _gn_stats_kernel[grid](x, add if has_add else x, ws, channels, hw, num_groups, cpg, n_split, *strides,
                           HAS_ADD=has_add, BLOCK_HW=block_hw, BLOCK_CG=block_cg, num_warps=4)
    _gn_apply_kernel[grid](x, add if has_add else x, ws, weight if has_affine else x, bias if has_affine else x,
                           y, channels, hw, num_groups, cpg, n_split, float(eps), *strides, *y_strides,
                           HAS_ADD=has_add, HAS_AFFINE=has_affine, SILU=bool(silu), BLOCK_HW=block_hw,
                           BLOCK_CG=block_cg, BLOCK_S=next_pow2(n_split), num_warps=4)
    return y
