"""Install the kernels that a `Flags` selects into a diffusers UNet2DConditionModel, in place.

`apply_flags(unet, flags)` swaps every standard block for its kernel module (sharing the original
Parameters, so the state_dict keys and values are unchanged and a diffusers checkpoint still loads):

* every diffusers `Attention` gets a `KernelAttnProcessor(flags.softmax, flags.attention)`;
* every `nn.GroupNorm` becomes `kernels.groupnorm.GroupNorm(impl=flags.groupnorm_gelu)`;
* every diffusers `GEGLU` / `GELU` (and `nn.GELU`) becomes the switchable `kernels.gelu` module;
* every 3x3 `nn.Conv2d` becomes `kernels.winograd.Conv3x3(impl=flags.conv3x3, tile=flags.winograd_tile)`
  (Winograd only where the conv is stride 1, dilation 1, groups 1; SD's stride-2 downsamplers stay
  direct).

The baseline (all default flags) is therefore the naive paths (naive softmax, decomposed GroupNorm
and GELU, direct convolution), not diffusers' defaults (F.scaled_dot_product_attention, nn.GroupNorm,
F.gelu); the plain PyTorch reference is the unpatched model.
"""
from __future__ import annotations

import torch
from diffusers.models.activations import GEGLU as DiffusersGEGLU
from diffusers.models.activations import GELU as DiffusersGELU
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from harness.models.kernels.attention import KernelAttnProcessor
from harness.models.kernels.gelu import GEGLU, GELU, TorchGELU
from harness.models.kernels.groupnorm import GroupNorm
from harness.models.kernels.epilogue import folding_enabled
from harness.models.kernels.triton.resnet import folded_resnet_forward, fused_resnet_forward
from harness.models.kernels.winograd import Conv3x3, winograd_eligible
from harness.variants import Flags

# Count keys, and which of them each flag touches (a flag whose keys are all 0 is "n/a" for a model).
COUNT_KEYS: tuple[str, ...] = ("attention", "groupnorm", "gelu", "conv3x3", "conv3x3_winograd")
FLAG_SCOPE: dict[str, tuple[str, ...]] = {
    "softmax": ("attention",),
    "groupnorm_gelu": ("groupnorm", "gelu"),
    "attention": ("attention",),
    "conv3x3": ("conv3x3_winograd",),
}

# Exact types we replace (subclasses with their own forward are left alone), ours included so a second
# apply_flags re-configures an already patched model.
_GROUPNORM_TYPES = (nn.GroupNorm, GroupNorm)
_GEGLU_TYPES = (DiffusersGEGLU, GEGLU)
_GELU_TYPES = (DiffusersGELU, GELU)
_TORCH_GELU_TYPES = (nn.GELU, TorchGELU)
_CONV_TYPES = (nn.Conv2d, Conv3x3)


def _is_conv3x3(module: nn.Module) -> bool:
    return type(module) in _CONV_TYPES and module.kernel_size == (3, 3)


def _check_attention(name: str, attn: Attention) -> None:
    if getattr(attn, "add_k_proj", None) is not None or getattr(attn, "added_kv_proj_dim", None):
        raise NotImplementedError(
            f"attention module {name!r} uses added key/value projections (AttnAddedKVProcessor), which "
            "KernelAttnProcessor does not implement; only plain self/cross attention (SD 1.x) is supported"
        )


