"""SD 1.4 text-to-image generation, component by component, with per-component timing.

The components of a named config (`harness.models.configs`), each with random weights from its
config or loaded from a local diffusers checkpoint (`weights=DIR`: text_encoder/, unet/, vae/,
tokenizer/, scheduler/; local files only):

* text encoder: transformers `CLIPTextModel` (SD 1.4: CLIP ViT-L/14 text, 123,060,480 parameters);
* UNet: `harness.models.unet.build_unet` (859,520,964 parameters);
* VAE decoder: `VAEDecoder`, the `post_quant_conv` + `decoder` half of diffusers' `AutoencoderKL`
  (49,490,199 parameters; the encoder is not part of text-to-image and is not kept);
* scheduler: one of `SCHEDULERS`, built from SD 1.4's scheduler config (scaled_linear betas
  0.00085..0.012, 1000 training steps).

`Pipeline.generate` runs the loop of diffusers' StableDiffusionPipeline: token ids -> text encoder
(unconditional + conditional, batch 2) -> initial noise latents -> per step: scheduler input scaling,
UNet on batch 2, classifier-free guidance, scheduler.step -> VAE decoder -> 8-bit RGB. It returns
the image and an `ImageTimes` with every component's wall time (on CUDA the device is synchronized
at each component boundary, so the times are what the user waits for).
The loop calls the networks through
`ComponentFns`: torch modules by default, or callables a runtime supplies (`Pipeline.from_functions`;
the litert-cpu runtime runs the .tflite files through ai-edge-litert), so every runtime shares the
same scheduler, guidance and timing code.

The default scheduler is DPM-Solver++ (2M): the paper's 20 iterations are the fast-sampler regime
(DPM-Solver, Lu et al. 2022, reaches its quality in 15-25 steps); SD 1.4's shipped PNDM scheduler is
meant for ~50 steps. Latents stay fp32 between steps (the scheduler math); the UNet and the decoder
run in the requested dtype.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from harness.models.configs import ModelConfig, get_model_config
from harness.models.unet import DTYPES, WeightsError, build_unet

# SD 1.4's scheduler/scheduler_config.json (a PNDMScheduler); every scheduler below is built from it.
SD14_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


@dataclass(frozen=True)
class SchedulerSpec:
    """A diffusers scheduler class and the settings that distinguish it."""

    class_name: str
    kwargs: dict[str, Any]
    description: str


SCHEDULERS: dict[str, SchedulerSpec] = {
    "dpmsolver++": SchedulerSpec(
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
        "DPM-Solver++ (2M), multistep, order 2 (default: the fast sampler that 20 iterations imply)"),
    "euler": SchedulerSpec("EulerDiscreteScheduler", {}, "Euler (Karras et al. 2022, discrete)"),
    "pndm": SchedulerSpec("PNDMScheduler", {"skip_prk_steps": True},
                          "PNDM / PLMS (SD 1.4's shipped scheduler; one extra UNet call: steps + 1)"),
}
DEFAULT_SCHEDULER = "dpmsolver++"


class PipelineError(ValueError):
    """Generation arguments that cannot work (unknown scheduler, image size, step count)."""


# ------------------------------------------------------------------------------------ checkpoint parts

def _component_dir(weights: str | Path, name: str, marker: str) -> Path:
    root = Path(weights).expanduser()
    if not root.is_dir():
        raise WeightsError(f"weights directory {str(root)!r} does not exist; pass --weights with a local "
                           "diffusers SD 1.4 checkpoint, or leave it out for random weights")
    sub = root / name
    if not (sub / marker).is_file():
        raise WeightsError(
            f"{str(root)!r} has no {name}/{marker}: the e2e workload needs a full diffusers checkpoint "
            "(text_encoder/, unet/, vae/, tokenizer/, scheduler/); download one with `huggingface-cli "
            "download CompVis/stable-diffusion-v1-4 --local-dir DIR` on a machine with network")
    return sub


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def _finish(module: nn.Module, dtype: str) -> nn.Module:
    if DTYPES[dtype] != torch.float32:
        module = module.to(DTYPES[dtype])
    module = module.eval()
    module.requires_grad_(False)
    return module


def build_text_encoder(model: str | ModelConfig = "sd14", weights: str | Path | None = None, seed: int = 0,
                       dtype: str = "fp32") -> nn.Module:
    """The transformers CLIPTextModel of `model` (random weights from its config, or `weights`/text_encoder)."""
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers.utils import logging as tlogging

    cfg = get_model_config(model) if isinstance(model, str) else model
    if not cfg.text_encoder:
        raise PipelineError(f"model {cfg.name!r} has no text encoder config; e2e needs one (see configs.py)")
    tlogging.set_verbosity_error()
    if weights is not None:
        encoder = CLIPTextModel.from_pretrained(str(_component_dir(weights, "text_encoder", "config.json")),
                                                local_files_only=True)
    else:
        _seeded(seed)
        encoder = CLIPTextModel(CLIPTextConfig(**cfg.text_encoder))
    return _finish(encoder, dtype)


class VAEDecoder(nn.Module):
    """The decoding half of diffusers' AutoencoderKL: latents -> RGB in [-1, 1].

    forward(latents) = decoder(post_quant_conv(latents / scaling_factor)), as AutoencoderKL.decode
    after StableDiffusionPipeline's division by the scaling factor. State-dict keys are the
    AutoencoderKL's (`post_quant_conv.*`, `decoder.*`).
    """

    def __init__(self, post_quant_conv: nn.Module, decoder: nn.Module, scaling_factor: float):
        super().__init__()
        self.post_quant_conv = post_quant_conv
        self.decoder = decoder
        self.scaling_factor = float(scaling_factor)

    @classmethod
    def from_autoencoder(cls, vae: nn.Module) -> "VAEDecoder":
        pqc = vae.post_quant_conv if vae.post_quant_conv is not None else nn.Identity()
        return cls(pqc, vae.decoder, vae.config.scaling_factor)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latents / self.scaling_factor))


def build_vae_decoder(model: str | ModelConfig = "sd14", weights: str | Path | None = None, seed: int = 0,
                      dtype: str = "fp32") -> VAEDecoder:
    """The VAE decoder of `model` (random weights from its AutoencoderKL config, or `weights`/vae)."""
    from diffusers import AutoencoderKL

    cfg = get_model_config(model) if isinstance(model, str) else model
    if not cfg.vae:
        raise PipelineError(f"model {cfg.name!r} has no VAE config; e2e needs one (see configs.py)")
    if weights is not None:
        vae = AutoencoderKL.from_pretrained(str(_component_dir(weights, "vae", "config.json")),
                                            local_files_only=True)
    else:
        _seeded(seed)
        vae = AutoencoderKL(**cfg.vae)
    decoder = VAEDecoder.from_autoencoder(vae)
    del vae  # the encoder half is not part of text-to-image
    return _finish(decoder, dtype)


def build_tokenizer(weights: str | Path):
    """The checkpoint's CLIPTokenizer (`weights`/tokenizer, local files only)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(_component_dir(weights, "tokenizer", "vocab.json")),
                                         local_files_only=True)


