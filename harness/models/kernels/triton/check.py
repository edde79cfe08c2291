"""Each Triton kernel against an fp32 reference and against the PyTorch op it replaces, on SD 1.4
shapes (batch 2, fp16 by default): shared by tests/test_triton_kernels.py and bench/gpu_kernels.py.

A `Case` draws fresh random inputs (`make`), runs the Triton kernel (`triton_fn`), the PyTorch op it
replaces in the same dtype (`torch_fn`) and an fp32 reference on the upcast inputs (`ref_fn`).
Errors are relative Frobenius norms ||out - ref|| / ||ref||.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F


@dataclass
class Case:
    name: str
    make: Callable[[torch.Generator], tuple[Any, ...]]
    triton_fn: Callable[..., torch.Tensor]
    torch_fn: Callable[..., torch.Tensor]
    ref_fn: Callable[..., torch.Tensor]
    tolerance: float = 1e-2
    # Allowed error relative to the PyTorch op's own fp16 error (Winograd F(4x4,3x3) loses 3-4 bits).
    torch_factor: float = 4.0


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64; inf when out has NaN/inf."""
    out64, ref64 = out.double(), ref.double()
    if not torch.isfinite(out64).all():
        return math.inf
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-30)).item()


def _up(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _randn(gen: torch.Generator, shape, dtype, device, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * scale).to(dtype)


def groupnorm_cases(dtype: torch.dtype, device: str, small: bool = False) -> list[Case]:
    from harness.models.kernels.triton.groupnorm import group_norm

    shapes = [(2, 320, 64, 64), (2, 640, 32, 32), (2, 960, 64, 64), (2, 1280, 16, 16), (2, 2560, 8, 8)]
    if small:
        shapes = [(2, 320, 32, 32), (2, 2560, 8, 8), (1, 96, 7, 5)]
    cases = []
    for shape in shapes:
        n, c = shape[:2]
        for silu, with_add, cl in ((True, False, True), (True, True, True), (False, False, False)):
            def make(gen, shape=shape, c=c, n=n, with_add=with_add, cl=cl):
                x = _randn(gen, shape, dtype, device) + 0.5
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                w = _randn(gen, (c,), dtype, device, 0.5) + 1.0
                b = _randn(gen, (c,), dtype, device, 0.5)
                add = _randn(gen, (n, c), dtype, device) if with_add else None
                return x, w, b, add

            def tri(x, w, b, add, silu=silu):
                return group_norm(x, 32, w, b, 1e-5, silu=silu, add=add)

            def ref(x, w, b, add, silu=silu):
                if add is not None:
                    x = x + add[:, :, None, None]
                y = F.group_norm(x, 32, w, b, 1e-5)
                return F.silu(y) if silu else y

            name = (f"groupnorm{'+silu' if silu else ''}{'+temb' if with_add else ''} "
                    f"{'x'.join(map(str, shape))} {'NHWC' if cl else 'NCHW'}")
            cases.append(Case(name, make, tri, ref, lambda *a, ref=ref: ref(*_up(a))))
    return cases


def geglu_cases(dtype: torch.dtype, device: str, small: bool = False) -> list[Case]:
    from harness.models.kernels.triton.geglu import geglu

    shapes = [(2, 4096, 2560), (2, 1024, 5120), (2, 256, 10240), (2, 64, 10240)]
    if small:
        shapes = [(2, 256, 2560), (3, 7, 40)]

    def torch_geglu(h):
        hidden, gate = h.chunk(2, dim=-1)
        return hidden * F.gelu(gate)

    cases = []
    for shape in shapes:
        cases.append(Case(f"geglu {'x'.join(map(str, shape))}", lambda gen, shape=shape: (_randn(gen, shape, dtype, device),),
                          geglu, torch_geglu, lambda h: torch_geglu(h.float())))
    return cases


# (batch, heads, query tokens, key tokens, head dim): SD 1.4's self- and cross-attention shapes.
SD_ATTENTION_SHAPES = [(2, 8, 4096, 4096, 40), (2, 8, 4096, 77, 40), (2, 8, 1024, 1024, 80), (2, 8, 1024, 77, 80),
                       (2, 8, 256, 256, 160), (2, 8, 256, 77, 160), (2, 8, 64, 64, 160), (2, 8, 64, 77, 160)]


def attention_cases(dtype: torch.dtype, device: str, small: bool = False) -> list[Case]:
    from harness.models.kernels.triton.attention import flash_attention, optimized_softmax_attention

    shapes = SD_ATTENTION_SHAPES
    if small:
        shapes = [(2, 8, 1024, 77, 40), (2, 8, 256, 256, 80), (1, 2, 100, 77, 160), (1, 3, 33, 50, 24)]

    def make(gen, b, h, tq, tk, d):
        # Views of [B, T, H*d] projections, as the diffusers processor passes them (no copies).
        q = _randn(gen, (b, tq, h * d), dtype, device).view(b, tq, h, d).transpose(1, 2)
        k = _randn(gen, (b, tk, h * d), dtype, device).view(b, tk, h, d).transpose(1, 2)
        v = _randn(gen, (b, tk, h * d), dtype, device).view(b, tk, h, d).transpose(1, 2)
        return q, k, v

    def torch_softmax_attn(q, k, v):
        return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5), dim=-1) @ v

    def ref(q, k, v):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float())

    cases = []
    for shape in shapes:
        tag = f"{shape[0]}x{shape[1]} q{shape[2]} k{shape[3]} d{shape[4]}"
        mk = lambda gen, shape=shape: make(gen, *shape)
        cases.append(Case(f"opt-softmax attn {tag}", mk, optimized_softmax_attention, torch_softmax_attn, ref))
        cases.append(Case(f"flash attn {tag}", mk, flash_attention, F.scaled_dot_product_attention, ref))
    return cases


