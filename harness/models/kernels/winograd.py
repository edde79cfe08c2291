"""Winograd convolution F(m x m, 3 x 3) (the paper's "+ Winograd" row) and the direct 3x3 convolution.

A 3x3 convolution with stride 1 computes every m x m output tile from an (m+2) x (m+2) input tile as

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* = elementwise, over the (m+2)^2 positions)

so one output tile costs (m+2)^2 multiplications per input/output channel pair instead of 9 m^2
(F(4x4, 3x3): 36 instead of 144, 4x fewer). Summed over input channels, the elementwise product
becomes one batched matrix product: for each of the (m+2)^2 transform positions, a [tiles, C_in] x
[C_in, C_out] GEMM.

The transform matrices A^T (m x n), G (n x 3), B^T (n x n), n = m + 2, are *derived* here by the
Cook-Toom construction (`cook_toom_matrices`), not copied from tables:

* A linear convolution c = a (*) g of an m-tap and an r-tap sequence is the product of the
  polynomials a(x) g(x) (degree n - 1, n = m + r - 1). Evaluate both at n points (n - 1 finite
  points a_i plus the point at infinity, whose "value" is the leading coefficient), multiply
  pointwise, and interpolate back: c = V_n^{-1} [(V_m a) * (V_r g)], where V_k is the n x k
  evaluation (Vandermonde) matrix of polynomials with k coefficients.
* The FIR filter (correlation) y_i = sum_k d_{i+k} g_k that a convolution layer computes is the
  transpose of that bilinear algorithm: y = V_m^T [ (V_r g) * (V_n^{-T} d) ], i.e. A^T = V_m^T,
  G = V_r, B^T = V_n^{-T}.
* Any diagonal rescaling D (G -> D G, B^T -> D^{-1} B^T) keeps the identity. We move the Lagrange
  denominators prod_{j != i}(a_i - a_j) of the finite points into G, which is computed once per
  weight, so that B^T and A^T have small integer entries for integer points (the usual choice in
  Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016, and in wincnn).

Interpolation points: F(2,3): 0, 1, -1, inf; F(4,3): 0, 1, -1, 2, -2, inf (the paper's tile);
F(6,3): 0, 1, -1, 2, -2, 1/2, -1/2, inf.

Numerics: the transforms amplify rounding error with the size of the points, so larger tiles lose
precision. Measured (H200, torch 2.11; the CPU gives the same figures): relative Frobenius error
against an fp64 F.conv2d, SD-like layers (C_in = C_out = 320 at 64x64 and 1280 at 16x16, N(0,1) data,
Kaiming weights), filter transform in fp32 then cast, input/output transforms and GEMM in the dtype:

    dtype   direct    F(2,3)    F(4,3)    F(6,3)
    fp32    1e-6      6e-7      4e-6      7e-6
    fp16    3.6e-4    8e-4      4.0e-3    7.5e-3
    bf16    2.9e-3    6.5e-3    3.2e-2    5.9e-2

So F(4x4, 3x3) in fp16 is about 11x (3-4 bits) less accurate than a direct fp16 convolution, and in
bf16 it is poor; on the whole tiny UNet in fp16 on CUDA the "+ Winograd" row moves the output by 1.0e-2
(relative) against the unpatched model, versus 1.8e-3 for the rows before it. Rescaling the transforms
does not change this; other points do a little (0, +-1, 2, -1/2 gives 2.7e-3 for F(4,3) in fp16, cf.
Barabasz et al., "Error analysis and improving the accuracy of Winograd convolution", 2018): pass
`points` to `cook_toom_matrices` to experiment. On CPU, fp16/bf16 inputs are computed in fp32 by
default and cast back (CPU half-precision GEMMs are slow and not what a phone GPU would do); pass
`compute_dtype` to `winograd_conv2d` to force the input dtype.

Written without data-dependent Python control flow: loops run over the static (m+2)^2 positions,
tiles are gathered by strided slicing, so the module traces/exports to a static graph.
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.kernels.choice import fastest

Conv3x3Impl = Literal["direct", "winograd"]

# Finite interpolation points per output tile size m (the point at infinity is always added).
INTERPOLATION_POINTS: dict[int, tuple[Fraction, ...]] = {
    2: (Fraction(0), Fraction(1), Fraction(-1)),
    4: (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2)),
    6: (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2), Fraction(-1, 2)),
}

Matrix = list[list[Fraction]]


def _evaluation_matrix(points: tuple[Fraction, ...], num_coeffs: int) -> Matrix:
    """n x k matrix evaluating a polynomial with k coefficients (c_0 + c_1 x + ...) at the points.

    The last row is the point at infinity: it picks the leading coefficient c_{k-1}.
    """
    rows = [[p ** j for j in range(num_coeffs)] for p in points]
    rows.append([Fraction(0)] * (num_coeffs - 1) + [Fraction(1)])
    return rows


def _invert(matrix: Matrix) -> Matrix:
    """Exact inverse of a square rational matrix (Gauss-Jordan)."""
    n = len(matrix)
    aug = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if aug[r][col] != 0), None)
        if pivot is None:
            raise ValueError("interpolation points are not distinct: the evaluation matrix is singular")
        aug[col], aug[pivot] = aug[pivot], aug[col]
        inv_p = 1 / aug[col][col]
        aug[col] = [v * inv_p for v in aug[col]]
        for r in range(n):
            if r != col and aug[r][col] != 0:
                f = aug[r][col]
                aug[r] = [a - f * b for a, b in zip(aug[r], aug[col])]
    return [row[n:] for row in aug]


def _transpose(matrix: Matrix) -> Matrix:
    return [list(col) for col in zip(*matrix)]


@lru_cache(maxsize=None)
def cook_toom_matrices(m: int, r: int = 3,
                       points: tuple[Fraction, ...] | None = None) -> tuple[Matrix, Matrix, Matrix]:
    """Exact (A^T, G, B^T) of the 1-D Winograd algorithm F(m, r), by the Cook-Toom construction.

    y = A^T [(G g) * (B^T d)] computes y_i = sum_k d_{i+k} g_k for i < m, for d of length m + r - 1.
    `points` are the m + r - 2 distinct finite interpolation points (infinity is added); by default
    `INTERPOLATION_POINTS[m]` (r = 3). Returned as lists of `Fraction` rows: A^T is m x n, G is n x r,
    B^T is n x n with n = m + r - 1.
    """
    n = m + r - 1
    if points is None:
        if r != 3 or m not in INTERPOLATION_POINTS:
            raise ValueError(f"no default interpolation points for F({m}, {r}); pass {n - 1} points")
        points = INTERPOLATION_POINTS[m]
    points = tuple(Fraction(p) for p in points)
    if len(points) != n - 1 or len(set(points)) != len(points):
        raise ValueError(f"F({m}, {r}) needs {n - 1} distinct finite points, got {points}")

    v_m = _evaluation_matrix(points, m)  # n x m: evaluates the data-side polynomial
    v_r = _evaluation_matrix(points, r)  # n x r: evaluates the filter polynomial
    v_n_inv = _invert(_evaluation_matrix(points, n))  # n x n: interpolation

    a_t = _transpose(v_m)
    g = [list(row) for row in v_r]
    b_t = _transpose(v_n_inv)

    # Move the Lagrange denominators from B^T into G (diagonal rescaling keeps the identity).
    for i, p in enumerate(points):
        denom = Fraction(1)
        for q in points:
            if q != p:
                denom *= p - q
        g[i] = [v / denom for v in g[i]]
        b_t[i] = [v * denom for v in b_t[i]]
    return a_t, g, b_t


def winograd_matrices(m: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A^T, G, B^T) of F(m, 3) as tensors of `dtype` (rounded from the exact rationals).

    New tensors on every call (only the Python floats are cached): a cached tensor created while
    torch.export/compile traces would be a fake tensor and poison later eager calls. The exception is
    eager CUDA: there the tensors are cached per (m, dtype, device), because making them copies from the
    CPU, which a CUDA graph capture forbids (the first, uncaptured call fills the cache).
    """
    device = torch.device(device)
    if device.type == "cuda" and not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
        return _cuda_matrices(m, dtype, device)
    return tuple(torch.tensor(mat, dtype=torch.float64).to(device, dtype)  # type: ignore[return-value]
                 for mat in _winograd_matrices_float(m))


