"""int8 weight-only quantization for the host torch runtime (`options.dtype: int8`).

Every `nn.Linear` and `nn.Conv2d` of a module (the flag-patched `kernels.winograd.Conv3x3` included)
is replaced by an `Int8WeightOnlyLinear` / `Int8WeightOnlyConv2d` that stores its weight as int8 with
one symmetric fp32 scale per output channel (scale = max|w| / 127 over the channel's weights, so
w ~= q * scale with q in [-127, 127]) and dequantizes it in forward; bias, norms and embeddings stay in
the compute dtype. Activations and arithmetic run in the compute dtype: fp32 on the CPU, fp16 on CUDA
(`compute_dtype`). The stored bytes (int8 weights + scales) are what `harness.memory.weight_bytes`
reports.

Quantize after `apply_flags` (`quantize_int8(module)`): a Conv3x3 that runs Winograd keeps running
Winograd, on the dequantized filter (the filter transform is not cached: caching it would keep a
float copy 4x the weight, which weight-only storage exists to avoid).

Accuracy (measured, `tests/test_quantize.py` pins it): on the tiny config's UNet (random weights, fp32
compute, inputs of `example_inputs`) the int8 model's output differs from the fp32 model's by a relative
error (max |diff| / max |ref|) of 1.5e-2 in every ladder row (the patched fp32 rows themselves are within
4e-6), and by 1.2e-2 on the tiny MobileDiffusion-like UNet; in the tiny e2e check (all flags, the first
step's real inputs) the UNet differs by 1.8e-2 and the VAE decoder by 2.0e-2. INT8_REL_TOLERANCE = 5e-2, the reference-check
tolerance of int8 jobs (the same bound as fp16-weight .tflite artifacts), leaves 2.5x headroom over the
worst measured error; a quantization without its scales, or on the wrong axis for a layer with uneven
channels, lands far above it. Not measured: the CUDA path (fp16 compute), which the same code runs.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_ONLY_DTYPES = ("int8",)
# Reference-check tolerance for int8 weight-only jobs (max |out - ref| / max |ref|); see the module doc.
INT8_REL_TOLERANCE = 5e-2
QMAX = 127


def is_weight_only(dtype: str) -> bool:
    return dtype in WEIGHT_ONLY_DTYPES


def compute_dtype(dtype: str, device: str) -> str:
    """The dtype activations run in: `dtype` itself, except int8 weight-only: fp32 on the CPU, fp16 on CUDA."""
    if not is_weight_only(dtype):
        return dtype
    return "fp16" if str(device).startswith("cuda") else "fp32"


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, fp32 scale [out_channels]) with weight ~= q * scale along dim 0, symmetric."""
    w = weight.detach().float()
    amax = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    view = (-1,) + (1,) * (w.dim() - 1)
    q = torch.clamp(torch.round(w / scale.view(view)), -QMAX, QMAX).to(torch.int8)
    return q, scale


class _Int8Weight(nn.Module):
    """int8 weight + per-output-channel scale buffers (state_dict: weight_int8, weight_scale)."""

    def _init_weight(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        q, scale = quantize_per_channel(weight)
        self.register_buffer("weight_int8", q.to(weight.device))
        self.register_buffer("weight_scale", scale.to(weight.device))
        # The bias stays a Parameter in the compute dtype (shared with the module it replaces).
        self.bias = bias

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        view = (-1,) + (1,) * (self.weight_int8.dim() - 1)
        return self.weight_int8.to(dtype) * self.weight_scale.to(dtype).view(view)


class Int8WeightOnlyLinear(_Int8Weight):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._init_weight(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


class Int8WeightOnlyConv2d(_Int8Weight):
    """A quantized nn.Conv2d; from a flag-patched Conv3x3 it keeps that conv's implementation (Winograd
    F(tile x tile, 3x3) where it ran Winograd, the direct convolution elsewhere)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise NotImplementedError(f"int8 weight-only conv with padding_mode={conv.padding_mode!r}; only "
                                      "'zeros' (every SD conv) is implemented")
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, attr, getattr(conv, attr))
        self.winograd_tile: int | None = conv.tile if getattr(conv, "is_winograd", False) else None
        self._init_weight(conv.weight, conv.bias)

    @property
    def is_winograd(self) -> bool:
        return self.winograd_tile is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.dequantized_weight(x.dtype)
        if self.winograd_tile is not None:
            from harness.models.kernels.triton import enabled as triton_enabled
            from harness.models.kernels.winograd import winograd_conv2d, winograd_filter_transform

            u = winograd_filter_transform(weight, self.winograd_tile)  # of the dequantized filter, every call
            if self.winograd_tile == 4 and triton_enabled(x) and not torch.compiler.is_compiling():
                from harness.models.kernels.triton.winograd import winograd_conv2d_f4

                return winograd_conv2d_f4(x, u, self.bias, self.padding[0])  # the same CUDA path as Conv3x3
            return winograd_conv2d(x, bias=self.bias, padding=self.padding[0], m=self.winograd_tile,
                                   transformed_weight=u)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        impl = f"winograd F({self.winograd_tile}x{self.winograd_tile},3x3)" if self.is_winograd else "direct"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, impl={impl}, int8 weight-only")


@torch.no_grad()
def quantize_int8(module: nn.Module) -> dict[str, Any]:
    """Replace every nn.Linear and nn.Conv2d under `module` (subclasses, e.g. Conv3x3, included) by its
    int8 weight-only module, in place. Call it after `apply_flags`. Returns counts and bytes:
    {"linear": n, "conv2d": n, "conv2d_winograd": n, "int8_weight_bytes": b, "scale_bytes": b}."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        raise TypeError("quantize_int8 replaces children; pass the module that holds the Linear/Conv2d")
    counts: dict[str, Any] = {"linear": 0, "conv2d": 0, "conv2d_winograd": 0, "int8_weight_bytes": 0,
                              "scale_bytes": 0}
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                new: _Int8Weight = Int8WeightOnlyLinear(child)
                counts["linear"] += 1
            elif isinstance(child, nn.Conv2d):
                new = Int8WeightOnlyConv2d(child)
                counts["conv2d"] += 1
                counts["conv2d_winograd"] += int(new.is_winograd)
            else:
                continue
            new.train(child.training)
            setattr(parent, name, new)
            counts["int8_weight_bytes"] += new.weight_int8.numel()
            counts["scale_bytes"] += new.weight_scale.numel() * new.weight_scale.element_size()
    return counts
