"""Workload `e2e`: end-to-end text-to-image generation (the paper's 20-step 512x512 headline).

The torch runtime builds the text encoder, the UNet and the VAE decoder of the suite's model
(`harness.models.pipeline`), installs the variant's kernels into the UNet and into the decoder
(GroupNorm, attention and 3x3 convolutions; the text encoder has no block a flag switches), checks
the patched UNet and decoder against their unpatched selves on the first step's real inputs, then
generates `measure.iterations` images (after `measure.warmup_runs` warm-up images), timing every
component of each.

The litert-cpu runtime (`harness.workloads.litert_e2e`) runs the same loop (`time_images`,
`Pipeline.generate`) with the three components as .tflite files through ai-edge-litert.

workload_args (all optional):
  steps           denoising steps (default 20)
  scheduler       dpmsolver++ (default) | euler | pndm  (harness.models.pipeline.SCHEDULERS)
  guidance_scale  classifier-free guidance scale (default 7.5; the UNet always runs on batch 2)
  prompt          text prompt (default below); without --weights there is no tokenizer offline and
                  the prompt becomes seeded random token ids (one per word), reported as such
  seed            seed of the initial noise and of the random token ids (default: model.seed)
  height, width   image size in pixels (default: the model's native size, 512 for sd14)
  output_dir      where to save the PNG (default: the job's directory, see `job_output_dir`)

What the JobResult holds:
  samples_ms      total ms per timed image (prompt to 8-bit RGB), warmup_ms the same for warm-ups
  components_ms   raw per-image times (lists, one entry per timed image; `harness.report.e2e` derives
                  the table): method="measured", steps, unet_evals, text_encoder_ms, unet_ms (per image,
                  per UNet call), scheduler_ms (per image, per step: input scaling + guidance +
                  scheduler.step), decoder_ms, prepare_ms, postprocess_ms, total_ms, gap_ms
  memory          weight_bytes (all three components), peak_rss_bytes (the agent; process peak),
                  gpu_bytes (CUDA: torch.cuda.max_memory_allocated over the job)
  extra           image_path (PNG of the last timed image), image_note, prompt_tokens, scheduler, ...
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from harness.protocol import JobSpec, MemoryFigures
from harness.workloads.common import (InputError, cache_dir, emit, execution, measure_loop, pick_device, random_weights_dir,
                                      record_check)

DEFAULT_PROMPT = "a photograph of an astronaut riding a horse"
IMAGE_NAME = "image.png"
ARGS = ("steps", "scheduler", "guidance_scale", "prompt", "seed", "height", "width", "output_dir")


def job_output_dir(spec: JobSpec) -> Path:
    """The directory the image goes to: workload_args.output_dir; else $HARNESS_JOB_DIR (the host
    agent sets it to the job's workdir, results/runs/RUN/NNN-variant/); else the cache."""
    explicit = spec.workload_args.get("output_dir") or os.environ.get("HARNESS_JOB_DIR")
    if explicit:
        return Path(explicit).expanduser().resolve()
    return cache_dir() / "e2e" / spec.job_id


def e2e_flags_and_config(spec: JobSpec):
    """(Flags, ModelConfig) of an e2e job; an InputError when the flags are bad or the model has no text
    encoder / VAE (only the built-in configs define the whole pipeline)."""
    from harness.models.configs import get_model_config
    from harness.variants import Flags

    try:
        flags = Flags.from_dict(spec.flags)
        cfg = get_model_config(spec.model.name)
    except (ValueError, KeyError) as exc:
        raise InputError(str(exc)) from exc
    if not cfg.text_encoder or not cfg.vae:
        raise InputError(f"model {cfg.name!r} has no text encoder / VAE config, so it cannot run e2e")
    return flags, cfg


def parse_args(spec: JobSpec, image_size: int, scale_factor: int = 8) -> dict[str, Any]:
    """workload_args with defaults, validated (an InputError names the bad field and the fix).
    height/width must be multiples of `scale_factor` (the VAE's: 8 for SD)."""
    from harness.models.pipeline import DEFAULT_SCHEDULER, SCHEDULERS

    args = dict(spec.workload_args)
    unknown = sorted(set(args) - set(ARGS))
    if unknown:
        raise InputError(f"unknown e2e workload_args {unknown}; known: {', '.join(ARGS)}")
    out = {
        "steps": args.get("steps", 20), "scheduler": args.get("scheduler", DEFAULT_SCHEDULER),
        "guidance_scale": args.get("guidance_scale", 7.5), "prompt": args.get("prompt", DEFAULT_PROMPT),
        "seed": args.get("seed", spec.model.seed), "height": args.get("height") or image_size,
        "width": args.get("width") or image_size,
    }
    for key in ("steps", "seed", "height", "width"):
        if not isinstance(out[key], int) or isinstance(out[key], bool):
            raise InputError(f"workload_args.{key} must be an integer, got {out[key]!r}")
    if out["steps"] < 1:
        raise InputError(f"workload_args.steps must be >= 1, got {out['steps']}")
    for key in ("height", "width"):
        if out[key] <= 0 or out[key] % scale_factor:
            raise InputError(f"workload_args.{key} must be a positive multiple of {scale_factor} (the VAE's "
                             f"scale factor), got {out[key]}; SD 1.4's native size is 512")
    if not isinstance(out["guidance_scale"], (int, float)) or isinstance(out["guidance_scale"], bool):
        raise InputError(f"workload_args.guidance_scale must be a number, got {out['guidance_scale']!r}")
    if out["scheduler"] not in SCHEDULERS:
        raise InputError(f"unknown scheduler {out['scheduler']!r} in workload_args.scheduler; "
                         f"known schedulers: {', '.join(SCHEDULERS)}")
    if not isinstance(out["prompt"], str):
        raise InputError(f"workload_args.prompt must be a string, got {out['prompt']!r}")
    return out


# (scheduler, steps, latent shape, guidance, repeats) -> median ms per step, per controller process.
_SCHEDULER_MS_CACHE: dict[tuple, float] = {}
_SCHEDULER_MS_LOCK = threading.Lock()


def measure_scheduler_ms(scheduler: str, steps: int, latent_shape: tuple[int, ...] | list[int],
                         guidance_scale: float = 7.5, repeats: int = 3, seed: int = 0) -> float:
    """The host's median per-step scheduler cost in ms: what `Pipeline.generate` times as scheduler_ms
    (`scale_model_input` of the batch-2 latent, the classifier-free guidance combine of a batch-2 UNet
    output, `scheduler.step`), with diffusers' real scheduler (`build_scheduler`, SD 1.4's config) on
    random fp32 tensors of `latent_shape` ([1, C, H/8, W/8]) on the CPU. One untimed warm-up loop,
    then `repeats` loops of `steps` steps (each a fresh scheduler with `set_timesteps(steps)`); the
    median over every timed step. Devices that time the UNet apart (Android) compose with it
    (`harness.composition.compose_e2e`). Cached per arguments within this process."""
    from harness.models.pipeline import PipelineError

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    shape = tuple(int(d) for d in latent_shape)
    if len(shape) != 4 or shape[0] != 1 or min(shape) < 1:
        raise InputError(f"latent_shape must be [1, C, H, W] with positive sizes, got {list(latent_shape)}")
    if repeats < 1:
        raise InputError(f"repeats must be >= 1, got {repeats}")
    key = (scheduler, steps, shape, float(guidance_scale), int(repeats))
    with _SCHEDULER_MS_LOCK:  # devices run in threads: one measurement per key, the others wait for it
        if key not in _SCHEDULER_MS_CACHE:
            try:
                _SCHEDULER_MS_CACHE[key] = _time_scheduler(scheduler, steps, shape, float(guidance_scale),
                                                           repeats, seed)
            except PipelineError as exc:
                raise InputError(str(exc)) from exc
        return _SCHEDULER_MS_CACHE[key]


def _time_scheduler(scheduler: str, steps: int, shape: tuple[int, ...], guidance_scale: float, repeats: int,
                    seed: int) -> float:
    import statistics

    import torch

    from harness.models.pipeline import build_scheduler

    gen = torch.Generator().manual_seed(seed)
    per_step: list[float] = []
    with torch.no_grad():
        for loop in range(repeats + 1):  # loop 0 is the warm-up
            sched = build_scheduler(scheduler)
            sched.set_timesteps(steps)
            latents = torch.randn(shape, generator=gen) * float(sched.init_noise_sigma)
            for t in sched.timesteps:
                noise = torch.randn((2 * shape[0], *shape[1:]), generator=gen)  # the UNet's output: not timed
                a = time.perf_counter_ns()
                sched.scale_model_input(torch.cat([latents] * 2), t)
                noise_uncond, noise_text = noise.chunk(2)
                guided = noise_uncond + guidance_scale * (noise_text - noise_uncond)
                latents = sched.step(guided, t, latents, return_dict=False)[0]
                b = time.perf_counter_ns()
                if loop:
                    per_step.append((b - a) / 1e6)
    return float(statistics.median(per_step))


def _rel_error(out, ref) -> tuple[float, float]:
    import torch

    ref = ref.to(out.device, torch.float32)
    max_abs = (out.float() - ref).abs().max().item()
    return max_abs, max_abs / max(ref.abs().max().item(), 1e-12)


def generation_extra(pipe, args: dict[str, Any], weights: str | None) -> dict[str, Any]:
    """The JobResult.extra fields every e2e runtime reports about the generation it times."""
    from harness.models.pipeline import SCHEDULERS

    extra = dict(
        scheduler=args["scheduler"], scheduler_description=SCHEDULERS[args["scheduler"]].description,
        steps=args["steps"], guidance_scale=args["guidance_scale"], prompt=args["prompt"], seed=args["seed"],
        height=args["height"], width=args["width"], prompt_tokens=pipe.prompt_tokens, weights=weights or "random",
    )
    if pipe.prompt_tokens == "random":
        extra["prompt_note"] = ("no tokenizer without --weights: the prompt is seeded random token ids "
                                "(one per word); the text encoder runs the same shapes")
    return extra


def time_images(pipe, spec: JobSpec, args: dict[str, Any], result: dict[str, Any]) -> list[tuple[Any, Any]]:
    """Generate `measure.warmup_runs` + timed images with `pipe` (any runtime's Pipeline); put
    warmup_ms, samples_ms and the measured components_ms into `result`. Returns every (rgb,
    ImageTimes), warm-ups first."""
    images: list[tuple[Any, Any]] = []  # (rgb, ImageTimes) of every image, warm-ups first

    def one_image():
        rgb, times = pipe.generate(args["prompt"], args["steps"], args["guidance_scale"], args["seed"],
                                   args["height"], args["width"],
                                   on_step=lambda done, total: emit("step", done, total))
        images.append((rgb, times))
        return rgb, times

    def image_timer(fn):
        rgb, times = fn()
        return times.total_ms, (rgb, times)

    warmup, samples = measure_loop(one_image, image_timer, spec)
    result["warmup_ms"], result["samples_ms"] = warmup, samples
    timed = [t for _, t in images[len(warmup):]]
    result["components_ms"] = {
        "method": "measured", "steps": args["steps"], "unet_evals": len(timed[0].unet_ms),
        "text_encoder_ms": [t.text_encoder_ms for t in timed],
        "unet_ms": [list(t.unet_ms) for t in timed],
        "scheduler_ms": [list(t.scheduler_ms) for t in timed],
        "decoder_ms": [t.decoder_ms for t in timed],
        "prepare_ms": [t.prepare_ms for t in timed],
        "postprocess_ms": [t.postprocess_ms for t in timed],
        "total_ms": [t.total_ms for t in timed],
        "gap_ms": [t.gap_ms for t in timed],
    }
    return images


def save_image(spec: JobSpec, result: dict[str, Any], rgb) -> None:
    """Save the image as the job's PNG (`job_output_dir`) and say where, and what it shows, in extra."""
    from harness.models.pipeline import save_png

    emit("save", 0, 1)
    path = save_png(rgb, job_output_dir(spec) / IMAGE_NAME)
    result["extra"]["image_path"] = str(path)
    result["extra"]["image_note"] = ("real picture (checkpoint weights)" if spec.model.weights else
                                     "noise: random weights (pass --weights DIR for a real picture)")
    emit("save", 1, 1)


def run_torch(spec: JobSpec, result: dict[str, Any]) -> None:
    import torch

    from harness import memory
    from harness.models.patch import apply_flags, flag_applies, flag_coverage
    from harness.models.pipeline import (
        Pipeline, build_text_encoder, build_tokenizer, build_vae_decoder, count_parameters, scheduler_config,
    )
    from harness.models.quantize import compute_dtype, is_weight_only, quantize_int8
    from harness.models.unet import WeightsError, build_unet
    from harness.workloads.unet_iteration import int8_check_spec

    if spec.options.threads > 0:
        torch.set_num_threads(spec.options.threads)
    device = pick_device(spec)
    # int8 is weight-only: every component is built and run in the compute dtype (fp32 CPU, fp16 CUDA);
    # the text encoder's Linear weights are stored int8 at once, the UNet's and the decoder's after the
    # check's references (the unquantized modules) and the flags.
    weight_only = is_weight_only(spec.options.dtype)
    spec = int8_check_spec(spec) if weight_only else spec
    flags, cfg = e2e_flags_and_config(spec)
    args = parse_args(spec, cfg.image_size, cfg.vae_scale_factor)
    if spec.measure.iterations < 1:
        raise InputError(f"measure.iterations must be >= 1 for e2e (images to time), got {spec.measure.iterations}")
    torch.set_grad_enabled(False)
    weights, seed, dtype = spec.model.weights, spec.model.seed, compute_dtype(spec.options.dtype, device)

    emit("build", 0, 3)
    t0 = time.perf_counter_ns()
    try:
        text_encoder = build_text_encoder(cfg, weights, seed, dtype).to(device)
        emit("build", 1, 3)
        # the UNet's random weights (860M of SD 1.4's 1.07B) come from the cache after the first job
        unet = build_unet(cfg, weights, seed, dtype, random_weights_cache=random_weights_dir()).to(device)
        emit("build", 2, 3)
        decoder = build_vae_decoder(cfg, weights, seed, dtype).to(device)
        tokenizer = build_tokenizer(weights) if weights else None
    except WeightsError as exc:
        raise InputError(str(exc)) from exc
    quantized = {"text_encoder": quantize_int8(text_encoder)} if weight_only else {}
    if device == "cuda":
        unet = unet.to(memory_format=torch.channels_last)
        decoder = decoder.to(memory_format=torch.channels_last)
        from harness.models.kernels.epilogue import gemm_1x1_convs
        from harness.models.patch import keep_channels_last

        keep_channels_last(unet)  # the UNet's transformer blocks hand back channels-last, no NCHW copies
        gemm_1x1_convs(unet)  # and its 1x1 convs run as GEMMs with the bias in the epilogue
        gemm_1x1_convs(decoder)
    pipe = Pipeline(cfg, text_encoder, unet, decoder, args["scheduler"], scheduler_config(weights), tokenizer,
                    device, dtype)
    build_ms = (time.perf_counter_ns() - t0) / 1e6
    emit("build", 3, 3)

    extra = result["extra"]
    execution(result).update(runtime=spec.options.runtime, accelerator=device, unit_asked=spec.options.accelerator,
                             unit_used=device)
    extra.update(generation_extra(pipe, args, weights),
        params={"text_encoder": count_parameters(text_encoder), "unet": count_parameters(unet),
                "decoder": count_parameters(decoder)},
        weight_bytes={"text_encoder": memory.weight_bytes(text_encoder), "unet": memory.weight_bytes(unet),
                      "decoder": memory.weight_bytes(decoder)},
    )
    if device == "cuda":
        extra["gpu_name"] = torch.cuda.get_device_name(0)
    else:
        extra["cpu_threads"] = torch.get_num_threads()

    # The first step's real inputs: the unpatched modules' outputs are the reference for the check.
    probe = pipe.probe_inputs(args["prompt"], args["steps"], args["seed"], args["height"], args["width"])
    run_unet = lambda: pipe.run_unet(probe["sample"], probe["timestep"], probe["context"])  # noqa: E731
    run_decoder = lambda: pipe.run_decoder(probe["decoder_latents"])  # noqa: E731
    references = {}
    if spec.check.enabled:
        emit("reference", 0, 2)
        references["unet"] = run_unet()
        emit("reference", 1, 2)
        references["decoder"] = run_decoder()
        emit("reference", 2, 2)

    t1 = time.perf_counter_ns()
    extra["replaced"] = {"unet": apply_flags(unet, flags), "decoder": apply_flags(decoder, flags)}
    if weight_only:
        quantized.update(unet=quantize_int8(unet), decoder=quantize_int8(decoder))
        extra.update(quantized=quantized, compute_dtype=dtype,
                     weight_bytes={"text_encoder": memory.weight_bytes(text_encoder),
                                   "unet": memory.weight_bytes(unet), "decoder": memory.weight_bytes(decoder)})
    coverage = flag_coverage(decoder)
    extra["decoder_flags_applied"] = {f: flag_applies(coverage, f) for f in ("softmax", "groupnorm_gelu",
                                                                            "attention", "conv3x3")}
    result["init_ms"] = build_ms + (time.perf_counter_ns() - t1) / 1e6

    # First run of each patched component (also the check against the references).
    emit("first_run", 0, 1)
    first: dict[str, float] = {}
    outputs = {}
    for name, fn in (("unet", run_unet), ("decoder", run_decoder)):
        if device == "cuda":
            torch.cuda.synchronize()
        a = time.perf_counter_ns()
        outputs[name] = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        first[name] = (time.perf_counter_ns() - a) / 1e6
    result["first_run_ms"] = sum(first.values())
    extra["first_run_components_ms"] = first
    emit("first_run", 1, 1)
    if references:
        checks = {name: _rel_error(outputs[name], ref) for name, ref in references.items()}
        extra["check_components"] = {name: {"max_abs_error": a, "rel_error": r} for name, (a, r) in checks.items()}
        worst = max(checks, key=lambda n: checks[n][1])
        max_abs, rel = checks[worst]
        if not record_check(result, spec, max_abs, rel, f"variant {spec.variant!r}: the patched {worst} "
                            f"disagrees with the unpatched {worst} on the first step's inputs"):
            return
    del references, outputs, probe, run_unet, run_decoder

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    execution(result)["timing_method"] = "perf_counter+cuda_sync" if device == "cuda" else "perf_counter"
    images = time_images(pipe, spec, args, result)

    mem = MemoryFigures(weight_bytes=sum(extra["weight_bytes"].values()))
    if device == "cuda":
        mem.gpu_bytes = torch.cuda.max_memory_allocated()
    result["memory"] = mem

    save_image(spec, result, images[-1][0])


def run_litert(spec: JobSpec, result: dict[str, Any]) -> None:
    """The .tflite components through ai-edge-litert on the host CPU or its GPU accelerator
    (harness.workloads.litert_e2e)."""
    from harness.workloads.litert_e2e import run_litert_e2e

    run_litert_e2e(spec, result)


# Runtime name -> implementation. Each writes into `result` (a JobResult in the making).
RUNTIMES = {
    "torch": run_torch,
    "litert-cpu": run_litert,
    "litert-gpu": run_litert,
}


def run(spec: JobSpec, result: dict[str, Any]) -> None:
    runtime = RUNTIMES.get(spec.options.runtime)
    if runtime is None:
        raise InputError(f"runtime {spec.options.runtime!r} is not available for e2e on the host; "
                         f"known runtimes: {', '.join(RUNTIMES)}")
    runtime(spec, result)
