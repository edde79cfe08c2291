"""An iPhone or iPad on the remote-agent template (harness.devices.remote), driving the Swift agent app.

An iPhone runs no shell: the harness installs its agent app (device_agents/ios, built and signed on
a Mac) and talks to it through files in the app's container. A job on a phone:
1. install the agent IPA (`--ios-agent PATH` or farm `ios: {agent: PATH}`) through
   InstallationProxyService when its sha256 differs from the one recorded in the container;
2. push the variant's .mlpackage (from `harness.export.ensure_artifact(fmt="coreml")`, or the host
   directory named by `options.extra.mlpackage`) into `Documents/models/<sha16>.mlpackage` through
   house_arrest (VendContainer), skipped when the `.sha256` marker next to it holds the same hash;
3. write `Documents/jobs/<job id>/job.json` (the JobSpec with runtime `coreml`, the compute units
   and the container-relative model paths);
4. launch the app through DvtProvider + ProcessControl.launch with `--job-id <id>` (and
   HARNESS_JOB_ID); on iOS 17+ over the tunneld RSD;
5. poll for the DONE marker; the app's `status.json` heartbeats feed the progress bar; a heartbeat
   that stops changing for `heartbeat_timeout_s` gets the app killed (a `timeout` failure), and an
   app that is gone without DONE is a `crash`;
6. pull `result.json` (and `status.json`) into the job's workdir, validate it with
   `harness.protocol.parse_result`, remove the job's directory from the phone.

A connection that drops raises DeviceDisconnectedError (the runner retries the job).

Runtime options (`options.extra` of a suite): `mlpackage` (host .mlpackage to run instead of
exporting the variant), `mlpackages` ({text_encoder, unet, vae_decoder}: host .mlpackage dirs for
e2e), `compute_units` (or `options.compute_units`: cpuAndGPU (default, the paper's GPU rows) | all |
cpuOnly | cpuAndNeuralEngine).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness.devices.base import Artifact, DeviceContext, DeviceInfo, JobFailure, export_failure
from harness.devices.ios.agent import (
    E2E_COMPONENTS, JOBS_DIR, OPTION_KEYS, RESULT, STATUS, STDERR, check_runtime, compute_units_of, device_spec,
    ipa_info, remote_model, safe_name, tree_sha256, tree_size,
)
from harness.devices.ios.settings import DEFAULT_BUNDLE_ID, IOSConfigError, settings_for
from harness.devices.ios.transport import UsbmuxTransport, load_services
from harness.devices.remote import AgentRun, Outcome, RemoteDevice, RemoteFile
from harness.export import ensure_artifact
from harness.models.configs import get_model_config
from harness.protocol import JobResult, JobSpec, ProtocolError, error_tail, parse_result
from harness.variants import Flags
from harness.workloads.e2e import DEFAULT_PROMPT


class IOSDevice(RemoteDevice):
    kind = "ios"

    def __init__(self, info: DeviceInfo, ctx: DeviceContext):
        super().__init__(info, ctx)
        self.udid = info.id.split(":", 1)[1]
        self.settings = settings_for(ctx, self.udid)
        self.bundle_id = self.settings.bundle_id or DEFAULT_BUNDLE_ID
        if not self.settings.bundle_id and self.settings.agent:
            try:
                self.bundle_id = ipa_info(self.settings.agent)["CFBundleIdentifier"]
            except IOSConfigError:
                pass  # reported by the agent install, as the job's failure
        self.transport: UsbmuxTransport = UsbmuxTransport(info, self.udid, self.settings, load_services(),
                                                          self.bundle_id)

    # ---- what the job needs

    def check(self, spec: JobSpec) -> None:
        check_runtime(spec)
        compute_units_of(spec)

    def components(self, spec: JobSpec) -> tuple[str, ...]:
        return E2E_COMPONENTS if spec.workload == "e2e" else ("unet",)

    def _given(self, spec: JobSpec, component: str) -> Any:
        extra = spec.options.extra
        given = (extra.get("mlpackages") or {}).get(component) if isinstance(extra.get("mlpackages"), dict) else None
        return given or (extra.get("mlpackage") if component == "unet" else None)

    def artifact_key(self, spec: JobSpec, component: str) -> str:
        given = self._given(spec, component)
        return (f"path:{given}" if given else
                f"export:{spec.model.model_dump_json()}:{spec.flags}:{spec.options.dtype}:{component}")

    def resolve_artifact(self, spec: JobSpec, component: str) -> Artifact:
        given = self._given(spec, component)
        if given:
            local = Path(str(given)).expanduser()
            if not (local / "Manifest.json").is_file():
                raise JobFailure("input", f"options.extra.mlpackage{'s.' + component if component != 'unet' else ''} "
                                  f"{str(given)!r} is not an .mlpackage directory (no Manifest.json)")
            return Artifact(local, tree_sha256(local), tree_size(local), "path")
        if component != "unet":
            raise JobFailure("input", f"e2e on iOS needs the {component} as Core ML too, and harness.export builds "
                              "the UNet only: give the three packages with --set options.extra.mlpackages."
                              "{text_encoder,unet,vae_decoder}=PATH (coremltools conversions of the pipeline's "
                              "components, README 'iOS')")
        try:
            art = ensure_artifact(spec.model, Flags.from_dict(spec.flags), "coreml", dtype=spec.options.dtype,
                                  cache_dir=self.ctx.cache_dir, progress=None, variant=spec.variant)
        except Exception as exc:  # noqa: BLE001 - a converter failure fails this variant only
            raise export_failure(exc, f"variant {spec.variant!r}", "Core ML") from None
        return Artifact(Path(art.path), str(art.sha256), int(art.size_bytes), "export",
                        dict(getattr(art, "meta", None) or {}))

    def files_for(self, arts: list[Artifact], specs: list[JobSpec]) -> list[RemoteFile]:
        return [RemoteFile(a.local, remote_model(a.sha256), digest=a.sha256) for a in arts]

    def _token_ids(self, spec: JobSpec) -> list[list[int]]:
        """[unconditional, conditional] ids of the prompt, made here (the phone has no tokenizer)."""
        from harness.models.pipeline import build_tokenizer, random_token_ids, tokenize  # torch

        cfg = get_model_config(spec.model.name)
        prompt = spec.workload_args.get("prompt", DEFAULT_PROMPT)
        seed = spec.workload_args.get("seed", spec.model.seed)
        if spec.model.weights:
            ids = tokenize(build_tokenizer(spec.model.weights), cfg, prompt)
        else:
            ids = random_token_ids(cfg, prompt, seed)
        return [[int(t) for t in row] for row in ids.tolist()]

    # ---- running

    def agent_run(self, spec: JobSpec, workdir: Path, arts: dict[str, Artifact], push: dict[str, Any],
                  component: str | None = None) -> AgentRun:
        """The app's run: its JobSpec (the models' container paths; e2e: the prompt's token ids)."""
        token_ids = self._token_ids(spec) if spec.workload == "e2e" else None
        paths = {c: remote_model(a.sha256).lstrip("/") for c, a in arts.items()}  # as the app resolves them
        dspec = device_spec(spec, paths, self.settings.heartbeat_s, token_ids)
        text = dspec.model_dump_json(indent=2)
        (workdir / "device").mkdir(exist_ok=True)
        (workdir / "device" / "job.json").write_text(text)  # what the phone read, kept with the result
        s = self.settings
        return AgentRun(spec, f"{JOBS_DIR}/{safe_name(spec.job_id)}", workdir / "device", payload=text,
                        heartbeat_timeout_s=s.heartbeat_timeout_s, launch_timeout_s=s.launch_timeout_s,
                        pause_s=s.poll_s, info={"arts": arts, "paths": paths, "push": push,
                                               "compute_units": dspec.options.compute_units})

    def read_result(self, run: AgentRun, outcome: Outcome, files: dict[str, Any], cooldown: dict[str, Any] | None,
                    started: float) -> JobResult:
        spec, arts = run.spec, run.info["arts"]
        wait = outcome.to_dict(run.pid)
        if outcome.stalled_s is not None:
            wait["message"] = (f"the agent app's heartbeat (status.json) did not change for {outcome.stalled_s:.0f} s: "
                               "it hangs, or iOS suspended it (phone locked, app sent to the background); it was "
                               "killed. Keep the phone unlocked with the agent in front")
        elif outcome.end == "timeout":
            wait["message"] = (f"the job ran past its timeout of {spec.measure.timeout_seconds:.0f} s; the agent app "
                               "was killed. Raise measure.timeout_seconds or lower iterations")
        extra: dict[str, Any] = {
            "push": {**run.info["push"], "bytes_pushed_total": self.bytes_pushed}, "agent": self.transport.agent_report,
            "bundle_id": self.bundle_id,
            "models": {c: {"device_path": run.info["paths"][c], "sha256": a.sha256, "size_bytes": a.size_bytes,
                           "source": a.source} for c, a in arts.items()},
            "compute_units": run.info["compute_units"], "wait": wait}
        ignored = sorted(set(spec.options.extra) - set(OPTION_KEYS))
        if ignored:
            extra["ignored_options"] = ignored
        if self.prepare_note:
            extra["prepare_note"] = self.prepare_note
        fail_kw = dict(started_at=started, ended_at=time.time(), extra={"ios": extra})
        status_text = (files.get(STATUS) or b"").decode(errors="replace")
        stderr_text = (files.get(STDERR) or b"").decode(errors="replace")
        # what the app last said on stderr (error_tail bounds it), else its last heartbeat
        said = stderr_text.strip() and stderr_text or status_text or None
        if outcome.end == "timeout":
            return JobResult.failure(spec.job_id, "timeout", wait["message"], detail=said, **fail_kw)
        if outcome.end == "gone" or files.get(RESULT) is None:
            return JobResult.failure(spec.job_id, "crash", "the agent app ended without a result (it crashed, was "
                                     "killed by iOS (memory limit: jetsam), or the phone locked); see the device "
                                     "log: `pymobiledevice3 syslog live` / `pymobiledevice3 crash ls`",
                                     detail=said, **fail_kw)
        text = files[RESULT].decode(errors="replace")
        try:
            result = parse_result(text)
        except ProtocolError as exc:
            return JobResult.failure(spec.job_id, "parse", f"the agent's result.json does not parse: {exc}",
                                     detail=text[:4000] or None, **fail_kw)
        if result.job_id != spec.job_id:
            return JobResult.failure(spec.job_id, "parse", f"result.json belongs to job {result.job_id!r}, not "
                                     f"{spec.job_id!r} (a stale file from another run?)", detail=text[:4000], **fail_kw)
        update: dict[str, Any] = {"extra": {**result.extra, "ios": extra}}
        if result.error is not None and not result.error.detail and stderr_text.strip():
            update["error"] = result.error.model_copy(update={"detail": error_tail(stderr_text)})
        return result.model_copy(update=update)
