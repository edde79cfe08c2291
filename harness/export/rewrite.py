"""The networks as a converter sees them: the variant's kernels, with attention written per format.

Three components (`COMPONENTS`), each wrapped so that the artifact's signature is what the host
pipeline (`harness.models.pipeline.Pipeline`) feeds it, inputs in this order:

* `unet`: (sample [B, 4, h, w] fp32, timestep [] fp32, encoder_hidden_states [B, T, D] fp32) ->
  noise prediction [B, 4, h, w]. (.tflite signature names args_0, args_1, args_2, as before.)
* `text_encoder`: (input_ids [B, T] int32) -> last_hidden_state [B, T, D] fp32: the transformers
  CLIPTextModel of `pipeline.build_text_encoder` (B = the config's batch, 2: unconditional +
  conditional; T = its text_tokens, 77 for SD 1.4). int32 ids (the pipeline's int64 ids cast):
  neither LiteRT's GPU delegate nor Core ML wants int64 inputs. The flags do not apply (no diffusers
  Attention, GroupNorm or 3x3 conv in CLIP): one artifact for every ladder row.
* `vae_decoder`: (latents [1, 4, h, w] fp32) -> image [1, 3, 8h, 8w] in [-1, 1]: `pipeline.VAEDecoder`
  (post_quant_conv + decoder; divides by the scaling factor itself). h = w = the UNet's sample_size
  (64 for SD 1.4: 512x512 images). The flags apply to its blocks as to the UNet's: GroupNorm
  (groupnorm_gelu), the mid-block attention (softmax, attention; it has a GroupNorm of its own,
  applied here on the 4-D input), 3x3 convs (n/a in both formats); it has no GELU.

Signature/input names: .tflite `input_ids` / `latents` (litert-torch sample_kwargs; the UNet keeps its
positional args_0..2), output `output_0`; .mlpackage: the forward's argument names (`sample`,
`timestep`, `encoder_hidden_states`; `input_ids`; `latents`). A runner that feeds by signature order
gets them in the order above.

`harness.models.patch.apply_flags` installs the kernels (GroupNorm and GELU decomposed or fused,
direct 3x3 convolution: Winograd is n/a in both formats). What a converter needs written differently
is attention, which `ExportAttnProcessor` replaces, and, for .tflite, what LiteRT's GPU engine refuses
(`gpu_clean`): every .tflite compiles wholly on the GPU accelerator (README "The phone GPU engine on
this host" lists what it takes):

* the fused GroupNorm is `group_norm_folded` (statistics folded into a per-channel scale), not the
  `odml.group_norm` composite, and not F.group_norm (lowered with BROADCAST_TO);
* a scalar timestep is made [B] by concatenating it B times before the UNet (CONCATENATION):
  diffusers' `timesteps.expand(B)` of a scalar becomes BROADCAST_TO, and so do `repeat` and a
  multiply with ones(B), which the converter simplifies to a broadcast;
* with int8 weights every nn.Linear runs as a 1x1 convolution (`LinearAsConv1x1`, same weight and
  bias): ML Drift's FULLY_CONNECTED fails to build with per-channel int8 weights ("Shape mismatch:
  {bhwc, {O, 1, 1, I}} vs {bhwc, {1, 1, O, I}}") while its CONV_2D takes them;
* embedding tables stay fp32 in fp16/int8 artifacts (`harness.export.tflite.quant_recipe`).

The attention cores:

* softmax=naive: max, subtract, exp, sum, reciprocal, multiply as separate ops. Written as
  e * (1 / sum(e)): the TFLite converter folds the usual e / sum(e) back into one SOFTMAX op.
* softmax=optimized: torch.softmax, one SOFTMAX (tflite) / softmax (Core ML) op. (The PyTorch kernel
  of this row, `optimized_softmax_attention`, normalizes after the product with V; as a graph for a
  runtime with a softmax kernel, the row means that kernel.)
* attention=flash, tflite: FlashAttention's algorithm as a graph (`flash_attention` of
  `harness.models.kernels.attention`, the CPU kernel of the same row): keys and values in blocks of
  `tflite_flash_block(T_k)` keys with an online softmax (running row max and sum, the accumulator
  rescaled as the max grows), so no [T_q, T_k] score matrix exists; the largest score tensor is
  [B, N, T_q, block]. Not the `odml.scaled_dot_product_attention` composite: LiteRT's host GPU
  engine crashes on every composite (README "The phone GPU engine on this host"); `_tflite_flash`
  builds that composite for engines that take it.
* attention=flash, coreml: F.scaled_dot_product_attention without a scale argument (the default
  1/sqrt(d) is SD's), which the iOS18 target converts to the fused scaled_dot_product_attention op.
* attention=relu (MobileDiffusion's ReLU attention, `kernels.attention.relu_attention`):
  relu(Q K^T * scale) V / T_k as primitive ops, written (relu(Q K^T) V) * (scale / T_k): BATCH_MATMUL,
  RELU, BATCH_MATMUL, MUL in .tflite; matmul, relu, matmul, mul in Core ML, no softmax; the softmax flag does not apply.
  Its reference is the unpatched model with ReLU attention (`KernelAttnProcessor(attention="relu")`),
  since it is a different function from softmax attention.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.export.mapping import COMPONENTS, check_component  # noqa: F401 - re-exported
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


def _relu_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q/k/v [B, N, T, H]: relu(Q K^T * scale) V / T_k (kernels.attention.relu_attention, unblocked),
    written as (relu(Q K^T) V) * (scale / T_k): the same function for scale > 0, the ReLU a separate op
    (TFLite would fuse a ReLU after the MUL by the scale into that MUL), the scaling on [T_q, H]."""
    if scale <= 0:
        raise ValueError(f"relu attention export needs a positive scale, got {scale}")
    return torch.matmul(torch.relu(torch.matmul(q, k.transpose(-1, -2))), v) * (scale / k.shape[-2])


