"""An Android phone on the remote-agent template (harness.devices.remote): LiteRT `benchmark_model` runs.

A job on a phone:
1. push (each file only when its md5 on the device differs): `benchmark_model` (the user's build:
   no pip package ships it), `device_agents/android/run_job.sh`, and the variant's .tflite (from
   `harness.export.ensure_artifact`, or the host file named by `options.extra.graph`);
2. cooldown: wait until the hottest thermal zone and the battery are under their thresholds (with
   a timeout), or a fixed pause (`measure.cooldown_seconds`);
3. start `run_job.sh` in the background (it survives a dropped adb connection), which runs
   benchmark_model with the job's flags (optionally under `taskset MASK`), records thermal zones
   and battery before and after, and samples `dumpsys meminfo PID` while it runs;
4. poll for its DONE marker, pull its files into the job's workdir, parse them
   (`harness.devices.android.parse`) into a JobResult.

An `e2e` job runs steps 2-4 three times in one device session (harness.devices.android.e2e).

Failures are JobResults with an error kind: `crash` (benchmark_model exited non-zero; the stderr
tail is kept), `parse` (output that is not benchmark_model's), `disk_full` (adb refused a push),
`timeout`, `delegation` (a GPU row the GPU did not run wholly), `device` (unauthorized), `input` (bad
options, no benchmark_model, no artifact), `export`. A device that drops raises DeviceDisconnectedError,
which the runner retries; before the retry the device is given `reconnect_timeout_s` to come back.

Runtime options (`options.extra` of a suite, e.g. `--set options.extra.gpu_backend=cl`):
`use_gpu`, `gpu_backend` (cl|gl), `gpu_precision_loss_allowed`, `enable_op_profiling`,
`report_peak_memory_footprint` (default true), `run_delay`, `warmup_min_secs` (default 0, so
`measure.warmup_runs` is the number of warm-up runs), `num_threads`, `affinity` (taskset hex mask),
`cooldown` (seconds, or {max_temp_c, max_battery_c, timeout_s, poll_s, zones}), `graph` (a host
.tflite to run instead of exporting the variant), `graphs` (e2e: {text_encoder, unet, vae_decoder}
host .tflite paths, all three), `flags` ({name: value} passed to benchmark_model
as --name=value), `meminfo_interval_s`. From `measure`: iterations -> --num_runs, warmup_runs ->
--warmup_runs, min_seconds -> --min_secs, max_seconds -> --max_secs, timeout_seconds bounds the job,
cooldown_seconds is the pause (or the cooldown wait's timeout when thresholds are set).

Samples: benchmark_model prints no per-run times, only count/first/curr/min/max/avg/std (and
p5/median/p95 in newer builds). `samples_ms` holds exact per-run values only where those imply them
(one run, two runs, or every run the same); the summary is always in `execution.latency_summary_ms`.
"""
from __future__ import annotations

import re
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import harness
from harness import standin
from harness.devices.android.e2e import run_e2e
from harness.devices.android.graphs import E2E_COMPONENTS, check_tflite, given_graph
from harness.devices.android.parse import BenchmarkModelOutput, ParseError, parse_benchmark_model
from harness.devices.android.parse_device import parse_meminfo_graphics
from harness.devices.android.readings import device_state, exact_samples_ms, split_meminfo_samples, summary_ms
from harness.devices.android.settings import (
    BENCHMARK_MODEL_HELP, DEFAULT_COOLDOWN_TIMEOUT_S, AndroidConfigError, adb_servers, check_affinity, cooldown_from,
    server_label, settings_for,
)
from harness.devices.android.transport import AGENT_SCRIPT, RESULT_PROTO, AdbTransport
from harness.devices.android.units import (
    OPTION_KEYS, allows_cpu, benchmark_flags, delegation_used, number, runtime_of, safe_name, unit_of, unit_used,
)
from harness.devices.base import Artifact, DeviceContext, DeviceInfo, JobFailure, ProgressFn, export_failure
from harness.devices.remote import AgentRun, Outcome, RemoteDevice, RemoteFile, tail
from harness.export import ensure_artifact
from harness.protocol import Execution, JobResult, JobSpec, LatencySummary, MemoryFigures
from harness.variants import Flags


