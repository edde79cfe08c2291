"""A MobileDiffusion-like UNet: an APPROXIMATION built from the paper's description, random weights.

MobileDiffusion (Zhao et al., "MobileDiffusion: Instant Text-to-Image Generation on Mobile Devices",
arXiv 2311.16567) publishes design choices, not a checkpoint or a config. This factory follows the
choices the paper describes, expressed with diffusers' UNet2DConditionModel blocks:

* transformer blocks only at the lower resolutions: no attention at all at the highest latent
  resolution (64x64), one transformer layer per block at 32x32, two per block at 16x16 and in the
  middle block ("more transformers in the middle of UNet", self-attention at high resolution removed);
* separable convolutions in the innermost blocks: every 3x3 convolution of the ResNet blocks at the
  lowest resolution and in the middle block is a depthwise 3x3 + pointwise 1x1 pair (SeparableConv2d);
* three resolution levels (320, 640, 1024 channels) instead of SD's four, fewer parameters:
  425,885,828 UNet parameters (Google's MobileDiffusion announcement gives about 520M for the whole
  model, text encoder and decoder included; SD 1.4's UNet alone has 859.5M);
* ReLU attention is a run-time option: the `attention: relu` flag (harness.models.kernels.attention).

Not reproduced (no public details precise enough, or not expressible with the standard blocks): the
exact channel/layer counts, shared key-value projections, trimmed feed-forward ratios, swish in place
of GELU, the pruned residual blocks, and of course the trained weights. Latency and memory of this
network indicate what such a design costs; they are not MobileDiffusion's published numbers.

Factory contract: see harness.models.loaders (returns (module, input_shapes)).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

# The full-size approximation: 4x64x64 latent (512x512 images), CLIP ViT-L/14 text context (77x768).
MOBILEDIFFUSION_LIKE_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1024],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 1, 2],  # none used at 64x64 (no attention there)
    "attention_head_dim": [5, 10, 16],  # diffusers' name for the number of heads: head dim 64
    "cross_attention_dim": 768,
    "norm_num_groups": 32,
    "act_fn": "silu",
}
MOBILEDIFFUSION_LIKE_PARAMS = 425_885_828
TEXT_TOKENS = 77

# The small twin for tests: same block layout and separable innermost convs, small widths.
TINY_MOBILEDIFFUSION_LIKE_UNET: dict[str, Any] = {
    **MOBILEDIFFUSION_LIKE_UNET,
    "sample_size": 16,
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "transformer_layers_per_block": [1, 1, 2],
    "attention_head_dim": [2, 2, 2],
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
}
TINY_TEXT_TOKENS = 8


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (groups = in_channels) then pointwise 1x1: a drop-in for a 3x3 nn.Conv2d."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=padding,
                                   groups=in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _separable_resnets(block: nn.Module) -> int:
    """Replace conv1/conv2 of every ResnetBlock2D under `block` by SeparableConv2d; returns how many."""
    from diffusers.models.resnet import ResnetBlock2D

    n = 0
    for module in block.modules():
        if isinstance(module, ResnetBlock2D):
            for attr in ("conv1", "conv2"):
                conv = getattr(module, attr)
                setattr(module, attr, SeparableConv2d(conv.in_channels, conv.out_channels,
                                                      stride=conv.stride[0], padding=conv.padding[0]))
                n += 1
    return n


def _build(config: dict[str, Any], text_tokens: int, seed: int) -> tuple[nn.Module, dict[str, tuple[int, ...]]]:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config)
    # Innermost blocks: the lowest-resolution down/up blocks and the middle block.
    for block in (unet.down_blocks[-1], unet.mid_block, unet.up_blocks[0]):
        _separable_resnets(block)
    s = config["sample_size"]
    shapes = {"sample": (2, config["in_channels"], s, s), "timestep": (),
              "context": (2, text_tokens, config["cross_attention_dim"])}
    return unet, shapes


def build_unet(seed: int = 0) -> tuple[nn.Module, dict[str, tuple[int, ...]]]:
    """The full-size MobileDiffusion-like UNet (random weights) and its input shapes (batch 2)."""
    return _build(MOBILEDIFFUSION_LIKE_UNET, TEXT_TOKENS, seed)


def build_tiny_unet(seed: int = 0) -> tuple[nn.Module, dict[str, tuple[int, ...]]]:
    """The small twin for tests (same layout, small widths)."""
    return _build(TINY_MOBILEDIFFUSION_LIKE_UNET, TINY_TEXT_TOKENS, seed)
