"""Build the UNet of a named config with random or user-supplied weights, and its example inputs."""
from __future__ import annotations

from pathlib import Path

import torch

from harness.models.configs import ModelConfig, get_model_config
from harness.protocol import ModelRef

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class WeightsError(ValueError):
    """A --weights directory that cannot be used."""


def _weights_dir(weights: str | Path) -> Path:
    root = Path(weights).expanduser()
    if not root.is_dir():
        raise WeightsError(
            f"weights directory {str(root)!r} does not exist; pass --weights with a local diffusers "
            "checkpoint (the folder holding unet/config.json), or leave it out for random weights"
        )
    unet_dir = root / "unet" if (root / "unet").is_dir() else root
    if not (unet_dir / "config.json").is_file():
        raise WeightsError(
            f"{str(root)!r} is not a diffusers checkpoint: no unet/config.json in it; download one with "
            "`huggingface-cli download CompVis/stable-diffusion-v1-4 --local-dir DIR` on a machine with network"
        )
    return unet_dir


def build_unet(model: "str | ModelConfig | ModelRef" = "sd14", weights: str | Path | None = None, seed: int = 0,
               dtype: str = "fp32") -> torch.nn.Module:
    """The UNet of `model` (a built-in name, a ModelConfig, or a ModelRef: built-in, unet_config or
    factory; see harness.models.loaders), in eval mode, without gradients. `weights` and `seed` are
    used as given (pass ref.weights, ref.seed for a ModelRef)."""
    from diffusers import UNet2DConditionModel

    from harness.models import loaders

    if isinstance(model, ModelRef):
        if model.kind == "factory":
            unet, _ = loaders.call_factory(model.factory, seed)
            return _finish(unet, dtype)
        model = loaders.config_model_config(model) if model.kind == "unet_config" else model.name
    cfg = get_model_config(model) if isinstance(model, str) else model
    if weights is not None:
        unet = UNet2DConditionModel.from_pretrained(str(_weights_dir(weights)), local_files_only=True)
    else:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**cfg.unet)
    return _finish(unet, dtype)


def _finish(unet: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """Cast to `dtype`, eval mode, no gradients."""
    if DTYPES[dtype] != torch.float32:
        from diffusers.utils import logging as dlogging

        dlogging.set_verbosity_error()  # its note on keeping modules in fp32 does not apply to this UNet
        unet = unet.to(DTYPES[dtype])
    unet = unet.eval()
    unet.requires_grad_(False)
    return unet


def example_inputs(model: "str | ModelConfig | ModelRef" = "sd14", seed: int = 0, dtype: str = "fp32",
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latent sample, timestep, text context) for one UNet iteration at the model's shapes (a factory
    model's declared input_shapes)."""
    from harness.models.loaders import input_shapes

    shapes = input_shapes(model)
    gen = torch.Generator().manual_seed(seed + 1)
    sample = torch.randn(shapes["sample"], generator=gen)
    context = torch.randn(shapes["context"], generator=gen)
    timestep = torch.full(shapes["timestep"], 981.0)  # the first step of a 20-step schedule
    t = DTYPES[dtype]
    return sample.to(device, t), timestep.to(device), context.to(device, t)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
