"""The UNet as a converter sees it: the variant's kernels, with attention written per format.

`harness.models.patch.apply_flags` installs the kernels (GroupNorm and GELU decomposed or fused,
direct 3x3 convolution: Winograd is n/a in both formats). What a converter needs written differently
is attention, which `ExportAttnProcessor` replaces:

* softmax=naive: max, subtract, exp, sum, reciprocal, multiply as separate ops. Written as
  e * (1 / sum(e)): the TFLite converter folds the usual e / sum(e) back into one SOFTMAX op.
* softmax=optimized: torch.softmax, one SOFTMAX (tflite) / softmax (Core ML) op. (The PyTorch kernel
  of this row, `optimized_softmax_attention`, normalizes after the product with V; as a graph for a
  runtime with a softmax kernel, the row means that kernel.)
* attention=flash, tflite: the `odml.scaled_dot_product_attention` composite around
  F.scaled_dot_product_attention, with q/k/v as [B, T, N, H] and an explicit zero mask
  [B, 1, 1, T_k] (broadcast over queries; a [B, 1, T_q, T_k] constant would weigh 128 MiB at SD
  1.4's 4096 tokens).
* attention=flash, coreml: F.scaled_dot_product_attention without a scale argument (the default
  1/sqrt(d) is SD's), which the iOS18 target converts to the fused scaled_dot_product_attention op.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.variants import Flags


def _naive_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q/k/v [B, N, T, H] -> [B, N, T_q, H], softmax as separate ops."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    shifted = scores - scores.amax(dim=-1, keepdim=True)
    exps = torch.exp(shifted)
    probs = exps * torch.reciprocal(exps.sum(dim=-1, keepdim=True))
    return torch.matmul(probs, v)


def _softmax_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _tflite_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q/k/v [B, T, N, H] -> [B, T_q, N, H] inside the odml.scaled_dot_product_attention composite."""
    from litert_torch.hlfb import StableHLOCompositeBuilder

    mask = torch.zeros((q.shape[0], 1, 1, k.shape[1]), dtype=q.dtype)
    builder = StableHLOCompositeBuilder(name="odml.scaled_dot_product_attention", attr={"scale": scale})
    q, k, v, mask = builder.mark_inputs(q, k, v, mask)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, scale=scale)
    return builder.mark_outputs(out.transpose(1, 2))


def _coreml_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q/k/v [B, N, T, H]; no scale argument, so coremltools emits the fused iOS18 op."""
    default = 1.0 / math.sqrt(q.shape[-1])
    if not math.isclose(scale, default, rel_tol=1e-6):
        q = q * (scale / default)
    return F.scaled_dot_product_attention(q, k, v)


class ExportAttnProcessor:
    """diffusers attention processor for export: SD 1.x self/cross attention, core by flags and format."""

    def __init__(self, fmt: str, softmax: str, attention: str) -> None:
        if fmt not in ("tflite", "coreml"):
            raise ValueError(f"unknown artifact format {fmt!r}; known formats: tflite, coreml")
        self.fmt, self.softmax, self.attention = fmt, softmax, attention

    def __repr__(self) -> str:
        return f"ExportAttnProcessor(fmt={self.fmt!r}, softmax={self.softmax!r}, attention={self.attention!r})"

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q/k/v [B, T, N, H] -> [B, T_q, N, H]."""
        if self.attention == "flash" and self.fmt == "tflite":
            return _tflite_flash(q, k, v, scale)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.attention == "flash":
            out = _coreml_flash(q, k, v, scale)
        elif self.softmax == "naive":
            out = _naive_core(q, k, v, scale)
        else:
            out = _softmax_core(q, k, v, scale)
        return out.transpose(1, 2)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        unsupported = [name for name, present in (
            ("spatial_norm", attn.spatial_norm is not None), ("group_norm", attn.group_norm is not None),
            ("attention_mask", attention_mask is not None), ("norm_q", getattr(attn, "norm_q", None) is not None),
            ("norm_k", getattr(attn, "norm_k", None) is not None),
        ) if present]
        if unsupported:
            raise NotImplementedError(f"export supports SD 1.x attention only; this block uses {unsupported}")
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim)
        key = key.view(batch, -1, attn.heads, head_dim)
        value = value.view(batch, -1, attn.heads, head_dim)
        out = self.core(query, key, value, float(attn.scale))
        out = out.reshape(batch, -1, attn.heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class UNetForExport(nn.Module):
    """(sample, timestep, text context) -> noise prediction: one tensor out, no dataclass."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


def export_model(cfg: Any, weights: str | None, seed: int, flags: Flags, fmt: str) -> UNetForExport:
    """The fp32 UNet of `cfg` with the kernels of `flags` (already effective for `fmt`) and the
    attention of `fmt`, wrapped for export."""
    from diffusers.models.attention_processor import Attention

    from harness.models.patch import apply_flags
    from harness.models.unet import build_unet

    unet = build_unet(cfg, weights, seed, "fp32")
    apply_flags(unet, flags)
    processor = ExportAttnProcessor(fmt, flags.softmax, flags.attention)
    for module in unet.modules():
        if isinstance(module, Attention):
            module.set_processor(processor)
    return UNetForExport(unet).eval()


def reference_model(cfg: Any, weights: str | None, seed: int) -> UNetForExport:
    """The plain diffusers UNet (no kernels patched): what every artifact is checked against."""
    from harness.models.unet import build_unet

    return UNetForExport(build_unet(cfg, weights, seed, "fp32")).eval()
