"""Build the UNet of a named config with random or user-supplied weights, and its example inputs."""
from __future__ import annotations

import hashlib
import json
import os
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
               dtype: str = "fp32", random_weights_cache: Path | None = None) -> torch.nn.Module:
    """The UNet of `model` (a built-in name, a ModelConfig, or a ModelRef: built-in, unet_config or
    factory; see harness.models.loaders), in eval mode, without gradients. `weights` and `seed` are
    used as given (pass ref.weights, ref.seed for a ModelRef).

    `random_weights_cache`: a folder where the random (seeded) weights of a config are kept after the first
    build (`seeded_unet`); the default init of SD 1.4's 860M parameters takes 10-15 s of every job on a
    2-core CPU, loading them back about 2 s."""
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
    elif random_weights_cache is not None:
        unet = seeded_unet(cfg.unet, seed, Path(random_weights_cache))
    else:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**cfg.unet)
    return _finish(unet, dtype)


def seeded_unet(unet_config: dict, seed: int, cache: Path) -> torch.nn.Module:
    """UNet2DConditionModel(**unet_config) with the default init under torch.manual_seed(seed), the same
    tensors bit for bit, kept in `cache` as safetensors keyed by the config, the seed and the torch and
    diffusers versions (whose init code decides the values). A hit builds the module on the meta device
    and takes the stored tensors as its parameters; an unreadable entry is built again."""
    import diffusers
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(json.dumps([unet_config, seed, torch.__version__, diffusers.__version__],
                                    sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = cache / f"unet-random-{key}.safetensors"
    if path.is_file():
        try:
            with torch.device("meta"):
                unet = UNet2DConditionModel(**unet_config)
            unet.load_state_dict(load_file(path), strict=True, assign=True)
            if not any(t.is_meta for t in [*unet.parameters(), *unet.buffers()]):
                return unet
        except Exception:  # noqa: BLE001 - a corrupt or stale entry is rebuilt below
            pass
        path.unlink(missing_ok=True)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
    except Exception:  # noqa: BLE001 - a full or read-only cache: the model is built all the same
        tmp.unlink(missing_ok=True)
    return unet


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