def flag_coverage(unet: nn.Module) -> dict[str, int]:
    """How many standard blocks each flag could touch: {attention, groupnorm, gelu, conv3x3,
    conv3x3_winograd}; conv3x3_winograd counts the 3x3 convs that Winograd can run (stride 1, ...)."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for module in unet.modules():
        if isinstance(module, Attention):
            counts["attention"] += 1
        elif type(module) in _GROUPNORM_TYPES:
            counts["groupnorm"] += 1
        elif type(module) in _GEGLU_TYPES + _GELU_TYPES + _TORCH_GELU_TYPES:
            counts["gelu"] += 1
        elif _is_conv3x3(module):
            counts["conv3x3"] += 1
            if winograd_eligible(module):
                counts["conv3x3_winograd"] += 1
    return counts


def flag_applies(coverage: dict[str, int], flag: str) -> bool:
    """False when `flag` touches nothing in a model with this coverage (report it as n/a)."""
    try:
        keys = FLAG_SCOPE[flag]
    except KeyError:
        raise KeyError(f"unknown flag {flag!r}; known flags: {', '.join(FLAG_SCOPE)}") from None
    return any(coverage.get(key, 0) > 0 for key in keys)


def _replacement(module: nn.Module, flags: Flags) -> nn.Module | None:
    """The kernel module standing in for `module` under `flags`, or None if it is not a standard block."""
    kind = type(module)
    if kind in _GROUPNORM_TYPES:
        return GroupNorm.from_group_norm(module, flags.groupnorm_gelu)
    if kind in _GEGLU_TYPES:
        return GEGLU.from_geglu(module, flags.groupnorm_gelu)
    if kind in _GELU_TYPES:
        return GELU.from_gelu(module, flags.groupnorm_gelu)
    if kind in _TORCH_GELU_TYPES:
        new = TorchGELU(approximate=module.approximate, impl=flags.groupnorm_gelu)
        new.train(module.training)
        return new
    if _is_conv3x3(module):
        return Conv3x3.from_conv(module, impl=flags.conv3x3, tile=flags.winograd_tile)
    return None


def apply_flags(unet: nn.Module, flags: Flags) -> dict[str, int]:
    """Install the kernels selected by `flags` into `unet` in place; returns what was replaced.

    Counts: attention (processors set), groupnorm, gelu (GEGLU/GELU modules), conv3x3 (3x3 convs
    replaced) and conv3x3_winograd (of those, how many now run Winograd: 0 unless
    flags.conv3x3 == "winograd"). Parameters are shared, not copied: the state_dict is unchanged.
    Applying again (with the same or other flags) re-configures the model.
    """
    if not isinstance(flags, Flags):
        raise TypeError(f"apply_flags needs a harness.variants.Flags, got {type(flags).__name__}")
    counts = dict.fromkeys(COUNT_KEYS, 0)
    processor = KernelAttnProcessor(softmax=flags.softmax, attention=flags.attention)

    for parent_name, parent in list(unet.named_modules()):
        if isinstance(parent, Attention):
            _check_attention(parent_name, parent)
            parent.set_processor(processor)
            counts["attention"] += 1
        for child_name, child in list(parent.named_children()):
            new = _replacement(child, flags)
            if new is None:
                continue
            setattr(parent, child_name, new)
            if isinstance(new, GroupNorm):
                counts["groupnorm"] += 1
            elif isinstance(new, (GEGLU, GELU, TorchGELU)):
                counts["gelu"] += 1
            elif isinstance(new, Conv3x3):
                counts["conv3x3"] += 1
                counts["conv3x3_winograd"] += int(new.is_winograd)
    _bind_resnet_forwards(unet, flags)
    return counts


def _bind_resnet_forwards(unet: nn.Module, flags: Flags) -> None:
    """With fused GroupNorm, resnet blocks run `fused_resnet_forward` (GroupNorm+SiLU as one Triton kernel
    on CUDA fp16/bf16; the class's own forward everywhere else); otherwise their class forward."""
    fold = folding_enabled()  # decided once, here, not per call (HARNESS_FOLD_BIAS)
    for module in unet.modules():
        if type(module) is ResnetBlock2D:
            if flags.groupnorm_gelu == "fused":
                forward = folded_resnet_forward if fold else fused_resnet_forward
                module.forward = forward.__get__(module)
            else:
                module.__dict__.pop("forward", None)


def describe_patch(unet: nn.Module) -> dict[str, dict[str, int]]:
    """Which implementation each patched block runs now, e.g. {"groupnorm": {"decomposed": 61}, ...}."""
    out: dict[str, dict[str, int]] = {}

    def add(kind: str, impl: str) -> None:
        out.setdefault(kind, {})
        out[kind][impl] = out[kind].get(impl, 0) + 1

    for module in unet.modules():
        if isinstance(module, Attention):
            proc = module.processor
            if isinstance(proc, KernelAttnProcessor):
                add("attention", proc.attention if proc.attention in ("flash", "relu") else f"standard/{proc.softmax}")
            else:
                add("attention", type(proc).__name__)
        elif isinstance(module, GroupNorm):
            add("groupnorm", module.impl)
        elif isinstance(module, (GEGLU, GELU, TorchGELU)):
            add("gelu", module.impl)
        elif isinstance(module, Conv3x3):
            add("conv3x3", f"winograd_f{module.tile}" if module.is_winograd else "direct")
    return out


def precompute_weights(unet: nn.Module) -> int:
    """Compute now what the patched model would otherwise derive from its weights in its first call:
    the Winograd filter transforms (cached on each Conv3x3 until its weight changes). Call it last, after
    the model is on its device in its final memory format and dtype. Then the first call builds nothing
    lazily, and a memory pass may be that call (harness.workloads.unet_iteration). Returns how many
    convolutions were prepared."""
    n = 0
    for module in unet.modules():
        if isinstance(module, Conv3x3) and module.is_winograd:
            module.transformed_weight()
            n += 1
    return n


@torch.no_grad()
def state_dicts_equal(a: nn.Module, b: nn.Module) -> bool:
    """True when both modules have the same state_dict keys and bit-identical values."""
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)



def _transformer_output_in_place_layout(self, hidden_states, residual, batch_size, height, width, inner_dim):
    """Transformer2DModel._get_output_for_continuous_inputs without the `.contiguous()` that copies the
    [B, H, W, C] view back to NCHW: the permuted view already has channels-last strides, so proj_out and
    the residual add run channels-last with no transpose (same values)."""
    if not self.use_linear_projection:
        hidden_states = self.proj_out(hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2))
    else:
        hidden_states = self.proj_out(hidden_states).reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
    return hidden_states + residual


def keep_channels_last(model: nn.Module) -> int:
    """For a model run channels-last (CUDA): make diffusers' 2-D transformer blocks hand back their
    output without copying it to NCHW, which otherwise costs a transpose per block and turns the
    residual add into a mixed-layout elementwise kernel (measured on an H100: 33 copy kernels, 0.41 ms,
    and 98 non-vectorized adds, 0.47 ms, per SD 1.4 iteration). Applies to every ladder row alike.
    Returns the number of blocks changed."""
    import types

    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    changed = 0
    for module in model.modules():
        if isinstance(module, Transformer2DModel) and hasattr(module, "_get_output_for_continuous_inputs"):
            module._get_output_for_continuous_inputs = types.MethodType(_transformer_output_in_place_layout, module)
            changed += 1
    return changed
