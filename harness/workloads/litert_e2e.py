"""Runtimes `litert-cpu` and `litert-gpu` of the e2e workload: the real generation loop with the text
encoder, every UNet call and the VAE decoder run as the .tflite files a phone gets, through
ai-edge-litert: its Interpreter (XNNPACK) on the host CPU, or LiteRT's GPU accelerator
(`harness.runtimes.litert_gpu`, each file probed first as in the unet_iteration workload; extra.gpu
holds the UNet's facts, extra.gpu_components every file's); the token ids, the scheduler, the
guidance and the 8-bit conversion run in torch on the host, the same code as the torch runtime
(`Pipeline.generate` with model-backed `ComponentFns`).

Artifacts: the three components (`harness.export.ensure_artifact(..., component=...)`, the job's
dtype as weight dtype) through the cache; `harness run` builds them before the job, so the agent
finds them there. The job's `artifact`, when given, is the UNet's (the per-variant file; the text
encoder's is the same for every row). They are fixed-shape: the image is the model's native size.

Before timing, each interpreter's output is checked against the plain PyTorch module (fp32, no
kernels patched; ReLU attention for attention=relu) on the first step's real inputs (`record_check`;
the worst component is named when it fails). Then `measure.iterations` images are timed with the
torch loop's breakdown (`harness.workloads.e2e.time_images`: components_ms method="measured").
`options.threads` is the interpreters' thread count (0: LiteRT's default); the torch glue runs on one.

What the JobResult holds beyond the torch loop's layout:
  memory  weight_bytes (the three artifacts' weights as stored), tensor_bytes_planned (the sum of the
          three graphs' plans: their arenas coexist), tensor_bytes_measured (RssAnon growth across
          loading the three interpreters and their first runs), peak_rss_bytes (the process)
  execution  runtime "litert-cpu" / "litert-gpu", accelerator, unit_used, delegation (litert-gpu), na_flags
  extra   weights_dtype, artifacts {text_encoder, unet, decoder: path,
          sha256, cached, reference (the export's check), source, ...}, check_components, weight_bytes
          and planned_tensor_bytes per component, first_run_components_ms
"""
from __future__ import annotations

import gc
import resource
import time
from typing import Any

import numpy as np

from harness.protocol import JobSpec, MemoryFigures
from harness.workloads.common import InputError, emit, execution, record_check

# The e2e result's component names (as the torch loop's) -> the export's component names.
COMPONENTS: dict[str, str] = {"text_encoder": "text_encoder", "unet": "unet", "decoder": "vae_decoder"}