def scheduler_config(weights: str | Path | None = None) -> dict[str, Any]:
    """SD 1.4's scheduler config, or the checkpoint's scheduler/scheduler_config.json when there is one."""
    if weights is not None:
        path = Path(weights).expanduser() / "scheduler" / "scheduler_config.json"
        if path.is_file():
            data = json.loads(path.read_text())
            return {k: v for k, v in data.items() if not k.startswith("_")}
    return dict(SD14_SCHEDULER_CONFIG)


def build_scheduler(name: str = DEFAULT_SCHEDULER, config: dict[str, Any] | None = None):
    """A fresh diffusers scheduler `name` (see SCHEDULERS) from `config` (default SD 1.4's)."""
    import inspect

    import diffusers

    try:
        spec = SCHEDULERS[name]
    except KeyError:
        raise PipelineError(f"unknown scheduler {name!r}; known schedulers: {', '.join(SCHEDULERS)}") from None
    cls = getattr(diffusers, spec.class_name)
    accepted = set(inspect.signature(cls.__init__).parameters)
    kwargs = {k: v for k, v in {**(config or SD14_SCHEDULER_CONFIG), **spec.kwargs}.items() if k in accepted}
    return cls(**kwargs)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------ prompt

def random_token_ids(cfg: ModelConfig, prompt: str, seed: int = 0) -> torch.Tensor:
    """[2, text_tokens] ids (unconditional, conditional) standing in for a tokenizer (none offline).

    Unconditional: BOS then EOS padding (what CLIPTokenizer gives for ""). Conditional: BOS, one
    seeded random id per word of `prompt` (at most text_tokens - 2), EOS padding. BOS/EOS are the
    last two ids of the vocabulary, as in CLIP (49406, 49407). Deterministic in (seed, word count).
    """
    vocab, length = cfg.text_encoder["vocab_size"], cfg.text_tokens
    bos, eos = vocab - 2, vocab - 1
    words = max(1, min(length - 2, len(prompt.split())))
    gen = torch.Generator().manual_seed(seed + 2)
    ids = torch.full((2, length), eos, dtype=torch.long)
    ids[:, 0] = bos
    ids[1, 1:1 + words] = torch.randint(0, vocab - 2, (words,), generator=gen)
    return ids


