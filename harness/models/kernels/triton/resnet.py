"""A diffusers ResnetBlock2D forward that fuses GroupNorm + SiLU (and the time-embedding add before
norm2) into the Triton GroupNorm kernels, for CUDA fp16/bf16 inputs.

`patch.apply_flags` binds `fused_resnet_forward` to SD's resnet blocks when the S-GN/GELU flag is on
(`folded_resnet_forward`, which also folds the convolutions' biases, with HARNESS_FOLD_BIAS=1).
Anything it does not cover (CPU tensors, fp32, up/down-sampling resnets, scale_shift time embedding,
other nonlinearities, a GroupNorm not in fused mode) runs the class's own forward unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.kernels.epilogue import (channels_last_4d, conv1x1_gemm, conv_without_bias, gemm_eligible,
                                             silu_shared, summed_bias)
from harness.models.kernels.triton import enabled


def resnet_fusable(block: nn.Module) -> bool:
    """Whether `fused_resnet_forward` covers this ResnetBlock2D's configuration."""
    return (block.upsample is None and block.downsample is None and block.time_embedding_norm == "default"
            and isinstance(block.nonlinearity, nn.SiLU) and isinstance(block.norm1, nn.GroupNorm)
            and isinstance(block.norm2, nn.GroupNorm) and getattr(block.norm1, "impl", "fused") == "fused"
            and getattr(block.norm2, "impl", "fused") == "fused" and block.norm1.affine and block.norm2.affine)


def _fallback(self: nn.Module, input_tensor: torch.Tensor, temb, args, kwargs) -> torch.Tensor | None:
    """The class's own forward where the fused ones do not apply (CPU, fp32, other block shapes), else None."""
    if not (enabled(input_tensor) and resnet_fusable(self)) or args or kwargs:
        return type(self).forward(self, input_tensor, temb, *args, **kwargs)
    return None


def fused_resnet_forward(self: nn.Module, input_tensor: torch.Tensor, temb: torch.Tensor | None,
                         *args, **kwargs) -> torch.Tensor:
    """ResnetBlock2D.forward with norm1+SiLU and (h + temb)->norm2->SiLU as fused Triton kernels."""
    out = _fallback(self, input_tensor, temb, args, kwargs)
    if out is not None:
        return out
    from harness.models.kernels.triton.groupnorm import group_norm

    n1, n2 = self.norm1, self.norm2
    hidden = group_norm(input_tensor, n1.num_groups, n1.weight, n1.bias, n1.eps, silu=True)
    hidden = self.conv1(hidden)
    add = None
    if self.time_emb_proj is not None and temb is not None:
        if not self.skip_time_act:
            temb = self.nonlinearity(temb)
        add = self.time_emb_proj(temb)
    hidden = group_norm(hidden, n2.num_groups, n2.weight, n2.bias, n2.eps, silu=True, add=add)
    hidden = self.conv2(self.dropout(hidden))
    shortcut = self.conv_shortcut(input_tensor) if self.conv_shortcut is not None else input_tensor
    out = shortcut + hidden
    if self.output_scale_factor != 1.0:
        out = out / self.output_scale_factor
    return out


def folded_resnet_forward(self: nn.Module, input_tensor: torch.Tensor, temb: torch.Tensor | None,
                          *args, **kwargs) -> torch.Tensor:
    """fused_resnet_forward with the convolutions' biases added inside kernels that run anyway
    (harness.models.kernels.epilogue; `patch.apply_flags` binds it when HARNESS_FOLD_BIAS=1)."""
    out = _fallback(self, input_tensor, temb, args, kwargs)
    if out is not None:
        return out
    from harness.models.kernels.triton.groupnorm import group_norm

    n1, n2 = self.norm1, self.norm2
    hidden = group_norm(input_tensor, n1.num_groups, n1.weight, n1.bias, n1.eps, silu=True)
    # conv1's bias joins the add before norm2 (norm2 sees conv1(h) + b1 + temb), inside the GroupNorm kernel
    hidden = conv_without_bias(self.conv1, hidden)
    add = None
    if self.time_emb_proj is not None and temb is not None:
        if not self.skip_time_act:
            temb = silu_shared(temb)  # the same embedding in every block: one SiLU per UNet call
        proj = self.time_emb_proj
        add = F.linear(temb, proj.weight, summed_bias(self, "temb+conv1", proj.bias, self.conv1.bias))
    elif self.conv1.bias is not None:
        add = self.conv1.bias.expand(hidden.shape[0], -1)
    hidden = group_norm(hidden, n2.num_groups, n2.weight, n2.bias, n2.eps, silu=True, add=add)
    hidden = self.dropout(hidden)
    short = self.conv_shortcut
    if short is not None and gemm_eligible(short) and channels_last_4d(input_tensor):
        # a 1x1 shortcut is a GEMM whose epilogue adds both biases (its own and conv2's)
        hidden = conv_without_bias(self.conv2, hidden)
        shortcut = conv1x1_gemm(input_tensor, short.weight, summed_bias(self, "shortcut+conv2", short.bias,
                                                                        self.conv2.bias))
    else:
        hidden = self.conv2(hidden)
        shortcut = short(input_tensor) if short is not None else input_tensor
    out = shortcut + hidden
    if self.output_scale_factor != 1.0:
        out = out / self.output_scale_factor
    return out
