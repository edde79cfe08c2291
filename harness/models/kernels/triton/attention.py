"""Attention for CUDA tensors: the paper's partially fused softmax and a flash attention forward.

Operands q [B, H, T_q, d], k/v [B, H, T_k, d] with any strides (the diffusers processor's views of
[B, T, H*d] projections need no copy). Both return a [B, H, T_q, d] view of a [B, T_q, H, d]
contiguous tensor, so the processor's transpose(1, 2).reshape(B, T_q, H*d) is free. Head dims that
are not powers of two (SD: 40, 80, 160) are padded to the next power of two inside the kernels with
masked loads (no padded copies in memory). Softmax statistics and accumulators are fp32.

* `optimized_softmax_attention` (section 3.1 of the paper): S = Q K^T is materialized by one batched
  GEMM; a row kernel computes the max m and the sum l of exp(S*scale - m); a second kernel reads S
  again, feeds exp(S*scale - m) straight into the product with V (tensor cores), and divides the
  [T_q, d] result by l. The normalized probability matrix never exists.
* `flash_attention`: one kernel, online softmax over key blocks (FlashAttention-2 style forward);
  no [T_q, T_k] matrix exists. Cross-attention's 77 keys are a masked last block. Block sizes are
  autotuned per (T_q, T_k, d) on the first call (run it once before capturing a CUDA graph).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from harness.models.kernels.triton import next_pow2

_LOG2E = 1.4426950408889634


_FLASH_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                  for bm, bn, w, s in ((128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 2),
                                       (64, 32, 4, 2))]


@triton.autotune(configs=_FLASH_CONFIGS, key=["TQ", "TK", "D"])
@triton.jit
def _flash_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, H, TQ, TK, D, qk_scale,
                      sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
                      so_b, so_h, so_t,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    dmask = offs_d < D
    q = tl.load(q_ptr + b * sq_b + h * sq_h + (offs_m * sq_t)[:, None] + (offs_d * sq_d)[None, :],
                mask=(offs_m < TQ)[:, None] & dmask[None, :], other=0.0)
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, TK, BLOCK_N):
        cols = start_n + offs_n
        nmask = cols < TK
        k = tl.load(k_base + (cols * sk_t)[None, :] + (offs_d * sk_d)[:, None],
                    mask=nmask[None, :] & dmask[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
        s = tl.dot(q, k) * qk_scale  # log2 domain
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + (cols * sv_t)[:, None] + (offs_d * sv_d)[None, :],
                    mask=nmask[:, None] & dmask[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    acc = acc / l_i[:, None]
    o = o_ptr + b * so_b + h * so_h + (offs_m * so_t)[:, None] + offs_d[None, :]
    tl.store(o, acc.to(o_ptr.dtype.element_ty), mask=(offs_m < TQ)[:, None] & dmask[None, :])


@triton.jit
def _row_stats_kernel(s_ptr, m_ptr, l_ptr, R, TK, scale, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Row max m and sum l of exp(S*scale - m) (log2 domain: scale includes log2(e)) over S [R, TK]."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    m_i = tl.zeros([BLOCK_R], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    for start in range(0, TK, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (cols < TK)[None, :]
        s = tl.load(s_ptr + (rows.to(tl.int64) * TK)[:, None] + cols[None, :], mask=mask,
                    other=float("-inf")).to(tl.float32) * scale
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), axis=1)
        m_i = m_new
    tl.store(m_ptr + rows, m_i, mask=rmask)
    tl.store(l_ptr + rows, l_i, mask=rmask)


@triton.jit
def _exp_matmul_kernel(s_ptr, m_ptr, l_ptr, v_ptr, o_ptr, H, TQ, TK, D, scale,
                       sv_b, sv_h, sv_t, sv_d, so_b, so_h, so_t,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """O = (exp(S*scale - m) V) / l for one block of query rows; S [B*H, TQ, TK] read tile by tile."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mmask = offs_m < TQ
    dmask = offs_d < D
    row = bh * TQ + offs_m
    m_i = tl.load(m_ptr + row, mask=mmask, other=0.0)
    l_i = tl.load(l_ptr + row, mask=mmask, other=1.0)
    s_base = s_ptr + (row.to(tl.int64) * TK)[:, None]
    v_base = v_ptr + b * sv_b + h * sv_h
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, TK, BLOCK_N):
        cols = start_n + offs_n
        nmask = cols < TK
        s = tl.load(s_base + cols[None, :], mask=mmask[:, None] & nmask[None, :], other=0.0).to(tl.float32)
        p = tl.where(nmask[None, :], tl.exp2(s * scale - m_i[:, None]), 0.0)
        v = tl.load(v_base + (cols * sv_t)[:, None] + (offs_d * sv_d)[None, :],
                    mask=nmask[:, None] & dmask[None, :], other=0.0)
        acc += tl.dot(p.to(v.dtype), v)
    acc = acc / l_i[:, None]
    o = o_ptr + b * so_b + h * so_h + (offs_m * so_t)[:, None] + offs_d[None, :]
    tl.store(o, acc.to(o_ptr.dtype.element_ty), mask=mmask[:, None] & dmask[None, :])


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"triton attention takes [B, H, T, d] operands, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-1] != v.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"triton attention needs one head dim and matching keys/values, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] > 256:
        raise ValueError(f"triton attention supports head dims up to 256, got {q.shape[-1]}")


