"""An `e2e` job on a phone: the text encoder, the UNet and the VAE decoder .tflite
(`options.extra.graphs.{text_encoder,unet,vae_decoder}`, else `ensure_artifact(..., component=...)`), each
one benchmark_model run in one device session, composed with the host's measured scheduler cost
(`harness.workloads.e2e.measure_scheduler_ms`) into one result (`harness.composition.composed_components`;
README "Android", *End-to-end on a phone*).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import standin
from harness.composition import CompositionError, composed_components
from harness.devices.android.graphs import E2E_COMPONENTS
from harness.devices.base import JobFailure, ProgressFn
from harness.models.configs import get_model_config
from harness.protocol import JobResult, JobSpec, LatencySummary, MemoryFigures
from harness.workloads.common import InputError
from harness.workloads.e2e import measure_scheduler_ms, parse_args

if TYPE_CHECKING:  # the device runs this module's composition: it imports this module
    from harness.devices.android.device import AndroidDevice

E2E_TIMING_METHOD = "composed: benchmark_model medians (text encoder, UNet, VAE decoder) + host scheduler"


def component_ms(result: JobResult) -> tuple[float, str]:
    """(ms, statistic) of one benchmark_model run: the median of the timed runs (the tool's printed
    median, else the median of the per-run times its stat line implies), else its average."""
    summary = result.execution.latency_summary_ms or LatencySummary()
    if summary.median is not None:
        return float(summary.median), "median"
    if result.samples_ms:
        return float(statistics.median(result.samples_ms)), "median"
    if summary.avg is not None:
        return float(summary.avg), "avg (this benchmark_model prints no median)"
    raise JobFailure("parse", "benchmark_model printed no timed-run statistics to compose from")



def _component_records(results: dict[str, JobResult]) -> dict[str, dict[str, Any]]:
    """Each e2e component run's own record: its benchmark_model extra (latency/warm-up summaries, flags,
    artifact sha/size/cached, delegates, GPU memory samples, ...) plus init, first run, memory, device state."""
    out: dict[str, dict[str, Any]] = {}
    for component, res in results.items():
        rec = dict(res.extra)
        rec.update(execution=res.execution.model_dump(mode="json"), status=res.status, init_ms=res.init_ms,
                   first_run_ms=res.first_run_ms,
                   samples_ms=list(res.samples_ms), warmup_ms=list(res.warmup_ms),
                   memory=res.memory.model_dump(), op_times_ms=dict(res.op_times_ms),
                   device_state_before=res.device_state_before, device_state_after=res.device_state_after,
                   started_at=res.started_at, ended_at=res.ended_at)
        if res.error is not None:
            rec["error"] = res.error.model_dump()
        else:
            try:
                rec["ms"], rec["statistic"] = component_ms(res)
            except JobFailure as exc:
                rec["ms"], rec["statistic"] = None, exc.message
        out[component] = rec
    return out


def _largest_peaks(results: dict[str, JobResult]) -> tuple[MemoryFigures, dict[str, str]]:
    """The e2e memory: each peak figure is the largest of the component runs (which one: the dict);
    weight_bytes is the three components' sum (the pipeline's weights), where all three are known."""
    mem = MemoryFigures()
    which: dict[str, str] = {}
    for attr in ("peak_rss_bytes", "gpu_bytes", "tensor_bytes_planned"):
        values = {c: getattr(r.memory, attr) for c, r in results.items() if getattr(r.memory, attr) is not None}
        if values:
            top = max(values, key=values.__getitem__)
            setattr(mem, attr, values[top])
            which[attr] = top
    weights = [r.memory.weight_bytes for r in results.values()]
    if weights and all(w is not None for w in weights):
        mem.weight_bytes = sum(weights)
    return mem, which


def run_e2e(device: AndroidDevice, spec: JobSpec, workdir: Path, progress: ProgressFn | None,
            started: float) -> JobResult:
    """Text encoder, UNet and VAE decoder, each one benchmark_model run (`device.agent_run`) in one device session,
    composed with the host's measured scheduler cost: text + steps x (UNet + scheduler) + decoder."""
    try:
        cfg = get_model_config(spec.model.name)
        args = parse_args(spec, cfg.image_size, cfg.vae_scale_factor)
    except InputError as exc:
        raise JobFailure("input", str(exc)) from None
    except (KeyError, ValueError) as exc:
        raise JobFailure("input", f"e2e on Android: model {spec.model.name!r}: {exc}") from None
    f = cfg.vae_scale_factor
    latent_shape = (1, int(cfg.unet["in_channels"]), args["height"] // f, args["width"] // f)
    arts = device.artifacts_for(spec)
    push = device.sync(device.files_for(list(arts.values()), [spec]), progress)

    results: dict[str, JobResult] = {}
    for component in E2E_COMPONENTS:
        sub = None if progress is None else (
            lambda phase, done, total, c=component: progress(f"{c} {phase}", done, total))
        try:
            run = device.agent_run(spec, workdir, arts, push if not results else {}, component)
            res = device.run_agent(run, sub, time.time())
        except JobFailure as failure:
            raise JobFailure(failure.kind, f"e2e component {component}: {failure.message}", failure.detail,
                              failure.transient, {**failure.extra, "failed_component": component}) from None
        results[component] = res
        if res.status != "ok":
            err = res.error
            assert err is not None
            return JobResult.failure(
                spec.job_id, err.kind, f"e2e component {component}: {err.message}", detail=err.detail,
                transient=err.transient, started_at=started, ended_at=time.time(),
                device_state_before=results[E2E_COMPONENTS[0]].device_state_before,
                device_state_after=res.device_state_after,
                extra={"failed_component": component, "components": _component_records(results),
                       "push": {"bytes_pushed_total": device.bytes_pushed}},
                stand_in=standin.merge(*(r.stand_in for r in results.values())))

    if progress:
        progress("host scheduler", 0, 1)
    try:
        scheduler_ms = measure_scheduler_ms(args["scheduler"], args["steps"], latent_shape, args["guidance_scale"])
    except InputError as exc:
        raise JobFailure("input", str(exc)) from None
    ms: dict[str, tuple[float, str]] = {}
    for component, res in results.items():
        try:
            ms[component] = component_ms(res)
        except JobFailure as failure:
            raise JobFailure(failure.kind, f"e2e component {component}: {failure.message}",
                              extra={"failed_component": component,
                                     "components": _component_records(results)}) from None
    sources = {c: {"sha256": arts[c].sha256, "source": arts[c].source, "statistic": ms[c][1]}
               for c in E2E_COMPONENTS}
    sources["scheduler"] = {"source": "host", "function": "harness.workloads.e2e.measure_scheduler_ms",
                            "latent_shape": list(latent_shape), "statistic": "median"}
    try:
        components = composed_components(ms["text_encoder"][0], ms["unet"][0], ms["vae_decoder"][0],
                                         scheduler_ms, args["steps"], sources=sources)
    except CompositionError as exc:
        raise JobFailure("parse", f"e2e composition: {exc}") from None

    memory, peak_of = _largest_peaks(results)
    unet = results["unet"]
    extra: dict[str, Any] = {
        "method": "composed", "composition": "text_encoder + steps x (unet + scheduler) + vae_decoder",
        "scheduler": args["scheduler"], "steps": args["steps"], "guidance_scale": args["guidance_scale"],
        "height": args["height"], "width": args["width"], "latent_shape": list(latent_shape),
        "host_scheduler_ms_per_step": scheduler_ms,
        "weights": ("graphs" if any(a.source == "graph" for a in arts.values())
                    else (spec.model.weights or "random")),
        "image_note": "no image: each component ran on its own, on benchmark_model's random inputs",
        "peak_memory_component": peak_of, "components": _component_records(results),
        "push": {**push, "bytes_pushed_total": device.bytes_pushed},
    }
    if args["scheduler"] == "pndm":
        extra["composition_note"] = ("PNDM makes steps + 1 UNet calls; the composed figure counts steps calls "
                                     "(one per step)")
    from harness.models.pipeline import SCHEDULERS  # torch

    extra["scheduler_description"] = SCHEDULERS[args["scheduler"]].description
    for key in ("prepare_note", "prepare_push"):
        for rec in extra["components"].values():
            if key in rec:
                extra[key] = rec.pop(key)
    inits = [r.init_ms for r in results.values()]
    return JobResult(
        job_id=spec.job_id, status="ok", samples_ms=[components["total_ms"]],
        init_ms=sum(inits) if all(i is not None for i in inits) else None,
        memory=memory, components_ms=components,
        execution=unet.execution.model_copy(update={"timing_method": E2E_TIMING_METHOD, "latency_summary_ms": None}),
        device_state_before=results[E2E_COMPONENTS[0]].device_state_before,
        device_state_after=results[E2E_COMPONENTS[-1]].device_state_after,
        op_times_ms=dict(unet.op_times_ms), versions=dict(unet.versions),
        started_at=started, ended_at=time.time(), extra=extra,
        stand_in=standin.merge(*(r.stand_in for r in results.values())),
    )
