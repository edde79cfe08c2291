"""Bias adds that cost no pass of their own, for channels-last CUDA models: the 1x1 GEMMs in every ladder row,
the resnet folds with the fused GroupNorm (+ S-GN/GELU onward).

PyTorch adds a convolution's bias in a separate kernel after cuDNN's, and over a channels-last output
that broadcast add runs TensorIterator's non-vectorized path: on an H100 the SD 1.4 UNet's 98 biased
convolutions cost 98 such kernels, 0.47 ms of a 7.3 ms iteration (bench/gpu_profile.py), where
torch.compile folds each bias into a neighbouring kernel. Here:

- a 1x1 convolution of a channels-last tensor is the GEMM it is: `conv1x1_gemm` multiplies the NHWC
  view by the [C_out, C_in] weight with the bias in cuBLAS's epilogue (`torch.addmm`), no copy;
- a bias that is followed by an add anyway is summed into that add's operand once (`summed_bias`,
  cached per weight version, as Winograd's transformed filters are): a resnet block's conv1 bias into
  the time-embedding projection's bias (GroupNorm(conv1(h) + b1 + temb) is what norm2 sees), its conv2
  bias into the 1x1 shortcut's (harness.models.kernels.triton.resnet);
- `silu_shared`: the UNet hands the same time embedding to every resnet block, and each applies SiLU to
  it; the first result is reused for the same tensor (same object, same version).

Values are the same up to fp16 rounding order (tests/test_epilogue.py checks them on the CPU).

Off unless HARNESS_FOLD_BIAS=1: written after the last GPU measurement of this session, and not yet run on a
GPU. `python bench/gpu_changes.py` measures it against the code without it, in one process; turn it on by
default once a GPU run shows the rows agree with diffusers and run faster.
"""
from __future__ import annotations

import os
import types
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.kernels.winograd import Conv3x3


def folding_enabled() -> bool:
    """True when HARNESS_FOLD_BIAS=1; otherwise convolutions add their biases as PyTorch does."""
    return os.environ.get("HARNESS_FOLD_BIAS", "0") == "1"


def gemm_eligible(conv: nn.Module) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped, undilated Conv2d: a GEMM over the channel dimension."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
            and conv.padding in ((0, 0), 0, "valid"))


def channels_last_4d(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def conv1x1_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv2d(x, weight [C_out, C_in, 1, 1], bias) for a channels-last x [N, C_in, H, W] as one GEMM on
    its NHWC view, the bias in the GEMM's epilogue; the result is channels-last [N, C_out, H, W]."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view: x is channels-last
    w2 = weight.reshape(weight.shape[0], c).t()
    out = torch.mm(rows, w2) if bias is None else torch.addmm(bias, rows, w2)
    return out.view(n, h, w, weight.shape[0]).permute(0, 3, 1, 2)


def _conv1x1_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if x.is_cuda and channels_last_4d(x) and not torch.compiler.is_compiling():
        return conv1x1_gemm(x, self.weight, self.bias)
    return type(self).forward(self, x)


def gemm_1x1_convs(model: nn.Module) -> int:
    """Make each 1x1 Conv2d of `model` run `conv1x1_gemm` on channels-last CUDA inputs (its class
    forward everywhere else). Returns the number of convolutions changed."""
    changed = 0
    if not folding_enabled():
        return changed
    for module in model.modules():
        if type(module) is nn.Conv2d and gemm_eligible(module):
            module.forward = types.MethodType(_conv1x1_forward, module)
            changed += 1
    return changed


def conv_without_bias(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` less its bias (the caller adds the bias where it costs nothing)."""
    if isinstance(conv, Conv3x3):
        return conv(x, with_bias=False)
    if gemm_eligible(conv) and x.is_cuda and channels_last_4d(x):
        return conv1x1_gemm(x, conv.weight, None)
    return conv._conv_forward(x, conv.weight, None)


def summed_bias(owner: nn.Module, name: str, *biases: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of the given biases (None ones left out), cached on `owner` under `name` until one of
    them changes (in place or replaced)."""
    present = [b for b in biases if b is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.is_grad_enabled():
        return sum(present[1:], present[0])
    key = tuple((b.data_ptr(), b._version, b.dtype, b.device) for b in present)
    cache = owner.__dict__.setdefault("_summed_biases", {})
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        hit = cache[name] = (key, sum(present[1:], present[0]))
    return hit[1]


_silu_memo: tuple[weakref.ref, int, torch.Tensor] | None = None


def silu_shared(t: torch.Tensor) -> torch.Tensor:
    """F.silu(t), computed once for the same tensor (object and version) however often it is asked."""
    global _silu_memo
    if torch.compiler.is_compiling() or torch.is_grad_enabled():
        return F.silu(t)
    memo = _silu_memo
    if memo is not None and memo[0]() is t and memo[1] == t._version:
        return memo[2]
    out = F.silu(t)
    _silu_memo = (weakref.ref(t), t._version, out)
    return out
