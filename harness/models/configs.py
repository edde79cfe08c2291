"""Model configurations: the exact SD 1.4 architecture and small configs of the same architecture.

The SD 1.4 UNet config is CompVis/stable-diffusion-v1-4's unet/config.json (859,520,964 parameters).
`tiny` keeps every block type, the block layout, the attention placement and the GroupNorm/GELU/3x3
structure, with small widths, so tests exercise the same code paths in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SD14_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,  # diffusers' name for the number of heads in SD 1.x (head dims 40/80/160)
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD14_UNET_PARAMS = 859_520_964

TINY_UNET: dict[str, Any] = {
    **SD14_UNET,
    "attention_head_dim": 2,
    "block_out_channels": [32, 64, 64, 64],
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
    "sample_size": 16,
}


@dataclass(frozen=True)
class ModelConfig:
    """A named model: its UNet config and the shapes of one UNet iteration."""

    name: str
    unet: dict[str, Any]
    text_tokens: int = 77
    batch: int = 2  # classifier-free guidance: unconditional + conditional
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        s = self.unet["sample_size"]
        return (self.batch, self.unet["in_channels"], s, s)

    @property
    def context_shape(self) -> tuple[int, int, int]:
        return (self.batch, self.text_tokens, self.unet["cross_attention_dim"])


MODELS: dict[str, ModelConfig] = {
    "sd14": ModelConfig(
        "sd14", SD14_UNET,
        description="Stable Diffusion 1.4 UNet (859,520,964 parameters), 4x64x64 latent, 77x768 context, batch 2",
    ),
    "tiny": ModelConfig(
        "tiny", TINY_UNET, text_tokens=8,
        description="Small config of the SD 1.4 UNet architecture (same blocks, small widths) for tests",
    ),
}


def get_model_config(name: str) -> ModelConfig:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