def tokenize(tokenizer, cfg: ModelConfig, prompt: str) -> torch.Tensor:
    """[2, text_tokens] ids of ("", prompt) with the checkpoint's tokenizer, padded to max length."""
    out = tokenizer(["", prompt], padding="max_length", max_length=cfg.text_tokens, truncation=True,
                    return_tensors="pt")
    return out.input_ids


# ------------------------------------------------------------------------------------ the loop

@dataclass
class ImageTimes:
    """Wall times of one generated image, in ms.

    total_ms spans everything from the prompt to the 8-bit image (not the PNG write, not the
    progress callback). unet_ms and
    scheduler_ms have one entry per UNet evaluation; scheduler_ms[i] is that step's non-UNet work
    (batching and input scaling, guidance, scheduler.step). prepare_ms: token ids, set_timesteps,
    initial noise; postprocess_ms: [-1, 1] float -> uint8 HWC on the CPU.
    """

    text_encoder_ms: float = 0.0
    unet_ms: list[float] = field(default_factory=list)
    scheduler_ms: list[float] = field(default_factory=list)
    decoder_ms: float = 0.0
    prepare_ms: float = 0.0
    postprocess_ms: float = 0.0
    total_ms: float = 0.0

    @property
    def components_sum_ms(self) -> float:
        """Text encoder + UNet + scheduler + decoder + prepare + postprocess."""
        return (self.text_encoder_ms + sum(self.unet_ms) + sum(self.scheduler_ms) + self.decoder_ms
                + self.prepare_ms + self.postprocess_ms)

    @property
    def gap_ms(self) -> float:
        """total - sum of the timed parts: the loop's own overhead between clock reads (>= 0)."""
        return self.total_ms - self.components_sum_ms

    def to_dict(self) -> dict[str, Any]:
        return {"text_encoder_ms": self.text_encoder_ms, "unet_ms": list(self.unet_ms),
                "scheduler_ms": list(self.scheduler_ms), "decoder_ms": self.decoder_ms,
                "prepare_ms": self.prepare_ms, "postprocess_ms": self.postprocess_ms,
                "total_ms": self.total_ms}


def _ms(t0: int, t1: int) -> float:
    return (t1 - t0) / 1e6


@dataclass(frozen=True)
class ComponentFns:
    """The three networks as callables on torch tensors: what `Pipeline`'s loop calls.

    encode(ids [2, T] int64) -> context [2, T, D] (the UNet's input dtype)
    unet(sample [2, C, h, w], timestep (0-d tensor), context [2, T, D]) -> noise prediction [2, C, h, w]
    decode(latents [1, C, h, w] fp32) -> image [1, 3, 8h, 8w] in [-1, 1]

    `Pipeline(cfg, text_encoder, unet, decoder, ...)` builds them from torch modules; a runtime that
    runs the networks elsewhere supplies its own through `Pipeline.from_functions` (the litert-cpu
    runtime: the .tflite files through ai-edge-litert, `harness.workloads.litert_e2e`). Each call's
    wall time is that component's time in `ImageTimes`, conversions in and out included.
    """

    encode: Callable[[torch.Tensor], torch.Tensor]
    unet: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]


