"""GroupNorm: decomposed into elementwise ops (the paper's baseline) or one fused op ("S-GN").

`decomposed` is what a graph converter emits when it does not know GroupNorm: reshape to groups, a
mean reduction, a variance reduction, subtract, rsqrt, multiply, reshape back, then the per-channel
affine; each op is a separate kernel reading and writing the whole activation.
`fused` is one op, F.group_norm (which litert-torch can emit as a single `odml.group_norm` composite
and a GPU delegate can run as one specialized kernel, the paper's section 3.1).
`folded` is the fused GroupNorm as a graph of primitive ops for GPU engines that cannot take the
composite (LiteRT's host GPU accelerator crashes on every composite; README "The phone GPU engine on
this host"): the group statistics are computed once (mean, then the mean of squared deviations) and
folded with the affine parameters into one per-channel scale, so the activation is read by the two
reductions and written once by a multiply-add: (x - mean) * (gamma * rstd) + beta, instead of the
decomposed form's separate normalize, scale and shift passes.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

GroupNormImpl = Literal["decomposed", "fused", "folded"]
GROUPNORM_IMPLS: tuple[str, ...] = ("decomposed", "fused", "folded")


def group_norm_decomposed(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                          bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """F.group_norm written out as separate ops: x [N, C, *] normalized over (C / num_groups, *)."""
    batch, channels = x.shape[0], x.shape[1]
    if channels % num_groups != 0:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {num_groups} groups")
    grouped = x.reshape(batch, num_groups, -1)
    mean = grouped.mean(dim=-1, keepdim=True)
    centered = grouped - mean
    var = (centered * centered).mean(dim=-1, keepdim=True)  # biased variance, as F.group_norm
    normalized = centered * torch.rsqrt(var + eps)
    out = normalized.reshape(x.shape)
    affine_shape = (1, channels) + (1,) * (x.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(affine_shape)
    if bias is not None:
        out = out + bias.reshape(affine_shape)
    return out


def group_norm_folded(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """F.group_norm with the statistics folded into a per-channel scale: x [N, C, *].

    Every broadcast is a binary elementwise op at rank <= 4 (what GPU converters fold into the op;
    an expand feeding anything else becomes BROADCAST_TO, which LiteRT's GPU engine refuses)."""
    batch, channels = x.shape[0], x.shape[1]
    if channels % num_groups != 0:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {num_groups} groups")
    grouped = x.reshape(batch, num_groups, -1)  # [N, G, C/G * HW]
    mean = grouped.mean(dim=-1, keepdim=True)
    centered = grouped - mean
    rstd = torch.rsqrt((centered * centered).mean(dim=-1, keepdim=True) + eps)  # [N, G, 1]
    per_channel = channels // num_groups
    scale = rstd.reshape(batch, num_groups, 1, 1)  # [N, G, 1, 1] -> per channel [N, G, C/G, 1]
    if weight is not None:
        scale = scale * weight.reshape(1, num_groups, per_channel, 1)
    out = centered.reshape(batch, num_groups, per_channel, -1) * scale
    if bias is not None:
        out = out + bias.reshape(1, num_groups, per_channel, 1)
    return out.reshape(x.shape)


def group_norm(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5,
               impl: GroupNormImpl = "fused") -> torch.Tensor:
    """GroupNorm by the chosen implementation."""
    if impl == "fused":
        from harness.models.kernels.triton import enabled as _triton_enabled

        if _triton_enabled(x):  # CUDA fp16/bf16: the fused Triton kernel
            from harness.models.kernels.triton.groupnorm import group_norm as _triton_group_norm

            return _triton_group_norm(x, num_groups, weight, bias, eps)
        return F.group_norm(x, num_groups, weight, bias, eps)
    if impl == "decomposed":
        return group_norm_decomposed(x, num_groups, weight, bias, eps)
    if impl == "folded":
        return group_norm_folded(x, num_groups, weight, bias, eps)
    raise ValueError(f"unknown GroupNorm impl {impl!r}; known: {', '.join(GROUPNORM_IMPLS)}")


class GroupNorm(nn.GroupNorm):
    """Drop-in nn.GroupNorm whose forward uses `impl`; same parameters and state_dict keys."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 impl: GroupNormImpl = "fused", device=None, dtype=None) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=affine, device=device, dtype=dtype)
        if impl not in GROUPNORM_IMPLS:
            raise ValueError(f"unknown GroupNorm impl {impl!r}; known: {', '.join(GROUPNORM_IMPLS)}")
        self.impl: GroupNormImpl = impl

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm, impl: GroupNormImpl) -> "GroupNorm":
        """A GroupNorm sharing `norm`'s weight and bias Parameters (no copy)."""
        new = cls(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine, impl=impl, device="meta")
        new.weight = norm.weight
        new.bias = norm.bias
        new.train(norm.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps, self.impl)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl}"