@lru_cache(maxsize=64)
def _cuda_matrices(m: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(torch.tensor(mat, dtype=torch.float64).to(device, dtype)  # type: ignore[return-value]
                 for mat in _winograd_matrices_float(m))


@lru_cache(maxsize=None)
def _winograd_matrices_float(m: int) -> tuple[list[list[float]], ...]:
    return tuple([[float(v) for v in row] for row in mat] for mat in cook_toom_matrices(m))


def winograd_filter_transform(weight: torch.Tensor, m: int) -> torch.Tensor:
    """U = G g G^T for every (out, in) filter pair: [C_out, C_in, 3, 3] -> [(m+2)^2, C_in, C_out].

    Computed in fp32 (or fp64 for fp64 weights) and cast to the weight dtype; done once per weight.
    One GEMM: U[(i j), (c o)] = sum over (k l) of (G kron G)[(i j), (k l)] g[o, c, k, l], written straight
    into the [(m+2)^2, C_in, C_out] layout (the einsum G g G^T it replaces wrote [n, n, C_in, C_out]
    and copied it: SD 1.4's 49 Winograd filters took 10-22 s on a 2-core CPU, this takes 2.3 s on memory
    touched before, ~15 s in a fresh process where the kernel first hands out the 7.8 GiB).
    """
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"Winograd F(m x m, 3 x 3) needs 3x3 filters, got {tuple(weight.shape)}")
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    _, g, _ = winograd_matrices(m, work, weight.device)
    c_out, c_in = weight.shape[:2]
    n = m + 2
    filters = weight.to(work).permute(1, 0, 2, 3).reshape(c_in * c_out, 9)  # [(c o), (k l)]: one copy of g
    u = torch.mm(torch.kron(g, g), filters.t())  # [(i j), (c o)]
    return u.view(n * n, c_in, c_out).to(weight.dtype)


