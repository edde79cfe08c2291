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


def _split_head_dim(d: int) -> tuple[int, int]:
    """(D1, D2): the head dim as a power-of-two chunk plus a smaller power-of-two chunk (0 when d is a
    power of two), each >= 16 (tl.dot's least K): 40 -> 32 + 16, 80 -> 64 + 16, 160 -> 128 + 32. The
    kernel computes on D1 + D2 columns instead of next_pow2(d): 48 of 64 at d=40, 80 of 128 at d=80,
    160 of 256 at d=160. A head dim under 16 is one padded chunk of 16 (D1 > d, masked)."""
    d1 = max(16, 1 << (int(d).bit_length() - 1))
    rest = d - d1
    return d1, (0 if rest <= 0 else max(16, next_pow2(rest)))


_FLASH_CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                  for bm, bn, w, s in ((128, 64, 4, 3), (128, 64, 4, 4), (128, 128, 8, 3), (128, 64, 8, 3),
                                       (128, 128, 4, 3), (64, 64, 4, 4), (64, 128, 4, 3), (128, 32, 4, 4),
                                       (128, 32, 4, 3), (128, 32, 8, 3), (64, 32, 4, 3))]


def _prune_flash_configs(configs, named_args, **kwargs):
    """Key blocks wider than the (padded) key count only add masked work (cross-attention: 77 keys).
    Head dim 40 (chunks 32 + 16) keeps only 32-key blocks: with 64 or 128 it computed wrong results (and
    one config an illegal address) on an H100 under Triton 3.6, while the interpreter, d=80 (64 + 16) and
    d=160 (128 + 32) agreed with SDPA (bench/gpu_kernels.py checks every SD shape)."""
    args = {**named_args, **kwargs}
    cap = max(16, next_pow2(args["TK"]))
    if (args.get("D1"), args.get("D2")) == (32, 16):
        cap = 32
    kept = [c for c in configs if c.kwargs["BLOCK_N"] <= cap]
    return kept or [c for c in configs if c.kwargs["BLOCK_N"] == 32]


@triton.autotune(configs=_FLASH_CONFIGS, key=["TQ", "TK", "D"],
                 prune_configs_by={"early_config_prune": _prune_flash_configs})
@triton.heuristics({"EVEN_N": lambda args: args["TK"] % args["BLOCK_N"] == 0})
@triton.jit
def _flash_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, H, TQ, TK, qk_scale,
                      sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, so_b, so_h, so_t,
                      D, D1: tl.constexpr, D2: tl.constexpr, PAD1: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr):
    """One block of BLOCK_M query rows of one (batch, head) against all keys, online softmax (log2
    domain, fp32 statistics and accumulators). The head dim (unit stride) is two chunks D1 + D2.
    PAD1: D1 > D (one padded chunk, its columns masked); D itself stays a runtime value."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mmask = offs_m < TQ
    d1 = tl.arange(0, D1)
    q_rows = q_ptr + b * sq_b + h * sq_h + (offs_m * sq_t)[:, None]
    d1mask = d1 < D
    if PAD1:
        q1 = tl.load(q_rows + d1[None, :], mask=mmask[:, None] & d1mask[None, :], other=0.0)
    else:
        q1 = tl.load(q_rows + d1[None, :], mask=mmask[:, None], other=0.0)
    k_base = k_ptr + b * sk_b + h * sk_h
    v_base = v_ptr + b * sv_b + h * sv_h
    acc1 = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
    if D2 > 0:
        d2 = D1 + tl.arange(0, D2)
        d2mask = d2 < D
        q2 = tl.load(q_rows + d2[None, :], mask=mmask[:, None] & d2mask[None, :], other=0.0)
        acc2 = tl.zeros([BLOCK_M, D2], dtype=tl.float32)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, TK, BLOCK_N):
        cols = start_n + offs_n
        k_cols = k_base + (cols * sk_t)[None, :]
        v_rows = v_base + (cols * sv_t)[:, None]
        if PAD1:
            k1 = tl.load(k_cols + d1[:, None], mask=d1mask[:, None] & (cols < TK)[None, :], other=0.0)
        elif EVEN_N:
            k1 = tl.load(k_cols + d1[:, None])
        else:
            k1 = tl.load(k_cols + d1[:, None], mask=(cols < TK)[None, :], other=0.0)
        s = tl.dot(q1, k1)
        if D2 > 0:
            if EVEN_N:
                k2 = tl.load(k_cols + d2[:, None], mask=d2mask[:, None], other=0.0)
            else:
                k2 = tl.load(k_cols + d2[:, None], mask=d2mask[:, None] & (cols < TK)[None, :], other=0.0)
            s = tl.dot(q2, k2, s)
        if not EVEN_N:
            s = tl.where((cols < TK)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
        p = tl.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if PAD1:
            v1 = tl.load(v_rows + d1[None, :], mask=d1mask[None, :] & (cols < TK)[:, None], other=0.0)
        elif EVEN_N:
            v1 = tl.load(v_rows + d1[None, :])
        else:
            v1 = tl.load(v_rows + d1[None, :], mask=(cols < TK)[:, None], other=0.0)
        p = p.to(v1.dtype)
        acc1 = tl.dot(p, v1, acc1 * alpha[:, None])
        if D2 > 0:
            if EVEN_N:
                v2 = tl.load(v_rows + d2[None, :], mask=d2mask[None, :], other=0.0)
            else:
                v2 = tl.load(v_rows + d2[None, :], mask=d2mask[None, :] & (cols < TK)[:, None], other=0.0)
            acc2 = tl.dot(p, v2, acc2 * alpha[:, None])
        m_i = m_new
    inv_l = 1.0 / l_i
    o_rows = o_ptr + b * so_b + h * so_h + (offs_m * so_t)[:, None]
    if PAD1:
        tl.store(o_rows + d1[None, :], (acc1 * inv_l[:, None]).to(o_ptr.dtype.element_ty),
                 mask=mmask[:, None] & d1mask[None, :])
    else:
        tl.store(o_rows + d1[None, :], (acc1 * inv_l[:, None]).to(o_ptr.dtype.element_ty), mask=mmask[:, None])
    if D2 > 0:
        tl.store(o_rows + d2[None, :], (acc2 * inv_l[:, None]).to(o_ptr.dtype.element_ty),
                 mask=mmask[:, None] & d2mask[None, :])


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
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))  # the kernel needs unit-stride d
    b, h, t_q, d = q.shape
    t_k = k.shape[-2]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    o = _out(q)
    d1, d2 = _split_head_dim(d)
    grid = lambda meta: (triton.cdiv(t_q, meta["BLOCK_M"]), b * h)  # noqa: E731 - autotuned block sizes
    _flash_fwd_kernel[grid](q, k, v, o, h, t_q, t_k, scale * _LOG2E, q.stride(0), q.stride(1), q.stride(2),
                            k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
                            o.stride(0), o.stride(2), o.stride(1), D=d, D1=d1, D2=d2, PAD1=d1 > d)
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