def winograd_cases(dtype: torch.dtype, device: str, small: bool = False) -> list[Case]:
    from harness.models.kernels.triton.winograd import winograd_conv2d_f4
    from harness.models.kernels.winograd import winograd_filter_transform

    # (N, C_in, C_out, H, W, padding)
    shapes = [(2, 320, 320, 64, 64, 1), (2, 640, 640, 32, 32, 1), (2, 1280, 1280, 16, 16, 1),
              (2, 1280, 1280, 8, 8, 1), (2, 960, 320, 64, 64, 1), (2, 4, 320, 64, 64, 1)]
    if small:
        shapes = [(2, 64, 96, 16, 16, 1), (1, 16, 8, 13, 11, 1), (1, 8, 16, 10, 9, 0), (1, 8, 8, 7, 6, 2)]
    cases = []
    for n, ci, co, hh, ww, pad in shapes:
        def make(gen, n=n, ci=ci, co=co, hh=hh, ww=ww):
            x = _randn(gen, (n, ci, hh, ww), dtype, device).contiguous(memory_format=torch.channels_last)
            w = _randn(gen, (co, ci, 3, 3), dtype, device, math.sqrt(2.0 / (ci * 9)))
            b = _randn(gen, (co,), dtype, device, 0.1)
            u = winograd_filter_transform(w, 4)  # precomputed once per weight in the model
            return x, w, b, u

        def tri(x, w, b, u, pad=pad):
            return winograd_conv2d_f4(x, u, b, pad)

        def tor(x, w, b, u, pad=pad):
            return F.conv2d(x, w.contiguous(memory_format=torch.channels_last), b, padding=pad)

        def ref(x, w, b, u, pad=pad):
            return F.conv2d(x.double(), w.double(), b.double(), padding=pad)

        cases.append(Case(f"winograd F(4x4,3x3) {n}x{ci}->{co} {hh}x{ww} p{pad}", make, tri, tor, ref,
                          tolerance=8e-3, torch_factor=20.0))
    return cases


def all_cases(dtype: torch.dtype = torch.float16, device: str = "cuda", small: bool = False) -> list[Case]:
    return (groupnorm_cases(dtype, device, small) + geglu_cases(dtype, device, small)
            + attention_cases(dtype, device, small) + winograd_cases(dtype, device, small))


def run_case(case: Case, seed: int = 0) -> dict[str, Any]:
    """Errors of the Triton kernel and of the PyTorch op against the fp32 reference, on fresh inputs;
    the Triton output is checked to be fully written (its buffer is not pre-zeroed: NaN/inf fail)."""
    gen = torch.Generator(device="cuda" if torch.cuda.is_available() else "cpu").manual_seed(seed)
    args = case.make(gen)
    ref = case.ref_fn(*args)
    if torch.cuda.is_available():  # poison: freed NaN blocks are what the caching allocator hands out next
        poison = torch.full((256 << 20,), float("nan"), device="cuda", dtype=torch.float16)
        del poison
    out = case.triton_fn(*args)
    base = case.torch_fn(*args)
    if out.shape != ref.shape:
        raise AssertionError(f"{case.name}: output shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    return {"case": case.name, "triton_rel_err": rel_error(out, ref), "torch_rel_err": rel_error(base, ref),
            "tolerance": case.tolerance, "args": args}