def winograd_conv2d(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                    padding: int = 1, m: int = 4, transformed_weight: torch.Tensor | None = None,
                    compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """3x3, stride-1 convolution of x [N, C, H, W] by F(m x m, 3 x 3) Winograd; same result as
    `F.conv2d(x, weight, bias, stride=1, padding=padding)`.

    Pass `transformed_weight` (from `winograd_filter_transform`) to skip the filter transform. Any H, W:
    the output is padded up to a multiple of m tiles and cropped. `compute_dtype` (default: the input
    dtype, except fp32 for fp16/bf16 inputs on CPU) is the dtype of the transforms and the GEMM.
    """
    if transformed_weight is None:
        if weight is None:
            raise ValueError("winograd_conv2d needs `weight` or `transformed_weight`")
        transformed_weight = winograd_filter_transform(weight, m)
    n_pos, c_in, c_out = transformed_weight.shape
    n = m + 2
    if n_pos != n * n:
        raise ValueError(f"transformed_weight has {n_pos} positions, F({m}x{m}, 3x3) needs {n * n}")
    if x.shape[1] != c_in:
        raise ValueError(f"input has {x.shape[1]} channels, the weight expects {c_in}")

    out_dtype = x.dtype
    if compute_dtype is None:
        # CPU half precision: compute in fp32 (see module docstring); on GPU keep the input dtype.
        half = x.dtype in (torch.float16, torch.bfloat16)
        compute_dtype = torch.float32 if (x.device.type == "cpu" and half) else x.dtype
    x = x.to(compute_dtype)
    u = transformed_weight.to(compute_dtype)
    a_t, _, b_t = winograd_matrices(m, compute_dtype, x.device)

    batch, _, height, width = x.shape
    out_h, out_w = height + 2 * padding - 2, width + 2 * padding - 2
    tiles_h, tiles_w = -(-out_h // m), -(-out_w // m)
    # Pad: `padding` on the top/left, enough on the bottom/right for whole tiles (+2 halo).
    x = F.pad(x, (padding, tiles_w * m + 2 - width - padding, padding, tiles_h * m + 2 - height - padding))

    # Input tiles d[i][j] = x[..., t_h*m + i, t_w*m + j] for all tiles at once (tiles overlap by 2).
    d = torch.stack([
        torch.stack([x[:, :, i:i + tiles_h * m:m, j:j + tiles_w * m:m] for j in range(n)], dim=0)
        for i in range(n)
    ], dim=0)  # [n, n, N, C, tiles_h, tiles_w]

    # Input transform V = B^T d B, then arrange as [(m+2)^2, N*tiles, C_in] for the batched GEMM.
    v = torch.einsum("ui,ijbcyx,vj->uvbyxc", b_t, d, b_t)
    v = v.reshape(n * n, batch * tiles_h * tiles_w, c_in)

    # One GEMM per transform position: [tiles, C_in] x [C_in, C_out].
    prod = torch.bmm(v, u)  # [n*n, N*tiles, C_out]
    prod = prod.reshape(n, n, batch, tiles_h, tiles_w, c_out)

    # Output transform Y = A^T M A, then scatter the m x m tiles back to an image and crop.
    y = torch.einsum("pu,uvbyxo,qv->boypxq", a_t, prod, a_t)  # [N, C_out, tiles_h, m, tiles_w, m]
    y = y.reshape(batch, c_out, tiles_h * m, tiles_w * m)[:, :, :out_h, :out_w]
    if bias is not None:
        y = y + bias.to(compute_dtype).view(1, -1, 1, 1)
    return y.to(out_dtype)


def winograd_eligible(conv: nn.Conv2d) -> bool:
    """Whether Winograd F(m x m, 3 x 3) can run this conv: 3x3, stride 1, dilation 1, groups 1,
    zero padding of 0, 1 or 2 on both sides."""
    pad = conv.padding
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(pad, tuple) and pad[0] == pad[1] and pad[0] in (0, 1, 2))


class Conv3x3(nn.Conv2d):
    """Drop-in nn.Conv2d that runs 3x3, stride-1, dilation-1, groups-1 convolutions by Winograd
    F(m x m, 3 x 3) when `impl == "winograd"`, and everything else (including SD's 3x3 stride-2
    downsamplers) by the direct convolution F.conv2d.

    Same parameters (`weight`, `bias`) as the nn.Conv2d it replaces, so state_dicts are unchanged.
    The filter transform is cached per weight version/device/dtype (not in the state_dict). Note its
    size: (m+2)^2 / 9 times the weight (F(2,3): 1.8x, F(4,3): 4x, F(6,3): 7.1x), which is what a
    runtime that stores pre-transformed filters holds; under torch.export/compile it is computed in the
    graph from the weight instead, and what the exporter makes of it (constant folding) decides the
    weight bytes of an exported artifact.
    """

    def __init__(self, *args, impl: Conv3x3Impl = "direct", tile: int = 4, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if impl not in ("direct", "winograd"):
            raise ValueError(f"unknown conv3x3 impl {impl!r}; known: direct, winograd")
        if tile not in INTERPOLATION_POINTS:
            raise ValueError(f"Winograd tile must be one of {sorted(INTERPOLATION_POINTS)}, got {tile}")
        self.impl: Conv3x3Impl = impl
        self.tile = tile
        self._u_cache: tuple[tuple, torch.Tensor] | None = None
        self.ran: str | None = None  # "winograd" or "direct": what the last forward ran (see gpu_conv_choice)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, impl: Conv3x3Impl = "direct", tile: int = 4) -> "Conv3x3":
        """A Conv3x3 sharing `conv`'s weight and bias Parameters (no copy)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  impl=impl, tile=tile, device="meta")
        new.weight = conv.weight
        new.bias = conv.bias
        new.train(conv.training)
        return new

    @property
    def is_winograd(self) -> bool:
        """True when forward runs Winograd (impl is winograd and the conv shape allows it)."""
        return self.impl == "winograd" and winograd_eligible(self)

    @property
    def winograd_eligible(self) -> bool:
        return winograd_eligible(self)

    def transformed_weight(self) -> torch.Tensor:
        """G g G^T for the current weight, cached until the weight changes (in place or replaced)."""
        w = self.weight
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return winograd_filter_transform(w, self.tile)  # traced: let the exporter constant-fold it
        key = (w.data_ptr(), w._version, w.dtype, w.device, tuple(w.shape), self.tile)
        if self._u_cache is None or self._u_cache[0] != key:
            with torch.no_grad():
                self._u_cache = (key, winograd_filter_transform(w.detach(), self.tile))
        return self._u_cache[1]

    def forward(self, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        """The convolution; `with_bias=False` leaves the bias out (harness.models.kernels.epilogue)."""
        bias = self.bias if with_bias else None
        direct = lambda: self._conv_forward(x, self.weight, bias)  # noqa: E731 - nn.Conv2d.forward's body
        if not self.is_winograd:
            return direct()
        if torch.is_grad_enabled() and self.weight.requires_grad:
            u = winograd_filter_transform(self.weight, self.tile)  # differentiable path, no cache
        else:
            u = self.transformed_weight()
            from harness.models.kernels.triton import enabled as _triton_enabled

            if self.tile == 4 and _triton_enabled(x) and not torch.compiler.is_compiling():
                from harness.models.kernels.triton.winograd import winograd_conv2d_f4

                winograd = lambda: winograd_conv2d_f4(x, u, bias, self.padding[0])  # noqa: E731
                self.ran = gpu_conv_choice(self, x, winograd, direct)
                return winograd() if self.ran == "winograd" else direct()  # CUDA fp16/bf16 path
        if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            self.ran = "winograd"
        return winograd_conv2d(x, bias=bias, padding=self.padding[0], m=self.tile, transformed_weight=u)

    def extra_repr(self) -> str:
        mode = f"winograd F({self.tile}x{self.tile},3x3)" if self.is_winograd else "direct"
        return f"{super().extra_repr()}, impl={mode}"


def gpu_conv_choice(conv: nn.Conv2d, x: torch.Tensor, winograd, direct) -> str:
    """Which implementation a Winograd-flagged conv runs on a CUDA tensor: the faster of Winograd and the
    direct convolution (cuDNN) for this shape, measured once per process (`harness.models.kernels.choice`;
    HARNESS_WINOGRAD=winograd or =always forces Winograd, =direct cuDNN)."""
    key = (tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last), tuple(conv.weight.shape),
           x.dtype, x.device)
    return fastest("winograd", key, {"winograd": winograd, "direct": direct})


def winograd_usage(model: nn.Module) -> dict[str, int]:
    """How many of the model's Winograd-flagged 3x3 convs ran Winograd and how many the direct
    convolution in their last forward (GPU: the per-shape choice of `gpu_conv_choice`)."""
    counts = {"winograd": 0, "direct": 0}
    for module in model.modules():
        if isinstance(module, Conv3x3) and module.is_winograd and module.ran in counts:
            counts[module.ran] += 1
    return counts