class Pipeline:
    """Text encoder + UNet + VAE decoder + a scheduler, on one device, generating timed images.

    The networks are torch modules, or any `ComponentFns` (`from_functions`); the scheduler, the
    guidance and the latents are torch on `device` either way."""

    def __init__(self, cfg: ModelConfig, text_encoder: nn.Module | None, unet: nn.Module | None,
                 decoder: VAEDecoder | None, scheduler: str = DEFAULT_SCHEDULER,
                 scheduler_cfg: dict[str, Any] | None = None, tokenizer=None, device: str = "cpu",
                 dtype: str = "fp32", fns: ComponentFns | None = None):
        if scheduler not in SCHEDULERS:
            raise PipelineError(f"unknown scheduler {scheduler!r}; known schedulers: {', '.join(SCHEDULERS)}")
        self.cfg = cfg
        self.text_encoder, self.unet, self.decoder = text_encoder, unet, decoder
        self.scheduler_name = scheduler
        self.scheduler_cfg = scheduler_cfg or dict(SD14_SCHEDULER_CONFIG)
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = DTYPES[dtype]
        self._sync: Callable[[], None] = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        if fns is None:
            if text_encoder is None or unet is None or decoder is None:
                raise PipelineError("Pipeline needs the three modules (text_encoder, unet, decoder) or fns")
            fns = ComponentFns(self._module_encode, self._module_unet, self._module_decode)
        self.fns = fns

    @classmethod
    def from_functions(cls, cfg: ModelConfig, fns: ComponentFns, scheduler: str = DEFAULT_SCHEDULER,
                       scheduler_cfg: dict[str, Any] | None = None, tokenizer=None, device: str = "cpu",
                       dtype: str = "fp32") -> "Pipeline":
        """A pipeline whose networks are `fns` (no torch modules); `dtype` is what the latents
        are cast to before the UNet (fp32 for runtimes that take float32 inputs)."""
        return cls(cfg, None, None, None, scheduler, scheduler_cfg, tokenizer, device, dtype, fns=fns)

    @property
    def prompt_tokens(self) -> str:
        """'tokenizer' (the checkpoint's CLIPTokenizer) or 'random' (seeded random ids, no tokenizer)."""
        return "tokenizer" if self.tokenizer is not None else "random"

    def check_size(self, height: int, width: int) -> None:
        f = self.cfg.vae_scale_factor
        if height <= 0 or width <= 0 or height % f or width % f:
            raise PipelineError(f"height and width must be positive multiples of {f} (the VAE's scale factor); "
                                f"got {height}x{width}")

    def token_ids(self, prompt: str, seed: int) -> torch.Tensor:
        if self.tokenizer is not None:
            return tokenize(self.tokenizer, self.cfg, prompt)
        return random_token_ids(self.cfg, prompt, seed)

    def new_scheduler(self, steps: int):
        if steps < 1:
            raise PipelineError(f"steps must be >= 1, got {steps}")
        sched = build_scheduler(self.scheduler_name, self.scheduler_cfg)
        sched.set_timesteps(steps, device=self.device)
        return sched

    def initial_latents(self, seed: int, height: int, width: int, init_noise_sigma: float = 1.0) -> torch.Tensor:
        """Seeded N(0, 1) noise [1, C, H/8, W/8] in fp32 (drawn on the CPU: the same on every device)."""
        f = self.cfg.vae_scale_factor
        gen = torch.Generator().manual_seed(seed)
        shape = (1, self.cfg.unet["in_channels"], height // f, width // f)
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(self.device) * init_noise_sigma

    def _module_encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids.to(self.device)).last_hidden_state.to(self.dtype)

    def _module_unet(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]

    def _module_decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents.to(self.dtype))

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fns.encode(ids)

    def run_unet(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.fns.unet(sample, timestep, context)

    def run_decoder(self, latents: torch.Tensor) -> torch.Tensor:
        return self.fns.decode(latents)

    def probe_inputs(self, prompt: str, steps: int, seed: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """The first step's real inputs (context, batched scaled latent, timestep) and a decoder latent:
        what a per-component check or warm-up runs on."""
        self.check_size(height, width)
        with torch.no_grad():
            sched = self.new_scheduler(steps)
            latents = self.initial_latents(seed, height, width, float(sched.init_noise_sigma))
            t = sched.timesteps[0]
            sample = sched.scale_model_input(torch.cat([latents] * 2), t).to(self.dtype)
            context = self.encode(self.token_ids(prompt, seed))
        return {"context": context, "sample": sample, "timestep": t,
                "decoder_latents": self.initial_latents(seed + 1, height, width)}

    @torch.no_grad()
    def generate(self, prompt: str = "", steps: int = 20, guidance_scale: float = 7.5, seed: int = 0,
                 height: int | None = None, width: int | None = None,
                 on_step: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, ImageTimes]:
        """One image (uint8 [H, W, 3]) and its component times. Deterministic in (weights, prompt, seed)."""
        height = height or self.cfg.image_size
        width = width or self.cfg.image_size
        self.check_size(height, width)
        clock, sync = time.perf_counter_ns, self._sync
        times = ImageTimes()

        sync()
        t_start = clock()
        ids = self.token_ids(prompt, seed)
        sched = self.new_scheduler(steps)
        latents = self.initial_latents(seed, height, width, float(sched.init_noise_sigma))
        sync()
        t_prep = clock()
        times.prepare_ms = _ms(t_start, t_prep)

        context = self.encode(ids)
        sync()
        t_text = clock()
        times.text_encoder_ms = _ms(t_prep, t_text)

        timesteps = sched.timesteps
        callback_ns = 0  # time spent in on_step (progress output): not part of the image's time
        for i, t in enumerate(timesteps):
            a = clock()
            sample = sched.scale_model_input(torch.cat([latents] * 2), t).to(self.dtype)
            sync()
            b = clock()
            noise = self.run_unet(sample, t, context)
            sync()
            c = clock()
            noise_uncond, noise_text = noise.float().chunk(2)
            guided = noise_uncond + guidance_scale * (noise_text - noise_uncond)
            latents = sched.step(guided, t, latents, return_dict=False)[0]
            sync()
            d = clock()
            times.unet_ms.append(_ms(b, c))
            times.scheduler_ms.append(_ms(a, b) + _ms(c, d))
            if on_step is not None:
                on_step(i + 1, len(timesteps))
                callback_ns += clock() - d

        t_dec0 = clock()
        image = self.run_decoder(latents)
        sync()
        t_dec1 = clock()
        times.decoder_ms = _ms(t_dec0, t_dec1)

        rgb = ((image[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        rgb = rgb.permute(1, 2, 0).cpu().numpy()
        t_end = clock()
        times.postprocess_ms = _ms(t_dec1, t_end)
        times.total_ms = _ms(t_start + callback_ns, t_end)
        return rgb, times


def build_pipeline(model: str | ModelConfig = "sd14", weights: str | Path | None = None, seed: int = 0,
                   dtype: str = "fp32", scheduler: str = DEFAULT_SCHEDULER, device: str = "cpu") -> Pipeline:
    """All components of `model` on `device` (random weights, or the checkpoint at `weights`)."""
    cfg = get_model_config(model) if isinstance(model, str) else model
    if scheduler not in SCHEDULERS:
        raise PipelineError(f"unknown scheduler {scheduler!r}; known schedulers: {', '.join(SCHEDULERS)}")
    text_encoder = build_text_encoder(cfg, weights, seed, dtype).to(device)
    unet = build_unet(cfg, weights, seed, dtype).to(device)
    decoder = build_vae_decoder(cfg, weights, seed, dtype).to(device)
    tokenizer = build_tokenizer(weights) if weights is not None else None
    return Pipeline(cfg, text_encoder, unet, decoder, scheduler, scheduler_config(weights), tokenizer, device, dtype)


def save_png(rgb: np.ndarray, path: str | Path) -> Path:
    """Write an uint8 [H, W, 3] image as PNG, atomically (temp file + rename)."""
    import os

    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    Image.fromarray(rgb).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