def _out(q: torch.Tensor) -> torch.Tensor:
    b, h, t, d = q.shape
    return torch.empty((b, t, h, d), device=q.device, dtype=q.dtype)


def _flash_config(block_d: int, t_k: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) by padded head dim."""
    block_n = 64 if t_k > 64 else max(16, next_pow2(t_k))
    if block_d <= 64:
        return 128, block_n, 4, 3
    if block_d <= 128:
        return 128, block_n, 8, 3
    return 64, min(block_n, 64), 8, 2


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(Q K^T * scale) V by one flash kernel; returns [B, H, T_q, d] (a view, see module doc)."""
    _check(q, k, v)
    b, h, t_q, d = q.shape
    t_k = k.shape[-2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    o = _out(q)
    block_d = max(16, next_pow2(d))
    grid = lambda meta: (triton.cdiv(t_q, meta["BLOCK_M"]), b * h)  # noqa: E731 - autotuned block sizes
    _flash_fwd_kernel[grid](q, k, v, o, h, t_q, t_k, d, scale * _LOG2E, *q.stride(), *k.stride(), *v.stride(),
                            o.stride(0), o.stride(2), o.stride(1), BLOCK_D=block_d)
    return o.transpose(1, 2)


def optimized_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                scale: float | None = None) -> torch.Tensor:
    """The paper's partially fused softmax: S = Q K^T (one batched GEMM, materialized), a row-statistics
    kernel, then exp(S*scale - m) V / l in one kernel. Returns [B, H, T_q, d] (a view)."""
    _check(q, k, v)
    b, h, t_q, d = q.shape
    t_k = k.shape[-2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)).reshape(b * h * t_q, t_k)  # unscaled scores, q's dtype
    rows = b * h * t_q
    m = torch.empty(rows, device=q.device, dtype=torch.float32)
    l = torch.empty(rows, device=q.device, dtype=torch.float32)
    block_r = 16
    block_k = min(1024, max(16, next_pow2(t_k)))
    _row_stats_kernel[(triton.cdiv(rows, block_r),)](s, m, l, rows, t_k, scale * _LOG2E,
                                                     BLOCK_R=block_r, BLOCK_K=block_k, num_warps=4)
    o = _out(q)
    block_d = max(16, next_pow2(d))
    block_m, block_n, warps, stages = _flash_config(block_d, t_k)
    grid = (triton.cdiv(t_q, block_m), b * h)
    _exp_matmul_kernel[grid](s, m, l, v, o, h, t_q, t_k, d, scale * _LOG2E, *v.stride(),
                             o.stride(0), o.stride(2), o.stride(1),
                             BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=warps, num_stages=stages)
    return o.transpose(1, 2)