def _expected_shapes(cfg, height: int, width: int) -> dict[str, dict[str, tuple[int, ...] | None]]:
    """What the loop feeds each component (None: any shape of one element, the timestep)."""
    f, c = cfg.vae_scale_factor, cfg.unet.get("in_channels", 4)
    tokens, dim = cfg.text_tokens, cfg.text_encoder["hidden_size"]
    return {
        "text_encoder": {"input_ids": (2, tokens)},
        "unet": {"sample": (2, c, height // f, width // f), "timestep": None, "context": (2, tokens, dim)},
        "decoder": {"latents": (1, c, height // f, width // f)},
    }


def _check_signature(fn: Any, expected: dict[str, tuple[int, ...] | None], path, cfg) -> None:
    if len(fn.inputs) != len(expected):
        raise InputError(f"the {fn.name} artifact {path} takes {len(fn.inputs)} inputs, the e2e loop feeds "
                         f"{len(expected)} ({', '.join(expected)}); rebuild it with `harness export`")
    for desc, (what, shape) in zip(fn.inputs, expected.items()):
        got = tuple(int(x) for x in desc["shape"])
        ok = (int(np.prod(desc["shape"])) == 1) if shape is None else got == shape
        if not ok:
            raise InputError(f"the {fn.name} artifact {path} takes {what} of shape {list(got)}, the e2e loop feeds "
                             f"{list(shape) if shape else 'one value'} (model {cfg.name}); rebuild it with "
                             "`harness export`")


def run_litert_e2e(spec: JobSpec, result: dict[str, Any]) -> None:
    import torch

    from harness.export import ExportError, ReferenceMismatchError
    from harness.export.mapping import na_flags
    from harness.export.tflite import read_graph
    from harness.models.pipeline import (
        ComponentFns, Pipeline, build_scheduler, build_tokenizer, scheduler_config,
    )
    from harness.models.unet import WeightsError
    from harness.runtimes.litert import ModelFn, open_model
    from harness.workloads.e2e import e2e_flags_and_config, generation_extra, parse_args, save_image, time_images
    from harness.workloads.litert import (
        RSS_METHOD, _artifact_for, check_litert_job, gpu_delegation, gpu_unit, mark_emulation, prepare_gpu, rss_anon_bytes,
    )

    runtime = spec.options.runtime
    flags, cfg = e2e_flags_and_config(spec)
    dtype = spec.options.dtype
    gpu_options = check_litert_job(spec, dtype)
    args = parse_args(spec, cfg.image_size, cfg.vae_scale_factor)
    if (args["height"], args["width"]) != (cfg.image_size, cfg.image_size):
        raise InputError(f"runtime {runtime} runs fixed-shape .tflite artifacts built for {cfg.image_size}x"
                         f"{cfg.image_size} images (model {cfg.name}); drop workload_args.height/width "
                         f"(got {args['height']}x{args['width']}) or use runtime torch")
    if spec.measure.iterations < 1:
        raise InputError(f"measure.iterations must be >= 1 for e2e (images to time), got {spec.measure.iterations}")
    threads = spec.options.threads if spec.options.threads > 0 else None  # the interpreters'; None: LiteRT's default
    # The torch glue (scheduler, guidance, 8-bit conversion) works on small tensors: one thread. A torch
    # thread pool beside the interpreters' spinning one starves on a small CPU (measured on 2 cores: the
    # 8-bit conversion after the tiny baseline decoder took 39 ms instead of 0.4 ms).
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    weights, seed = spec.model.weights, spec.model.seed
    extra = result["extra"]
    accelerator = "gpu" if runtime == "litert-gpu" else "cpu"
    execution(result).update(runtime=runtime, accelerator=accelerator, unit_asked=spec.options.accelerator,
                             unit_used=accelerator, na_flags=na_flags(flags, "tflite"))
    extra["weights_dtype"] = dtype

    # The three artifacts, through the cache (the UNet's may be the job's given file).
    t0 = time.perf_counter_ns()
    paths, facts = {}, {}
    for i, (name, component) in enumerate(COMPONENTS.items()):
        emit("artifact", i, len(COMPONENTS))
        try:
            paths[name], facts[name] = _artifact_for(spec, flags, dtype, component)
        except ReferenceMismatchError as exc:
            result["error"] = {"kind": "reference_mismatch", "message": f"the {name} artifact: {exc}"}
            return
        except ExportError as exc:
            result["error"] = {"kind": "export", "message": f"export of the {name} failed: {exc}",
                               "detail": exc.detail}
            return
        facts[name]["component"] = component
    emit("artifact", len(COMPONENTS), len(COMPONENTS))
    extra["artifacts"] = facts
    extra["artifact_ms"] = (time.perf_counter_ns() - t0) / 1e6
    graphs = {name: read_graph(path) for name, path in paths.items()}
    plans = {name: g.plan() for name, g in graphs.items()}
    extra["weight_bytes"] = {name: g.weight_bytes for name, g in graphs.items()}
    extra["planned_tensor_bytes"] = {name: p.total_bytes for name, p in plans.items()}
    reports: dict[str, Any] = {name: None for name in paths}
    if runtime == "litert-gpu":
        for name, path in paths.items():
            reports[name] = prepare_gpu(spec, path, graphs[name], gpu_options, result, what=name)
            if reports[name] is None:
                return
        extra["gpu"] = extra["gpu_components"]["unet"]
        mark_emulation(result, list(reports.values()))
        units = {gpu_unit(r) for r in reports.values()}
        execution(result).update(unit_used=units.pop() if len(units) == 1 else "; ".join(
            f"{name}: {gpu_unit(r)}" for name, r in reports.items()), delegation=gpu_delegation(list(reports.values())))

    # The models and the pipeline around them.
    emit("load", 0, 1)
    try:
        tokenizer = build_tokenizer(weights) if weights else None
    except WeightsError as exc:
        raise InputError(str(exc)) from exc
    build_scheduler(args["scheduler"], scheduler_config(weights))  # imports diffusers: not the interpreters' memory
    rss_before = rss_anon_bytes()
    t1 = time.perf_counter_ns()
    fns = {}
    for name, path in paths.items():
        model = open_model(path, runtime, threads=threads, gpu=reports[name],
                           allow_cpu=bool(gpu_options and gpu_options.allow_cpu_fallback),
                           precision=gpu_options.precision if gpu_options else "auto")
        fns[name] = ModelFn(model, name)
    result["init_ms"] = (time.perf_counter_ns() - t1) / 1e6
    emit("load", 1, 1)
    for name, expected in _expected_shapes(cfg, args["height"], args["width"]).items():
        _check_signature(fns[name], expected, paths[name], cfg)
    pipe = Pipeline.from_functions(cfg, ComponentFns(encode=fns["text_encoder"], unet=fns["unet"],
                                                     decode=fns["decoder"]),
                                   args["scheduler"], scheduler_config(weights), tokenizer, "cpu", "fp32")
    extra.update(generation_extra(pipe, args, weights))
    if runtime == "litert-cpu":
        extra["cpu_threads"] = threads or "default"
    extra["torch_threads"] = torch.get_num_threads()

    # First run of each component on the first step's real inputs (also what the check compares).
    emit("first_run", 0, 1)
    ids = pipe.token_ids(args["prompt"], args["seed"])
    first: dict[str, float] = {}
    outputs = {}

    def timed(name, fn, *inputs):
        a = time.perf_counter_ns()
        outputs[name] = fn(*inputs)
        first[name] = (time.perf_counter_ns() - a) / 1e6

    timed("text_encoder", pipe.encode, ids)
    probe = pipe.probe_inputs(args["prompt"], args["steps"], args["seed"], args["height"], args["width"])
    timed("unet", pipe.run_unet, probe["sample"], probe["timestep"], probe["context"])
    timed("decoder", pipe.run_decoder, probe["decoder_latents"])
    result["first_run_ms"] = sum(first.values())
    extra["first_run_components_ms"] = first
    rss_after = rss_anon_bytes()
    emit("first_run", 1, 1)

    if spec.check.enabled:
        from harness.export.rewrite import reference_model

        ref_inputs = {"text_encoder": (ids,), "unet": (probe["sample"], probe["timestep"], probe["context"]),
                      "decoder": (probe["decoder_latents"],)}
        checks: dict[str, tuple[float, float, bool]] = {}
        for i, (name, component) in enumerate(COMPONENTS.items()):
            emit("reference", i, len(COMPONENTS))
            try:
                module = reference_model(cfg, weights, seed, component, flags)
            except WeightsError as exc:
                raise InputError(str(exc)) from exc
            reference = module(*ref_inputs[name]).float().numpy()
            del module
            out = outputs[name].float().numpy()
            if out.shape != reference.shape:
                raise InputError(f"the {name} artifact {paths[name]} gives shape {list(out.shape)}, the PyTorch "
                                 f"{name} {list(reference.shape)}; rebuild it with `harness export`")
            max_abs = float(np.max(np.abs(out - reference)))
            checks[name] = (max_abs, max_abs / max(float(np.max(np.abs(reference))), 1e-12),
                            bool(np.isfinite(out).all()))
        emit("reference", len(COMPONENTS), len(COMPONENTS))
        gc.collect()
        extra["check_components"] = {n: {"max_abs_error": a, "rel_error": r, "finite": f}
                                     for n, (a, r, f) in checks.items()}
        worst = max(checks, key=lambda n: (not checks[n][2], checks[n][1]))
        max_abs, rel, finite = checks[worst]
        if not record_check(result, spec, max_abs, rel,
                            f"variant {spec.variant!r} ({runtime}, {dtype} weights): the {worst} artifact "
                            f"{paths[worst].name} disagrees with the PyTorch {worst} on the first step's inputs",
                            hint="raise check.rel_tolerance for fp16 weights", finite=finite):
            return
    del outputs, probe

    execution(result)["timing_method"] = "perf_counter"
    images = time_images(pipe, spec, args, result)

    emit("memory", 0, 1)
    mem = MemoryFigures(weight_bytes=sum(extra["weight_bytes"].values()),
                        tensor_bytes_planned=sum(extra["planned_tensor_bytes"].values()),
                        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if rss_before is not None and rss_after is not None:
        if runtime == "litert-cpu":
            mem.tensor_bytes_measured = max(0, rss_after - rss_before)
            mem.tensor_measure_method = RSS_METHOD
        else:
            extra["rss_anon_delta_compile_first_run_bytes"] = max(0, rss_after - rss_before)
    if runtime == "litert-gpu":
        from harness.runtimes.litert_gpu import gpu_memory_bytes

        mem.gpu_bytes, method = gpu_memory_bytes()
        software = reports["unet"].adapter is not None and reports["unet"].adapter.software
        if mem.gpu_bytes is None and software:
            method = (f"not measured: {reports['unet'].adapter.name} emulates the GPU in host memory (it is in "
                      "the process's RSS)")
        extra["gpu"]["memory_method"] = method
    result["memory"] = mem
    extra["weight_bytes_by_dtype"] = {name: g.weight_bytes_by_dtype for name, g in graphs.items()}
    try:
        from importlib.metadata import version

        extra["ai_edge_litert"] = version("ai-edge-litert")
    except Exception:  # noqa: BLE001
        pass
    emit("memory", 1, 1)

    save_image(spec, result, images[-1][0])
