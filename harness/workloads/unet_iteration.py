"""Workload `unet_iteration`: one UNet iteration of the suite's model, per variant (Table 1).

The torch runtime builds the diffusers UNet, installs the variant's kernels, checks its output
against the unpatched model, times it, and measures weight, tensor (measured and planned) memory
and per-category op times.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from harness.protocol import JobSpec, MemoryFigures
from harness.workloads.common import (InputError, execution, record_check, Timer, cache_dir, cuda_graph_replay_ms, emit, measure_loop,
                                      op_times, pick_device, random_weights_dir)

# On CUDA the reported samples are CUDA-graph replays (eager PyTorch is launch-bound); at least this many.
MIN_GRAPH_REPLAYS = 30


def reference_output(spec: JobSpec, device: str, inputs, attention: str = "standard",
                     model: "Any | None" = None) -> "Any":
    """The plain PyTorch (unpatched diffusers) output on these inputs, cached on disk by its key
    (model, weights, seed, dtype, device, torch version, attention kind): every row of a suite that
    shares them (the whole ladder) computes it once and reads it after.

    `model`: the unpatched UNet of this spec, already built by the caller (same model, weights, seed
    and dtype, so the same function); on a cache miss the reference runs on it (moved to `device`)
    instead of on a second build. Its attention processors may be replaced (relu): patch it afterwards.

    With `attention="relu"` the reference is the unpatched model whose attention modules run ReLU
    attention (`KernelAttnProcessor(attention="relu")`, everything else diffusers' own): ReLU attention
    is a different function from softmax attention, so a relu variant is checked against the same
    function, not against the softmax model."""
    import hashlib
    import json

    import torch

    from harness.models.unet import build_unet

    weights_id = None
    if spec.model.weights:
        w = Path(spec.model.weights).expanduser()
        weights_id = [str(w.resolve()), max((p.stat().st_mtime for p in w.rglob("*") if p.is_file()), default=0)]
    model_id: list[Any] = [spec.model.name]
    if spec.model.unet_config:
        cfg_path = Path(spec.model.unet_config).expanduser()
        model_id += [str(cfg_path.resolve()), cfg_path.stat().st_mtime if cfg_path.is_file() else None]
    if attention == "relu":
        model_id.append("relu_attention")
    key = hashlib.sha256(json.dumps([*model_id, weights_id, spec.model.seed, spec.options.dtype,
                                     device, torch.__version__]).encode()).hexdigest()[:24]
    path = cache_dir() / "reference" / f"unet-{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location=device)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is rebuilt
            path.unlink(missing_ok=True)
    ref = model if model is not None else build_unet(spec.model, spec.model.weights, spec.model.seed,
                                                     spec.options.dtype, random_weights_cache=random_weights_dir())
    ref = ref.to(device)
    if attention == "relu":
        from diffusers.models.attention_processor import Attention

        from harness.models.kernels.attention import KernelAttnProcessor

        for module in ref.modules():
            if isinstance(module, Attention):
                module.set_processor(KernelAttnProcessor(attention="relu"))
    with torch.no_grad():
        out = ref(*inputs[:2], encoder_hidden_states=inputs[2], return_dict=False)[0]
    del ref
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(out.cpu(), tmp)
    os.replace(tmp, path)
    return out


def int8_check_spec(spec: JobSpec) -> JobSpec:
    """An int8 (weight-only) job's spec with its reference-check tolerance raised to at least
    harness.models.quantize.INT8_REL_TOLERANCE (the measured int8 error; see that module)."""
    from harness.models.quantize import INT8_REL_TOLERANCE

    tol = max(spec.check.rel_tolerance, INT8_REL_TOLERANCE)
    return spec.model_copy(update={"check": spec.check.model_copy(update={"rel_tolerance": tol})})


def run_torch(spec: JobSpec, result: dict[str, Any]) -> None:
    import torch

    from harness import memory
    from harness.models.loaders import ModelLoadError
    from harness.models.kernels.choice import choices as kernel_choices
    from harness.models.kernels.epilogue import gemm_1x1_convs
    from harness.models.patch import (FLAG_SCOPE, apply_flags, flag_applies, flag_coverage, keep_channels_last,
                                      precompute_weights)
    from harness.models.quantize import compute_dtype, is_weight_only, quantize_int8
    from harness.models.unet import WeightsError, build_unet, example_inputs
    from harness.variants import Flags

    if spec.options.threads > 0:
        torch.set_num_threads(spec.options.threads)
    device = pick_device(spec)
    # int8 is weight-only: the model is built, patched and run in its compute dtype (fp32 on the CPU, fp16
    # on CUDA), then its Linear/Conv2d weights are stored int8; the reference is the unquantized model.
    weight_only = is_weight_only(spec.options.dtype)
    spec = int8_check_spec(spec) if weight_only else spec
    run_dtype = compute_dtype(spec.options.dtype, device)
    ref_spec = spec.model_copy(update={"options": spec.options.model_copy(update={"dtype": run_dtype})})
    try:
        flags = Flags.from_dict(spec.flags)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    torch.set_grad_enabled(False)
    try:
        inputs = example_inputs(spec.model, spec.model.seed, run_dtype, device)
    except (ModelLoadError, KeyError) as exc:
        raise InputError(str(exc.args[0] if isinstance(exc, KeyError) else exc)) from exc

    emit("build", 0, 1)
    t0 = time.perf_counter_ns()
    try:
        unet = build_unet(spec.model, spec.model.weights, spec.model.seed, run_dtype,
                          random_weights_cache=random_weights_dir())
    except (WeightsError, ModelLoadError) as exc:
        raise InputError(str(exc)) from exc
    build_ns = time.perf_counter_ns() - t0

    reference = None
    if spec.check.enabled:  # before patching: the unpatched model is the reference (cached across rows)
        emit("reference", 0, 1)
        reference = reference_output(ref_spec, device, inputs, attention=flags.attention, model=unet)

    t0 = time.perf_counter_ns()
    coverage = flag_coverage(unet)
    replaced = apply_flags(unet, flags)
    if weight_only:
        result["extra"]["quantized"] = quantize_int8(unet)
        result["extra"]["compute_dtype"] = run_dtype
    # Flags whose blocks this model lacks (e.g. a model without attention): the report shows them n/a.
    execution(result)["na_flags"] = [f for f in FLAG_SCOPE if not flag_applies(coverage, f)]
    unet = unet.to(device)
    if device == "cuda":
        unet = unet.to(memory_format=torch.channels_last)
        result["extra"]["channels_last_blocks"] = keep_channels_last(unet)  # no NCHW copies inside the UNet
        result["extra"]["conv1x1_gemms"] = gemm_1x1_convs(unet)  # 1x1 convs as GEMMs, bias in the epilogue
    precompute_weights(unet)  # Winograd's filter transforms, on the device in the final layout
    if device == "cuda":
        torch.cuda.synchronize()
    # build + patch + move + filter transforms (no reference)
    result["init_ms"] = (build_ns + time.perf_counter_ns() - t0) / 1e6
    result["extra"]["replaced"] = replaced
    execution(result).update(runtime=spec.options.runtime, accelerator=device, unit_asked=spec.options.accelerator,
                             unit_used=device)
    if device == "cuda":
        result["extra"]["gpu_name"] = torch.cuda.get_device_name(0)
    else:
        result["extra"]["cpu_threads"] = torch.get_num_threads()

    def step():
        return unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2], return_dict=False)[0]

    passes = spec.measure.passes
    mem = MemoryFigures(weight_bytes=memory.weight_bytes(unet))

    def memory_pass(fn) -> None:  # measured and planned tensor memory from one traced call
        emit("memory", 0, 1)
        t0 = time.perf_counter_ns()
        (mem.tensor_bytes_measured, mem.tensor_measure_method,
         mem.tensor_bytes_planned) = memory.measure_and_plan_tensor_bytes(fn, device=device)
        result["extra"]["memory_pass_ms"] = (time.perf_counter_ns() - t0) / 1e6
        emit("memory", 1, 1)

    # The first call serves the reference check. On the CPU nothing is built lazily in it (Winograd's
    # filters are transformed at patch time, precompute_weights above), so when the memory pass is asked
    # for, its traced call is the first call: one model call less per row, and first_run_ms is n/a (a
    # traced call is no cold-start timing; extra.memory_pass_ms has its wall time). On CUDA the first
    # call picks kernels per shape and compiles Triton kernels, memory that is not the model's, so it
    # stays a call of its own, before the memory pass.
    memory_first = "memory" in passes and device == "cpu"
    timer = Timer(device)
    execution(result)["timing_method"] = timer.method
    if memory_first:
        first_call: dict[str, Any] = {}

        def traced_first_call():
            first_call["out"] = step()
            return first_call["out"]

        memory_pass(traced_first_call)
        result["extra"]["first_call"] = "memory_pass"
        out = first_call.pop("out")
    else:
        emit("first_run", 0, 1)
        result["first_run_ms"], out = timer(step)
    if flags.conv3x3 == "winograd":
        from harness.models.kernels.winograd import winograd_usage

        # On a GPU each Winograd-flagged conv runs whichever of Winograd and cuDNN is faster on its shape.
        result["extra"]["winograd_ran"] = winograd_usage(unet)
    if device == "cuda" and flags.attention == "flash":
        # ... and each flash attention shape whichever of the Triton and torch's fused kernels is fastest.
        result["extra"]["flash_ran"] = kernel_choices("flash")
    if reference is not None:
        ref = reference.to(out.device, torch.float32)
        max_abs = (out.float() - ref).abs().max().item()
        rel = max_abs / max(ref.abs().max().item(), 1e-12)
        if not record_check(result, spec, max_abs, rel,
                            f"variant {spec.variant!r} disagrees with the PyTorch reference"):
            return
        del reference, ref
    del out

    # The passes run before the timed loop: each is an untimed call of the same kernels, so they warm up
    # as a warmup run does (suites/table1.yaml counts on it: warmup_runs 0).
    if "memory" in passes and not memory_first:
        memory_pass(step)
    if "op_times" in passes:
        emit("op_times", 0, 1)
        result["op_times_ms"] = op_times(unet, step, device)
        emit("op_times", 1, 1)
    result["extra"]["passes"] = list(passes)
    warmup, samples = measure_loop(step, timer, spec)
    if device == "cuda":
        # Eager times (what the host launches) stay beside the CUDA-graph replays (what the GPU executes).
        import statistics

        result["extra"]["eager_ms"] = samples
        result["extra"]["eager_median_ms"] = statistics.median(samples)
        eager_out = step()
        samples, graph_out = cuda_graph_replay_ms(step, max(MIN_GRAPH_REPLAYS, spec.measure.iterations))
        result["extra"]["graph_vs_eager_max_abs"] = (graph_out.float() - eager_out.float()).abs().max().item()
        execution(result)["timing_method"] = "cuda_graph_replay"
        del eager_out, graph_out
    result["warmup_ms"], result["samples_ms"] = warmup, samples

    if device == "cuda":
        mem.gpu_bytes = torch.cuda.max_memory_allocated()
    result["memory"] = mem



# Runtime name -> implementation. Each writes into `result` (a JobResult in the making).
from harness.workloads.litert import run_litert  # noqa: E402 - after run_torch, which it reuses lazily

RUNTIMES = {
    "torch": run_torch,
    "litert-cpu": run_litert,  # the variant's .tflite through ai-edge-litert on the host CPU
    "litert-gpu": run_litert,  # ... on LiteRT's GPU accelerator (harness.runtimes.litert_gpu)
}


def run(spec: JobSpec, result: dict[str, Any]) -> None:
    runtime = RUNTIMES.get(spec.options.runtime)
    if runtime is None:
        raise InputError(f"runtime {spec.options.runtime!r} is not available for unet_iteration on the host; "
                         f"known runtimes: {', '.join(RUNTIMES)}")
    runtime(spec, result)