# Keys per block of the .tflite flash graph: at most this many.
TFLITE_FLASH_MAX_BLOCK = 512


def tflite_flash_block(t_k: int) -> int:
    """Keys per block of the .tflite flash graph: T_k below 128 keys (one block: no score matrix is
    large then), else at most TFLITE_FLASH_MAX_BLOCK and at least two blocks (SD 1.4: 4096 keys ->
    8 blocks of 512; 1024 -> 2 x 512; 256 -> 2 x 128; the 77 text tokens -> 1)."""
    if t_k < 128:
        return t_k
    return min(TFLITE_FLASH_MAX_BLOCK, -(-t_k // 2))


def _tflite_flash_tiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q/k/v [B, N, T, H] -> [B, N, T_q, H]: online-softmax attention over key blocks, primitive ops."""
    from harness.models.kernels.attention import flash_attention

    return flash_attention(q, k, v, scale, block_kv=tflite_flash_block(k.shape[-2]), use_sdpa=False)


def _tflite_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q/k/v [B, T, N, H] -> [B, T_q, N, H] inside the odml.scaled_dot_product_attention composite
    (for GPU engines that take composites; LiteRT's host GPU accelerator crashes on it)."""
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
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.attention == "relu":
            out = _relu_core(q, k, v, scale)
        elif self.attention == "flash" and self.fmt == "tflite":
            out = _tflite_flash_tiled(q, k, v, scale)
        elif self.attention == "flash":
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
            ("spatial_norm", attn.spatial_norm is not None),
            ("attention_mask", attention_mask is not None), ("norm_q", getattr(attn, "norm_q", None) is not None),
            ("norm_k", getattr(attn, "norm_k", None) is not None),
        ) if present]
        if unsupported:
            raise NotImplementedError(f"export supports SD 1.x attention only; this block uses {unsupported}")
        residual = hidden_states
        input_ndim = hidden_states.ndim
        if attn.group_norm is not None and input_ndim != 4:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            if attn.group_norm is not None:  # the VAE's attention: the same groups over [B, C, H, W]
                hidden_states = attn.group_norm(hidden_states)
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
        if timestep.dim() == 0:  # [B] by concatenation: an expand, repeat or t * ones(B) lowers to BROADCAST_TO
            timestep = torch.cat([timestep.reshape(1)] * sample.shape[0])
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class TextEncoderForExport(nn.Module):
    """input_ids [B, T] (int32) -> last_hidden_state [B, T, D] of a transformers CLIPTextModel."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, return_dict=False)[0]


class DecoderForExport(nn.Module):
    """latents [1, 4, h, w] -> image [1, 3, 8h, 8w]: pipeline.VAEDecoder, one tensor in and out."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)


# Input names in signature order, and the output's meaning, per component (see the module docstring).
INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "unet": ("sample", "timestep", "encoder_hidden_states"),
    "text_encoder": ("input_ids",),
    "vae_decoder": ("latents",),
}
OUTPUT_NAMES: dict[str, str] = {"unet": "noise_pred", "text_encoder": "last_hidden_state", "vae_decoder": "image"}


