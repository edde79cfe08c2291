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

# SD 1.4's text encoder: the CLIP ViT-L/14 text transformer (CompVis/stable-diffusion-v1-4
# text_encoder/config.json), a transformers CLIPTextConfig. 123,060,480 parameters.
SD14_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
SD14_TEXT_ENCODER_PARAMS = 123_060_480

# SD 1.4's VAE (vae/config.json), a diffusers AutoencoderKL. Only the decoder half runs in generation:
# post_quant_conv (1x1, 20 parameters) + decoder (49,490,179) = 49,490,199 parameters.
SD14_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD14_VAE_DECODER_PARAMS = 49_490_199

# Small configs of the same architectures (hidden size = the tiny UNet's cross_attention_dim).
TINY_TEXT_ENCODER: dict[str, Any] = {
    **SD14_TEXT_ENCODER,
    "vocab_size": 1000,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 8,
    "projection_dim": 32,
}
TINY_VAE: dict[str, Any] = {
    **SD14_VAE,
    "block_out_channels": [16, 16, 32, 32],
    "norm_num_groups": 8,
    "sample_size": 128,
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
    text_encoder: dict[str, Any] = field(default_factory=dict)  # transformers CLIPTextConfig kwargs
    vae: dict[str, Any] = field(default_factory=dict)  # diffusers AutoencoderKL kwargs (the decoder runs)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        s = self.unet["sample_size"]
        return (self.batch, self.unet["in_channels"], s, s)

    @property
    def context_shape(self) -> tuple[int, int, int]:
        return (self.batch, self.text_tokens, self.unet["cross_attention_dim"])

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel (8 for SD: the decoder upsamples len(blocks) - 1 times)."""
        return 2 ** (len(self.vae.get("block_out_channels", [0] * 4)) - 1)

    @property
    def image_size(self) -> int:
        """The native generated image side: latent sample_size x vae_scale_factor (512 for SD 1.4)."""
        return self.unet["sample_size"] * self.vae_scale_factor


MODELS: dict[str, ModelConfig] = {
    "sd14": ModelConfig(
        "sd14", SD14_UNET, text_encoder=SD14_TEXT_ENCODER, vae=SD14_VAE,
        description="Stable Diffusion 1.4 UNet (859,520,964 parameters), 4x64x64 latent, 77x768 context, batch 2",
    ),
    "tiny": ModelConfig(
        "tiny", TINY_UNET, text_tokens=8, text_encoder=TINY_TEXT_ENCODER, vae=TINY_VAE,
        description="Small config of the SD 1.4 UNet architecture (same blocks, small widths) for tests",
    ),
}


def get_model_config(name: str) -> ModelConfig:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