class AndroidDevice(RemoteDevice):
    kind = "android"

    def __init__(self, info: DeviceInfo, ctx: DeviceContext):
        super().__init__(info, ctx)
        self.serial = info.id.split(":", 1)[1]
        self.server = str(info.extra.get("adb_server") or server_label(*adb_servers(ctx)[0][:2]))
        self.settings = settings_for(ctx, self.serial)
        self.reconnect_timeout_s = self.settings.reconnect_timeout_s
        self.transport: AdbTransport = AdbTransport(self.id, self.server, self.serial, self.settings)

    # ---- what the job needs

    def check(self, spec: JobSpec) -> None:
        runtime_of(spec)

    def components(self, spec: JobSpec) -> tuple[str, ...]:
        return E2E_COMPONENTS if spec.workload == "e2e" else ("unet",)

    def artifact_key(self, spec: JobSpec, component: str) -> str:
        """The user's .tflite of one component (options.extra.graphs.COMPONENT, or .graph for the UNet) or the
        export cache's; an e2e job asks for each of E2E_COMPONENTS."""
        _, graph = given_graph(spec, component)
        return (f"graph:{graph}" if graph else f"export:{spec.model.model_dump_json()}:{spec.flags}:"
                f"{spec.options.dtype}" + (f":{component}" if spec.workload == "e2e" else ""))

    def resolve_artifact(self, spec: JobSpec, component: str) -> Artifact:
        where, graph = given_graph(spec, component)
        part = component if spec.workload == "e2e" else None  # a unet_iteration job's graph is the variant's
        if graph:
            local = Path(str(graph)).expanduser()
            check_tflite(local, where)
            return Artifact(local, self.transport.file_hash(local, "sha256"), local.stat().st_size, "graph")
        what = f"the {part} of variant {spec.variant!r}" if part else f"variant {spec.variant!r}"
        try:
            art = ensure_artifact(spec.model, Flags.from_dict(spec.flags), fmt="tflite", dtype=spec.options.dtype,
                                  cache_dir=self.ctx.cache_dir, progress=None, variant=spec.variant,
                                  component=part or "unet")
        except Exception as exc:  # noqa: BLE001 - a converter failure fails this variant only
            raise export_failure(exc, what, ".tflite") from None
        meta = dict(getattr(art, "meta", None) or {})
        meta["cached"] = bool(getattr(art, "cached", False))
        return Artifact(Path(art.path), str(art.sha256), int(art.size_bytes), "export", meta,
                        key=str(getattr(art, "key", "") or ""))

    def remote_model(self, art: Artifact) -> str:
        return f"{self.settings.device_dir}/models/{art.sha256[:16]}.tflite"

    def _benchmark_local(self) -> Path:
        path = self.settings.benchmark_model
        if not path:
            raise JobFailure("input", f"no benchmark_model for {self.id}. {BENCHMARK_MODEL_HELP}")
        local = Path(path)
        if not local.is_file():
            raise JobFailure("input", f"benchmark_model {path!r} is not a file. {BENCHMARK_MODEL_HELP}")
        return local

    def files_for(self, arts: list[Artifact], specs: list[JobSpec]) -> list[RemoteFile]:
        files = [RemoteFile(self._benchmark_local(), self.transport.remote_bin, 0o755),
                 RemoteFile(AGENT_SCRIPT, self.transport.remote_agent, 0o755)]
        seen: set[str] = set()
        for spec in specs:  # an external delegate library given as a host file goes to the phone too
            try:
                unit = unit_of(spec, self.settings.device_dir)
            except JobFailure:
                continue
            if unit.library_host and unit.library_device not in seen:
                seen.add(unit.library_device)
                files.append(RemoteFile(Path(unit.library_host), unit.library_device))
        for art in arts:
            remote = self.remote_model(art)
            if remote not in seen:
                seen.add(remote)
                files.append(RemoteFile(art.local, remote))
        return files

    def sync(self, files: list[RemoteFile], progress: ProgressFn | None) -> dict[str, Any]:
        report = super().sync(files, progress)
        self.transport.probe_flags()  # which flags this benchmark_model takes
        return report

    # ---- running

    def run(self, spec: JobSpec, workdir: Path, progress: ProgressFn | None, started: float) -> JobResult:
        if spec.workload == "e2e":
            return run_e2e(self, spec, workdir, progress, started)
        return super().run(spec, workdir, progress, started)

    def agent_run(self, spec: JobSpec, workdir: Path, arts: dict[str, Artifact], push: dict[str, Any],
                  component: str | None = None) -> AgentRun:
        """One benchmark_model run of the UNet (or of `component`, e2e: with its own device directory and
        local `device/COMPONENT/`) under the job's flags and measure policy."""
        art, d = arts[component or "unet"], self.settings.device_dir
        out = f"{d}/jobs/{safe_name(spec.job_id)}-{safe_name(spec.variant)}" + (f"-{component}" if component else "")
        args, unsupported = benchmark_flags(spec, self.remote_model(art), supported=self.transport.supported_flags,
                                            result_file=f"{out}/{RESULT_PROTO}", device_dir=d)
        affinity = self.settings.affinity
        if "affinity" in spec.options.extra:
            try:
                affinity = check_affinity("options.extra", spec.options.extra["affinity"])
            except AndroidConfigError as exc:
                raise JobFailure("input", str(exc)) from None
        interval = self.settings.meminfo_interval_s
        if "meminfo_interval_s" in spec.options.extra:
            interval = number("meminfo_interval_s", spec.options.extra["meminfo_interval_s"])
            if interval <= 0:
                raise JobFailure("input", "options.extra.meminfo_interval_s must be > 0")
        local_dir = workdir / "device" / component if component else workdir / "device"
        return AgentRun(spec, out, local_dir, payload=(args, affinity, interval),
                        info={"art": art, "push": push, "args": args, "unsupported": unsupported, "affinity": affinity})

    def cooldown(self, spec: JobSpec, progress: ProgressFn | None) -> dict[str, Any]:
        policy = self.settings.cooldown
        if "cooldown" in spec.options.extra:
            try:
                policy = cooldown_from("options.extra.cooldown", spec.options.extra["cooldown"], policy)
            except AndroidConfigError as exc:
                raise JobFailure("input", str(exc)) from None
        if not policy.thermal:
            pause = policy.timeout_s if policy.timeout_s is not None else spec.measure.cooldown_seconds
            if pause and pause > 0:
                if progress:
                    progress("cooldown", 0, 1)
                time.sleep(pause)
                return {"mode": "pause", "waited_s": pause}
            return {"mode": "none"}
        timeout = policy.timeout_s if policy.timeout_s is not None else (
            spec.measure.cooldown_seconds if spec.measure.cooldown_seconds > 0 else DEFAULT_COOLDOWN_TIMEOUT_S)
        t0 = time.monotonic()
        while True:
            hottest, battery = self._read_temps(policy.zones)
            cool = ((policy.max_temp_c is None or (hottest is not None and hottest <= policy.max_temp_c)) and
                    (policy.max_battery_c is None or (battery is not None and battery <= policy.max_battery_c)))
            waited = time.monotonic() - t0
            if cool or waited >= timeout:
                return {"mode": "thermal", "reached": cool, "waited_s": round(waited, 2), "hottest_c": hottest,
                        "battery_c": battery, "max_temp_c": policy.max_temp_c, "max_battery_c": policy.max_battery_c,
                        "timeout_s": timeout}
            if progress:
                progress("cooldown", int(waited), int(timeout))
            time.sleep(min(policy.poll_s, max(0.0, timeout - waited)))

    def _read_temps(self, zones_re: str | None) -> tuple[float | None, float | None]:
        state = device_state(*self.transport.read_temps())
        temps = {k: v for k, v in (state.get("thermal_c") or {}).items() if -30.0 < v < 150.0}
        if zones_re:
            temps = {k: v for k, v in temps.items() if re.search(zones_re, k)}
        return (max(temps.values()) if temps else None), state.get("battery_c")

    # ---- the result

    def read_result(self, run: AgentRun, outcome: Outcome, files: dict[str, Any], cooldown: dict[str, Any] | None,
                    started: float) -> JobResult:
        spec, art, d = run.spec, run.info["art"], self.settings.device_dir
        unit, args, affinity = unit_of(spec, d), run.info["args"], run.info["affinity"]
        ignored = sorted(set(spec.options.extra) - set(OPTION_KEYS))
        rc = outcome.rc if outcome.end == "done" else None
        timed_out, run_s = outcome.end == "timeout", outcome.wait_s
        ended = time.time()

        stdout = files.get("stdout.txt") or ""
        stderr = files.get("stderr.txt") or ""
        before = device_state(files.get("thermal_before.txt"), files.get("battery_before.txt"))
        after = device_state(files.get("thermal_after.txt"), files.get("battery_after.txt"))
        before["cooldown"] = cooldown
        execution: dict[str, Any] = {"runtime": unit.runtime, "accelerator": unit.label, "unit_asked": unit.label,
                                     "timing_method": "benchmark_model"}
        extra: dict[str, Any] = {
            "benchmark_flags": args,
            "unsupported_flags": run.info["unsupported"], "affinity": affinity, "device_dir": d, "run_s": round(run_s, 3),
            "push": {**run.info["push"], "bytes_pushed_total": self.bytes_pushed},
            "artifact": {"sha256": art.sha256, "size_bytes": art.size_bytes, "key": art.key, "source": art.source,
                         "device_path": self.remote_model(art)},
        }
        if art.source == "export":
            execution["na_flags"] = list(art.meta.get("na_flags") or [])
            extra["artifact"]["cached"] = art.meta.get("cached")
            ref = art.meta.get("reference") or {}
            if isinstance(ref, dict) and ref.get("rel_error") is not None:
                extra["artifact"]["reference_rel_error"] = ref.get("rel_error")
        if ignored:
            extra["ignored_options"] = ignored
        if self.prepare_note:
            extra["prepare_note"], self.prepare_note = self.prepare_note, None  # said once, on the next job
        if self.prepare_push:
            extra["prepare_push"], self.prepare_push = self.prepare_push, None
        proto = run.local_dir / RESULT_PROTO
        if proto.is_file():
            extra["result_proto"] = str(proto)
        output = stdout + ("\n" if stdout and not stdout.endswith("\n") else "") + stderr
        fail_kw = dict(started_at=started, ended_at=ended, device_state_before=before, device_state_after=after,
                       extra=extra, execution=Execution(**execution), stand_in=standin.from_output(output))
        if timed_out:
            return JobResult.failure(spec.job_id, "timeout",
                                     f"benchmark_model ran past the job timeout of {spec.measure.timeout_seconds:.0f} s "
                                     "and was killed; raise measure.timeout_seconds or lower iterations/max_seconds",
                                     detail=tail(output) or None, **fail_kw)
        if rc is None:
            return JobResult.failure(spec.job_id, "crash", "the device agent run_job.sh ended without a result "
                                     "(killed by the system, or the device rebooted)",
                                     detail=tail((files.get("agent.log") or "") + output) or None, **fail_kw)
        if rc != 0:
            how = f"exit code {rc}"
            if rc > 128:
                try:
                    how += f" (killed by {signal.Signals(rc - 128).name})"
                except ValueError:
                    how += f" (signal {rc - 128})"
            errors = [ln.strip() for ln in output.splitlines() if ln.startswith(("ERROR:", "FATAL:"))]
            msg = f"benchmark_model failed with {how}"
            if errors:
                msg += ": " + " | ".join(errors[:3])
            refused = any(mark in output for mark in ("Disallowed CPU fallback detected", "Some ops are not accelerated"))
            if unit.use_gpu and refused:  # --require_full_delegation=true on a graph the GPU does not take wholly
                msg = ("the GPU does not run the whole graph, and full delegation was required (a GPU row must be "
                       "the GPU's alone): " + msg + ". `harness inspect` names the ops LiteRT's GPU engine refuses; "
                       "options.extra.allow_cpu_fallback: true runs it split, marked partial")
            return JobResult.failure(spec.job_id, "delegation" if unit.use_gpu and refused else "crash", msg,
                                     detail=tail(stderr or stdout) or None, **fail_kw)
        try:
            parsed = parse_benchmark_model(output)
        except ParseError as exc:
            return JobResult.failure(spec.job_id, "parse", f"benchmark_model output not understood: {exc}",
                                     detail=tail(output) or None, **fail_kw)
        execution.update(unit_used=unit_used(unit, parsed, args), delegation=delegation_used(unit, parsed, args))
        fail_kw["execution"] = Execution(**execution)
        ran = execution["unit_used"]
        if unit.use_gpu and ran != unit.label and not allows_cpu(spec):
            return JobResult.failure(
                spec.job_id, "delegation",
                f"the GPU row did not run wholly on the GPU: {ran}; a GPU figure must be the GPU's alone. Make the "
                "graph GPU-clean (`harness inspect` names the refused ops), or set options.extra.allow_cpu_fallback: "
                "true to record it as partial", detail=tail(output) or None, **fail_kw)
        return self._result(spec, parsed, files, art, extra, before, after, started, ended, fail_kw["execution"],
                            fail_kw["stand_in"])

    def _result(self, spec: JobSpec, parsed: BenchmarkModelOutput, files: dict[str, str | None], art: Artifact,
                extra: dict[str, Any], before: dict, after: dict, started: float, ended: float,
                execution: Execution, stand_in: list[str] | None = None) -> JobResult:
        gpu_samples: list[dict[str, Any]] = []
        unparsed = 0
        for stamp, text in split_meminfo_samples(files.get("meminfo.txt") or ""):
            try:
                mem = parse_meminfo_graphics(text)
            except ParseError:
                unparsed += 1  # e.g. the process had just exited
                continue
            gpu_samples.append({"t": stamp, "graphics_kb": mem.graphics_kb, "gl_mtrack_kb": mem.gl_mtrack_kb,
                                "egl_mtrack_kb": mem.egl_mtrack_kb, "total_pss_kb": mem.total_pss_kb})
        gpu_bytes = max((s["graphics_kb"] for s in gpu_samples), default=None)
        weight_bytes, planned = art.meta.get("weight_bytes"), art.meta.get("planned_tensor_bytes")
        memory = MemoryFigures(
            weight_bytes=int(weight_bytes) if isinstance(weight_bytes, (int, float)) else None,
            tensor_bytes_planned=int(planned) if isinstance(planned, (int, float)) else None,
            peak_rss_bytes=round(parsed.peak_memory_mb * 2**20) if parsed.peak_memory_mb else None,
            gpu_bytes=gpu_bytes * 1024 if gpu_bytes is not None else None,
        )
        op_times = parsed.category_ms() if parsed.op_profiled else {}
        extra.update({
            "warmup_summary_ms": summary_ms(parsed.warmup),
            "inference_avg_ms": parsed.inference_avg_ms, "benchmark_output_format": parsed.format,
            "model_size_mb": parsed.model_size_mb, "init_footprint_mb": parsed.init_footprint_mb,
            "overall_footprint_mb": parsed.overall_footprint_mb, "end_vmrss_mb": parsed.end_vmrss_mb,
            "delegates": [asdict(dl) for dl in parsed.delegates], "warnings": list(parsed.warnings),
            "gpu_memory_samples": gpu_samples, "gpu_memory_samples_unparsed": unparsed,
        })
        if parsed.op_profiled:
            extra["op_type_ms"] = parsed.op_avg_ms()
            if parsed.delegate_op_profile:
                extra["delegate_op_type_ms"] = {r.node_type: r.avg_ms for r in parsed.delegate_op_profile}
        versions = {"harness": harness.__version__, "benchmark_model_md5": self.transport.file_hash(self._benchmark_local(), "md5"),
                    "run_job_sh_md5": self.transport.file_hash(AGENT_SCRIPT, "md5"),
                    "android": self.info.os_version, "fingerprint": str(self.info.extra.get("fingerprint") or "")}
        first_us = parsed.first_inference_us if parsed.first_inference_us is not None else parsed.warmup.first_us
        if not parsed.warmup.count:  # no warm-up ran: the first run is the timed run's first
            first_us = parsed.inference.first_us
        return JobResult(
            job_id=spec.job_id, status="ok", samples_ms=exact_samples_ms(parsed.inference),
            warmup_ms=exact_samples_ms(parsed.warmup), init_ms=parsed.init_us / 1000.0,
            first_run_ms=first_us / 1000.0, memory=memory,
            device_state_before=before, device_state_after=after, op_times_ms=op_times, versions=versions,
            started_at=started, ended_at=ended, extra=extra, stand_in=list(stand_in or []),
            execution=execution.model_copy(update={"latency_summary_ms": LatencySummary(**summary_ms(parsed.inference))}),
        )