def example_inputs(target: Any, seed: int, component: str = "unet") -> tuple[torch.Tensor, ...]:
    """What the host pipeline feeds `component` of `target` (a ModelConfig, or a ModelRef for a factory
    model), seeded: the UNet's example inputs; token ids [batch, text_tokens] int32 (BOS, seeded ids,
    EOS padding: `pipeline.random_token_ids`); decoder latents [1, 4, s, s] (s = the UNet's sample_size)."""
    from harness.models import unet as unet_mod

    check_component(component)
    if component == "unet":
        return unet_mod.example_inputs(target, seed)
    if component == "text_encoder":
        from harness.models.pipeline import random_token_ids

        ids = random_token_ids(target, "a photograph of an astronaut riding a horse", seed)
        ids = ids.repeat((target.batch + 1) // 2, 1)[: target.batch]  # [uncond, cond] for batch 2
        return (ids.to(torch.int32),)
    s = target.unet["sample_size"]
    gen = torch.Generator().manual_seed(seed + 1)
    return (torch.randn((1, target.unet.get("in_channels", 4), s, s), generator=gen),)


def _build(target: Any, weights: str | None, seed: int, component: str) -> nn.Module:
    if component == "unet":
        from harness.models.unet import build_unet

        return build_unet(target, weights, seed, "fp32")
    if component == "text_encoder":
        from harness.models.pipeline import build_text_encoder

        return build_text_encoder(target, weights, seed, "fp32")
    from harness.models.pipeline import build_vae_decoder

    return build_vae_decoder(target, weights, seed, "fp32")


def _wrap(module: nn.Module, component: str) -> nn.Module:
    wrapper = {"unet": UNetForExport, "text_encoder": TextEncoderForExport, "vae_decoder": DecoderForExport}
    return wrapper[component](module).eval()


class LinearAsConv1x1(nn.Module):
    """nn.Linear computed as a 1x1 convolution over [..., C] inputs (same weight and bias Parameters):
    the form of int8 .tflite artifacts (see the module docstring)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(1, -1, 1, x.shape[-1]).permute(0, 3, 1, 2)  # [1, C, rows, 1]
        out = F.conv2d(rows, self.weight[:, :, None, None], self.bias)
        return out.permute(0, 2, 3, 1).reshape(*lead, self.weight.shape[0])


def gpu_clean(module: nn.Module, dtype: str) -> nn.Module:
    """The .tflite forms LiteRT's GPU engine takes (module docstring), in place: the fused GroupNorm
    folded, and with int8 weights every nn.Linear as a 1x1 convolution."""
    from harness.models.kernels.groupnorm import GroupNorm

    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, GroupNorm) and child.impl == "fused":
                child.impl = "folded"
            elif dtype == "int8" and type(child) is nn.Linear:
                setattr(parent, name, LinearAsConv1x1(child))
    return module


def export_model(cfg: Any, weights: str | None, seed: int, flags: Flags, fmt: str,
                 component: str = "unet", dtype: str = "fp32") -> nn.Module:
    """The fp32 `component` of `cfg` (a ModelConfig, or a ModelRef for a factory model) with the
    kernels of `flags` (already effective for `fmt`) and the attention of `fmt`, wrapped for export;
    for .tflite in the GPU engine's forms (`gpu_clean`, which depend on the weight `dtype`).
    The text encoder is built as is (the flags do not apply to it)."""
    from diffusers.models.attention_processor import Attention

    from harness.models.patch import apply_flags

    check_component(component)
    module = _build(cfg, weights, seed, component)
    if component != "text_encoder":
        apply_flags(module, flags)
        processor = ExportAttnProcessor(fmt, flags.softmax, flags.attention)
        for sub in module.modules():
            if isinstance(sub, Attention):
                sub.set_processor(processor)
    if fmt == "tflite":
        gpu_clean(module, dtype)
    return _wrap(module, component)


def reference_model(cfg: Any, weights: str | None, seed: int, component: str = "unet",
                    flags: Flags | None = None) -> nn.Module:
    """The plain module (no kernels patched): what every artifact is checked against. With
    attention=relu (a different function), the plain module with ReLU attention processors."""
    from diffusers.models.attention_processor import Attention

    from harness.models.kernels.attention import KernelAttnProcessor

    check_component(component)
    module = _build(cfg, weights, seed, component)
    if flags is not None and flags.attention == "relu" and component != "text_encoder":
        processor = KernelAttnProcessor(softmax="optimized", attention="relu")
        for sub in module.modules():
            if isinstance(sub, Attention):
                sub.set_processor(processor)
    return _wrap(module, component)
