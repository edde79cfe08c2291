"""Winograd F(4x4, 3x3) for channels-last CUDA tensors: Triton input transform -> one batched GEMM
over the 36 transform positions (cuBLAS) -> Triton output transform (+ bias), filter transform
precomputed (`harness.models.kernels.winograd.winograd_filter_transform`).

The transform matrices are those of `cook_toom_matrices(4)` (points 0, 1, -1, 2, -2, inf), written
out as straight-line code below (`B_T` and `A_T` hold them; a CPU test checks they match the
Cook-Toom derivation). Transforms are computed in fp32 and stored in the input dtype; the GEMM is in
the input dtype with fp32 accumulation.

Layout: x [N, C, H, W] in channels-last memory (any strides with a flattenable H, W work); the tile
t = (n, tile_row, tile_col) index runs over N * tiles_h * tiles_w; V [36, T, C_in]; U [36, C_in, C_out];
M = V @ U [36, T, C_out]; y [N, C_out, H_out, W_out] allocated channels-last.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

B_T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
A_T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]


@triton.jit
def _input_transform_kernel(x_ptr, v_ptr, T, C, H, W, tiles_h, tiles_w, pad,
                            stride_n, stride_c, stride_h, stride_w,
                            BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    tmask = t < T
    per_img = tiles_h * tiles_w
    n = t // per_img
    rem = t % per_img
    r0 = (rem // tiles_w) * 4 - pad
    c0 = (rem % tiles_w) * 4 - pad
    rv0 = ((r0 + 0 >= 0) & (r0 + 0 < H))[:, None]
    rv1 = ((r0 + 1 >= 0) & (r0 + 1 < H))[:, None]
    rv2 = ((r0 + 2 >= 0) & (r0 + 2 < H))[:, None]
    rv3 = ((r0 + 3 >= 0) & (r0 + 3 < H))[:, None]
    rv4 = ((r0 + 4 >= 0) & (r0 + 4 < H))[:, None]
    rv5 = ((r0 + 5 >= 0) & (r0 + 5 < H))[:, None]
    cv0 = ((c0 + 0 >= 0) & (c0 + 0 < W))[:, None]
    cv1 = ((c0 + 1 >= 0) & (c0 + 1 < W))[:, None]
    cv2 = ((c0 + 2 >= 0) & (c0 + 2 < W))[:, None]
    cv3 = ((c0 + 3 >= 0) & (c0 + 3 < W))[:, None]
    cv4 = ((c0 + 4 >= 0) & (c0 + 4 < W))[:, None]
    cv5 = ((c0 + 5 >= 0) & (c0 + 5 < W))[:, None]
    cmask = tmask[:, None] & (c < C)[None, :]
    smask = cmask
    base = (x_ptr + (n * stride_n + r0 * stride_h + c0 * stride_w)[:, None]
            + (c * stride_c)[None, :])
    pos_stride = T * C
    v_base = v_ptr + (t * C)[:, None] + c[None, :]
    d00 = tl.load(base + 0 * stride_h + 0 * stride_w, mask=cmask & rv0 & cv0, other=0.0).to(tl.float32)
    d10 = tl.load(base + 1 * stride_h + 0 * stride_w, mask=cmask & rv1 & cv0, other=0.0).to(tl.float32)
    d20 = tl.load(base + 2 * stride_h + 0 * stride_w, mask=cmask & rv2 & cv0, other=0.0).to(tl.float32)
    d30 = tl.load(base + 3 * stride_h + 0 * stride_w, mask=cmask & rv3 & cv0, other=0.0).to(tl.float32)
    d40 = tl.load(base + 4 * stride_h + 0 * stride_w, mask=cmask & rv4 & cv0, other=0.0).to(tl.float32)
    d50 = tl.load(base + 5 * stride_h + 0 * stride_w, mask=cmask & rv5 & cv0, other=0.0).to(tl.float32)
    t00 = 4.0 * d00 - 5.0 * d20 + d40
    t10 = -4.0 * d10 - 4.0 * d20 + d30 + d40
    t20 = 4.0 * d10 - 4.0 * d20 - d30 + d40
    t30 = -2.0 * d10 - d20 + 2.0 * d30 + d40
    t40 = 2.0 * d10 - d20 - 2.0 * d30 + d40
    t50 = 4.0 * d10 - 5.0 * d30 + d50
    d01 = tl.load(base + 0 * stride_h + 1 * stride_w, mask=cmask & rv0 & cv1, other=0.0).to(tl.float32)
    d11 = tl.load(base + 1 * stride_h + 1 * stride_w, mask=cmask & rv1 & cv1, other=0.0).to(tl.float32)
    d21 = tl.load(base + 2 * stride_h + 1 * stride_w, mask=cmask & rv2 & cv1, other=0.0).to(tl.float32)
    d31 = tl.load(base + 3 * stride_h + 1 * stride_w, mask=cmask & rv3 & cv1, other=0.0).to(tl.float32)
    d41 = tl.load(base + 4 * stride_h + 1 * stride_w, mask=cmask & rv4 & cv1, other=0.0).to(tl.float32)
    d51 = tl.load(base + 5 * stride_h + 1 * stride_w, mask=cmask & rv5 & cv1, other=0.0).to(tl.float32)
    t01 = 4.0 * d01 - 5.0 * d21 + d41
    t11 = -4.0 * d11 - 4.0 * d21 + d31 + d41
    t21 = 4.0 * d11 - 4.0 * d21 - d31 + d41
    t31 = -2.0 * d11 - d21 + 2.0 * d31 + d41
    t41 = 2.0 * d11 - d21 - 2.0 * d31 + d41
    t51 = 4.0 * d11 - 5.0 * d31 + d51
    d02 = tl.load(base + 0 * stride_h + 2 * stride_w, mask=cmask & rv0 & cv2, other=0.0).to(tl.float32)
    d12 = tl.load(base + 1 * stride_h + 2 * stride_w, mask=cmask & rv1 & cv2, other=0.0).to(tl.float32)
    d22 = tl.load(base + 2 * stride_h + 2 * stride_w, mask=cmask & rv2 & cv2, other=0.0).to(tl.float32)
    d32 = tl.load(base + 3 * stride_h + 2 * stride_w, mask=cmask & rv3 & cv2, other=0.0).to(tl.float32)
    d42 = tl.load(base + 4 * stride_h + 2 * stride_w, mask=cmask & rv4 & cv2, other=0.0).to(tl.float32)
    d52 = tl.load(base + 5 * stride_h + 2 * stride_w, mask=cmask & rv5 & cv2, other=0.0).to(tl.float32)
    t02 = 4.0 * d02 - 5.0 * d22 + d42
    t12 = -4.0 * d12 - 4.0 * d22 + d32 + d42
    t22 = 4.0 * d12 - 4.0 * d22 - d32 + d42
    t32 = -2.0 * d12 - d22 + 2.0 * d32 + d42
    t42 = 2.0 * d12 - d22 - 2.0 * d32 + d42
    t52 = 4.0 * d12 - 5.0 * d32 + d52
    d03 = tl.load(base + 0 * stride_h + 3 * stride_w, mask=cmask & rv0 & cv3, other=0.0).to(tl.float32)
    d13 = tl.load(base + 1 * stride_h + 3 * stride_w, mask=cmask & rv1 & cv3, other=0.0).to(tl.float32)
    d23 = tl.load(base + 2 * stride_h + 3 * stride_w, mask=cmask & rv2 & cv3, other=0.0).to(tl.float32)
    d33 = tl.load(base + 3 * stride_h + 3 * stride_w, mask=cmask & rv3 & cv3, other=0.0).to(tl.float32)
    d43 = tl.load(base + 4 * stride_h + 3 * stride_w, mask=cmask & rv4 & cv3, other=0.0).to(tl.float32)
    d53 = tl.load(base + 5 * stride_h + 3 * stride_w, mask=cmask & rv5 & cv3, other=0.0).to(tl.float32)
    t03 = 4.0 * d03 - 5.0 * d23 + d43
    t13 = -4.0 * d13 - 4.0 * d23 + d33 + d43
    t23 = 4.0 * d13 - 4.0 * d23 - d33 + d43
    t33 = -2.0 * d13 - d23 + 2.0 * d33 + d43
    t43 = 2.0 * d13 - d23 - 2.0 * d33 + d43
    t53 = 4.0 * d13 - 5.0 * d33 + d53
    d04 = tl.load(base + 0 * stride_h + 4 * stride_w, mask=cmask & rv0 & cv4, other=0.0).to(tl.float32)
    d14 = tl.load(base + 1 * stride_h + 4 * stride_w, mask=cmask & rv1 & cv4, other=0.0).to(tl.float32)
    d24 = tl.load(base + 2 * stride_h + 4 * stride_w, mask=cmask & rv2 & cv4, other=0.0).to(tl.float32)
    d34 = tl.load(base + 3 * stride_h + 4 * stride_w, mask=cmask & rv3 & cv4, other=0.0).to(tl.float32)
    d44 = tl.load(base + 4 * stride_h + 4 * stride_w, mask=cmask & rv4 & cv4, other=0.0).to(tl.float32)
    d54 = tl.load(base + 5 * stride_h + 4 * stride_w, mask=cmask & rv5 & cv4, other=0.0).to(tl.float32)
    t04 = 4.0 * d04 - 5.0 * d24 + d44
    t14 = -4.0 * d14 - 4.0 * d24 + d34 + d44
    t24 = 4.0 * d14 - 4.0 * d24 - d34 + d44
    t34 = -2.0 * d14 - d24 + 2.0 * d34 + d44
    t44 = 2.0 * d14 - d24 - 2.0 * d34 + d44
    t54 = 4.0 * d14 - 5.0 * d34 + d54
    d05 = tl.load(base + 0 * stride_h + 5 * stride_w, mask=cmask & rv0 & cv5, other=0.0).to(tl.float32)
    d15 = tl.load(base + 1 * stride_h + 5 * stride_w, mask=cmask & rv1 & cv5, other=0.0).to(tl.float32)
    d25 = tl.load(base + 2 * stride_h + 5 * stride_w, mask=cmask & rv2 & cv5, other=0.0).to(tl.float32)
    d35 = tl.load(base + 3 * stride_h + 5 * stride_w, mask=cmask & rv3 & cv5, other=0.0).to(tl.float32)
    d45 = tl.load(base + 4 * stride_h + 5 * stride_w, mask=cmask & rv4 & cv5, other=0.0).to(tl.float32)
    d55 = tl.load(base + 5 * stride_h + 5 * stride_w, mask=cmask & rv5 & cv5, other=0.0).to(tl.float32)
    t05 = 4.0 * d05 - 5.0 * d25 + d45
    t15 = -4.0 * d15 - 4.0 * d25 + d35 + d45
    t25 = 4.0 * d15 - 4.0 * d25 - d35 + d45
    t35 = -2.0 * d15 - d25 + 2.0 * d35 + d45
    t45 = 2.0 * d15 - d25 - 2.0 * d35 + d45
    t55 = 4.0 * d15 - 5.0 * d35 + d55
    tl.store(v_base + 0 * pos_stride, (4.0 * t00 - 5.0 * t02 + t04).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 1 * pos_stride, (-4.0 * t01 - 4.0 * t02 + t03 + t04).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 2 * pos_stride, (4.0 * t01 - 4.0 * t02 - t03 + t04).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 3 * pos_stride, (-2.0 * t01 - t02 + 2.0 * t03 + t04).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 4 * pos_stride, (2.0 * t01 - t02 - 2.0 * t03 + t04).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 5 * pos_stride, (4.0 * t01 - 5.0 * t03 + t05).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 6 * pos_stride, (4.0 * t10 - 5.0 * t12 + t14).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 7 * pos_stride, (-4.0 * t11 - 4.0 * t12 + t13 + t14).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 8 * pos_stride, (4.0 * t11 - 4.0 * t12 - t13 + t14).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 9 * pos_stride, (-2.0 * t11 - t12 + 2.0 * t13 + t14).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 10 * pos_stride, (2.0 * t11 - t12 - 2.0 * t13 + t14).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 11 * pos_stride, (4.0 * t11 - 5.0 * t13 + t15).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 12 * pos_stride, (4.0 * t20 - 5.0 * t22 + t24).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 13 * pos_stride, (-4.0 * t21 - 4.0 * t22 + t23 + t24).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 14 * pos_stride, (4.0 * t21 - 4.0 * t22 - t23 + t24).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 15 * pos_stride, (-2.0 * t21 - t22 + 2.0 * t23 + t24).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 16 * pos_stride, (2.0 * t21 - t22 - 2.0 * t23 + t24).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 17 * pos_stride, (4.0 * t21 - 5.0 * t23 + t25).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 18 * pos_stride, (4.0 * t30 - 5.0 * t32 + t34).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 19 * pos_stride, (-4.0 * t31 - 4.0 * t32 + t33 + t34).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 20 * pos_stride, (4.0 * t31 - 4.0 * t32 - t33 + t34).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 21 * pos_stride, (-2.0 * t31 - t32 + 2.0 * t33 + t34).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 22 * pos_stride, (2.0 * t31 - t32 - 2.0 * t33 + t34).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 23 * pos_stride, (4.0 * t31 - 5.0 * t33 + t35).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 24 * pos_stride, (4.0 * t40 - 5.0 * t42 + t44).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 25 * pos_stride, (-4.0 * t41 - 4.0 * t42 + t43 + t44).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 26 * pos_stride, (4.0 * t41 - 4.0 * t42 - t43 + t44).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 27 * pos_stride, (-2.0 * t41 - t42 + 2.0 * t43 + t44).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 28 * pos_stride, (2.0 * t41 - t42 - 2.0 * t43 + t44).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 29 * pos_stride, (4.0 * t41 - 5.0 * t43 + t45).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 30 * pos_stride, (4.0 * t50 - 5.0 * t52 + t54).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 31 * pos_stride, (-4.0 * t51 - 4.0 * t52 + t53 + t54).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 32 * pos_stride, (4.0 * t51 - 4.0 * t52 - t53 + t54).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 33 * pos_stride, (-2.0 * t51 - t52 + 2.0 * t53 + t54).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 34 * pos_stride, (2.0 * t51 - t52 - 2.0 * t53 + t54).to(v_ptr.dtype.element_ty), mask=smask)
    tl.store(v_base + 35 * pos_stride, (4.0 * t51 - 5.0 * t53 + t55).to(v_ptr.dtype.element_ty), mask=smask)

@triton.jit
def _output_transform_kernel(m_ptr, y_ptr, b_ptr, T, CO, HO, WO, tiles_h, tiles_w,
                             y_stride_n, y_stride_c, y_stride_h, y_stride_w,
                             HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    co = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    tmask = t < T
    per_img = tiles_h * tiles_w
    n = t // per_img
    rem = t % per_img
    oy = (rem // tiles_w) * 4
    ox = (rem % tiles_w) * 4
    lmask = tmask[:, None] & (co < CO)[None, :]
    smask = lmask
    ov0 = (oy + 0 < HO)[:, None]
    ov1 = (oy + 1 < HO)[:, None]
    ov2 = (oy + 2 < HO)[:, None]
    ov3 = (oy + 3 < HO)[:, None]
    oh0 = (ox + 0 < WO)[:, None]
    oh1 = (ox + 1 < WO)[:, None]
    oh2 = (ox + 2 < WO)[:, None]
    oh3 = (ox + 3 < WO)[:, None]
    if HAS_BIAS:
        bias = tl.load(b_ptr + co, mask=co < CO, other=0.0).to(tl.float32)[None, :]
    else:
        bias = tl.zeros([1, BLOCK_C], dtype=tl.float32)
    pos_stride = T * CO
    m_base = m_ptr + (t * CO)[:, None] + co[None, :]
    y_base = (y_ptr + (n * y_stride_n + oy * y_stride_h + ox * y_stride_w)[:, None]
              + (co * y_stride_c)[None, :])
    m00 = tl.load(m_base + 0 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m10 = tl.load(m_base + 6 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m20 = tl.load(m_base + 12 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m30 = tl.load(m_base + 18 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m40 = tl.load(m_base + 24 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m50 = tl.load(m_base + 30 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    s00 = m00 + m10 + m20 + m30 + m40
    s10 = m10 - m20 + 2.0 * m30 - 2.0 * m40
    s20 = m10 + m20 + 4.0 * m30 + 4.0 * m40
    s30 = m10 - m20 + 8.0 * m30 - 8.0 * m40 + m50
    m01 = tl.load(m_base + 1 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m11 = tl.load(m_base + 7 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m21 = tl.load(m_base + 13 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m31 = tl.load(m_base + 19 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m41 = tl.load(m_base + 25 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m51 = tl.load(m_base + 31 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    s01 = m01 + m11 + m21 + m31 + m41
    s11 = m11 - m21 + 2.0 * m31 - 2.0 * m41
    s21 = m11 + m21 + 4.0 * m31 + 4.0 * m41
    s31 = m11 - m21 + 8.0 * m31 - 8.0 * m41 + m51
    m02 = tl.load(m_base + 2 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m12 = tl.load(m_base + 8 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m22 = tl.load(m_base + 14 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m32 = tl.load(m_base + 20 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m42 = tl.load(m_base + 26 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m52 = tl.load(m_base + 32 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    s02 = m02 + m12 + m22 + m32 + m42
    s12 = m12 - m22 + 2.0 * m32 - 2.0 * m42
    s22 = m12 + m22 + 4.0 * m32 + 4.0 * m42
    s32 = m12 - m22 + 8.0 * m32 - 8.0 * m42 + m52
    m03 = tl.load(m_base + 3 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m13 = tl.load(m_base + 9 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m23 = tl.load(m_base + 15 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m33 = tl.load(m_base + 21 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m43 = tl.load(m_base + 27 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m53 = tl.load(m_base + 33 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    s03 = m03 + m13 + m23 + m33 + m43
    s13 = m13 - m23 + 2.0 * m33 - 2.0 * m43
    s23 = m13 + m23 + 4.0 * m33 + 4.0 * m43
    s33 = m13 - m23 + 8.0 * m33 - 8.0 * m43 + m53
    m04 = tl.load(m_base + 4 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m14 = tl.load(m_base + 10 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m24 = tl.load(m_base + 16 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m34 = tl.load(m_base + 22 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m44 = tl.load(m_base + 28 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m54 = tl.load(m_base + 34 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    s04 = m04 + m14 + m24 + m34 + m44
    s14 = m14 - m24 + 2.0 * m34 - 2.0 * m44
    s24 = m14 + m24 + 4.0 * m34 + 4.0 * m44
    s34 = m14 - m24 + 8.0 * m34 - 8.0 * m44 + m54
    m05 = tl.load(m_base + 5 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m15 = tl.load(m_base + 11 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m25 = tl.load(m_base + 17 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m35 = tl.load(m_base + 23 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m45 = tl.load(m_base + 29 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    m55 = tl.load(m_base + 35 * pos_stride, mask=lmask, other=0.0).to(tl.float32)
    s05 = m05 + m15 + m25 + m35 + m45
    s15 = m15 - m25 + 2.0 * m35 - 2.0 * m45
    s25 = m15 + m25 + 4.0 * m35 + 4.0 * m45
    s35 = m15 - m25 + 8.0 * m35 - 8.0 * m45 + m55
    y = s00 + s01 + s02 + s03 + s04 + bias
    tl.store(y_base + 0 * y_stride_h + 0 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov0 & oh0)
    y = s01 - s02 + 2.0 * s03 - 2.0 * s04 + bias
    tl.store(y_base + 0 * y_stride_h + 1 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov0 & oh1)
    y = s01 + s02 + 4.0 * s03 + 4.0 * s04 + bias
    tl.store(y_base + 0 * y_stride_h + 2 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov0 & oh2)
    y = s01 - s02 + 8.0 * s03 - 8.0 * s04 + s05 + bias
    tl.store(y_base + 0 * y_stride_h + 3 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov0 & oh3)
    y = s10 + s11 + s12 + s13 + s14 + bias
    tl.store(y_base + 1 * y_stride_h + 0 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov1 & oh0)
    y = s11 - s12 + 2.0 * s13 - 2.0 * s14 + bias
    tl.store(y_base + 1 * y_stride_h + 1 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov1 & oh1)
    y = s11 + s12 + 4.0 * s13 + 4.0 * s14 + bias
    tl.store(y_base + 1 * y_stride_h + 2 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov1 & oh2)
    y = s11 - s12 + 8.0 * s13 - 8.0 * s14 + s15 + bias
    tl.store(y_base + 1 * y_stride_h + 3 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov1 & oh3)
    y = s20 + s21 + s22 + s23 + s24 + bias
    tl.store(y_base + 2 * y_stride_h + 0 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov2 & oh0)
    y = s21 - s22 + 2.0 * s23 - 2.0 * s24 + bias
    tl.store(y_base + 2 * y_stride_h + 1 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov2 & oh1)
    y = s21 + s22 + 4.0 * s23 + 4.0 * s24 + bias
    tl.store(y_base + 2 * y_stride_h + 2 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov2 & oh2)
    y = s21 - s22 + 8.0 * s23 - 8.0 * s24 + s25 + bias
    tl.store(y_base + 2 * y_stride_h + 3 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov2 & oh3)
    y = s30 + s31 + s32 + s33 + s34 + bias
    tl.store(y_base + 3 * y_stride_h + 0 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov3 & oh0)
    y = s31 - s32 + 2.0 * s33 - 2.0 * s34 + bias
    tl.store(y_base + 3 * y_stride_h + 1 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov3 & oh1)
    y = s31 + s32 + 4.0 * s33 + 4.0 * s34 + bias
    tl.store(y_base + 3 * y_stride_h + 2 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov3 & oh2)
    y = s31 - s32 + 8.0 * s33 - 8.0 * s34 + s35 + bias
    tl.store(y_base + 3 * y_stride_h + 3 * y_stride_w, y.to(y_ptr.dtype.element_ty), mask=smask & ov3 & oh3)


def winograd_conv2d_f4(x: torch.Tensor, transformed_weight: torch.Tensor, bias: torch.Tensor | None = None,
                       padding: int = 1) -> torch.Tensor:
    """3x3 stride-1 convolution of x [N, C_in, H, W] (CUDA, fp16/bf16) by F(4x4, 3x3) with
    `transformed_weight` [36, C_in, C_out] (G g G^T); the output is channels-last, x's dtype."""
    n_pos, c_in, c_out = transformed_weight.shape
    if n_pos != 36:
        raise ValueError(f"F(4x4, 3x3) needs a [36, C_in, C_out] transformed weight, got {tuple(transformed_weight.shape)}")
    batch, channels, height, width = x.shape
    if channels != c_in:
        raise ValueError(f"input has {channels} channels, the weight expects {c_in}")
    out_h, out_w = height + 2 * padding - 2, width + 2 * padding - 2
    tiles_h, tiles_w = -(-out_h // 4), -(-out_w // 4)
    n_tiles = batch * tiles_h * tiles_w
    u = transformed_weight.to(x.dtype)
    v = torch.empty((36, n_tiles, c_in), device=x.device, dtype=x.dtype)
    block_t, block_c = 16, 64
    grid = (triton.cdiv(n_tiles, block_t), triton.cdiv(c_in, block_c))
    sn, sc, sh, sw = x.stride()
    _input_transform_kernel[grid](x, v, n_tiles, c_in, height, width, tiles_h, tiles_w, padding,
                                  sn, sc, sh, sw, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=4)
    m = torch.bmm(v, u)  # [36, T, C_out], one GEMM per transform position
    y = torch.empty((batch, out_h, out_w, c_out), device=x.device, dtype=x.dtype).permute(0, 3, 1, 2)
    grid = (triton.cdiv(n_tiles, block_t), triton.cdiv(c_out, block_c))
    has_bias = bias is not None
    _output_transform_kernel[grid](m, y, bias if has_bias else m, n_tiles, c_out, out_h, out_w, tiles_h, tiles_w,
                                   *y.stride(), HAS_BIAS=has_bias, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=4)
    return y
