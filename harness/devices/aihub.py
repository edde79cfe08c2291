"""Qualcomm AI Hub as a device farm: `aihub:<device name>` (e.g. `aihub:Samsung Galaxy S24 (Family)`).

AI Hub runs a .tflite on real Snapdragon phones in its cloud and returns a profile. Everything goes
through the official client `qai-hub` (the calls a user's own script makes):

* credentials the Hub's way: `QAIHUB_API_TOKEN` (with `QAIHUB_API_URL` for another endpoint), else the
  client.ini that `qai-hub configure --api_token ...` writes (`~/.qai_hub/client.ini`, or
  `$QAIHUB_CLIENT_INI`). The token is never printed, logged or stored (`mask`).
* discovery: `Client.get_devices()`; `harness devices` lists the Hub's devices when a token is
  configured (`harness devices --aihub`: only them, with their attributes).
* a job: the variant's .tflite (the export cache, or `options.extra.graph`) is uploaded once per
  endpoint and sha256 (the model id is kept in `<cache>/aihub/models.json` and checked with
  `get_model`), then `submit_inference_job(model, Device(name), profile=True, options="--compute_unit
  U")` with U from the runtime (litert-gpu: gpu, litert-cpu: cpu, litert-delegate: npu; torch means
  litert-gpu here). `prepare` submits every job of the device at once (the Hub queues them), so many
  are in flight; `run_job` waits for its own (timeout: measure.timeout_seconds; a progress line with the
  Hub's state), downloads the profile and maps it into the JobResult.
* every submitted Hub job id is written, before anything else happens, to
  `<cache>/aihub/submitted/<run id>.json`: Ctrl-C loses nothing, and `harness run --resume RUN` waits for
  (or downloads) the same Hub jobs instead of submitting again. A Hub job that failed is submitted anew.

The profile -> JobResult mapping (`profile_to_result`): samples_ms are the profile's per-run times
(all_inference_times, us -> ms), else the estimated inference time; init_ms the first (cold) load,
extra the warm load and compile times; memory.peak_rss_bytes the upper end of the inference peak-memory
range (every range is kept in extra.aihub.memory_ranges_bytes); op_times_ms the per-layer times folded
into the paper's categories (harness.devices.android.parse.map_op_category); execution.unit_used the asked
unit, "(partial: N layers on the NPU, M on the CPU)" when any layer ran elsewhere (execution.delegation
counts them), with the layers' units in extra.aihub.layer_units.
"""
from __future__ import annotations

import json
import os
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from harness import standin
from harness.devices.android.graphs import check_tflite, given_graph
from harness.devices.android.parse import OP_CATEGORIES, map_op_category
from harness.devices.base import (
    Device, DeviceContext, DeviceError, DeviceInfo, DeviceKind, JobFailure, ProgressFn, UnknownDeviceError,
)
from harness.protocol import (
    Execution, JobResult, JobSpec, LatencySummary, MemoryFigures, aihub_delegation, write_json_atomic,
)

KIND = "aihub"
# The Hub's --compute_unit for each runtime a suite names (torch: the phone GPU, as on Android).
COMPUTE_UNIT = {"litert-gpu": "gpu", "litert-cpu": "cpu", "litert-delegate": "npu", "torch": "gpu"}
CONFIGURE_HINT = ("configure an AI Hub token: `qai-hub configure --api_token TOKEN` (from your account page "
                  "at https://workbench.aihub.qualcomm.com) or set QAIHUB_API_TOKEN")
POLL_ENV = "HARNESS_AIHUB_POLL_S"  # seconds between status polls (default 10, the client's own interval)


class AiHubError(DeviceError):
    """An AI Hub call that failed (the message is the client's, with the token masked)."""


def mask(text: str, token: str | None) -> str:
    """`text` with the API token replaced by ***."""
    return text.replace(token, "***") if token else text


INSTALL_HINT = "install the AI Hub client: pip install qai-hub==0.56.0 (the harness's `aihub` extra; `make setup`)"


def _config_path() -> Path:
    """Where the client reads its client.ini (qai_hub.api_utils.get_config_path, without importing it)."""
    return Path(os.path.expanduser(os.environ.get("QAIHUB_CLIENT_INI", "~/.qai_hub/client.ini")))


def client_config() -> Any | None:
    """The qai_hub.ClientConfig of this user ($QAIHUB_API_TOKEN, else client.ini), or None without one.
    AiHubError when credentials are there but the client is not installed or the file is broken."""
    token = os.environ.get("QAIHUB_API_TOKEN", "").strip()
    if not token and not _config_path().is_file():
        return None  # nothing configured: the client is not even imported
    try:
        from qai_hub import ClientConfig
        from qai_hub.api_utils import get_config_path, load_api_config_from_file
    except ImportError as exc:
        raise AiHubError(f"AI Hub credentials are configured but the qai-hub client cannot be imported ({exc}); "
                         f"{INSTALL_HINT}") from None
    if token:
        url = os.environ.get("QAIHUB_API_URL", "").strip()
        kw = {"api_url": url, "web_url": url} if url else {}
        return ClientConfig(api_token=token, verbose=False, **kw)
    path = get_config_path()
    if not Path(path).is_file():
        return None
    try:
        config = load_api_config_from_file(path)
    except Exception as exc:  # noqa: BLE001 - a broken client.ini is a device error naming the file
        raise AiHubError(f"AI Hub client config {path} cannot be read ({type(exc).__name__}); {CONFIGURE_HINT}") from None
    config.verbose = False
    return config


def _client(config: Any):
    import qai_hub

    return qai_hub.Client(config=config)


def _hub_error(exc: Exception, config: Any, what: str) -> AiHubError:
    msg = " ".join(str(exc).split())  # the client's boxed messages, on one line
    return AiHubError(mask(f"AI Hub ({config.api_url}) {what}: {type(exc).__name__}: {msg}", config.api_token))


def endpoint_note(api_url: str) -> str | None:
    """A note for rows from an endpoint that is not Qualcomm AI Hub's own (a stand-in, a proxy)."""
    from qai_hub.public_rest_api import DEFAULT_HUB_API_URL

    if api_url.rstrip("/") == DEFAULT_HUB_API_URL.rstrip("/"):
        return None
    return (f"endpoint {api_url} is not Qualcomm AI Hub's ({DEFAULT_HUB_API_URL}): these figures come from "
            "whatever serves it (tests/fakes/aihub_server.py serves stand-in figures, not measurements)")


def device_info(dev: Any, api_url: str = "") -> DeviceInfo:
    attrs = list(dev.attributes)
    chipset = next((a.split(":", 1)[1] for a in attrs if a.startswith("chipset:")), "")
    os_name = next((a.split(":", 1)[1] for a in attrs if a.startswith("os:")), "")
    note = endpoint_note(api_url) if api_url else None
    return DeviceInfo(id=f"{KIND}:{dev.name}", kind=KIND, state="ready", name=dev.name, model=f"{chipset} (AI Hub)",
                      soc=chipset, os_version=f"{os_name} {dev.os}".strip(),
                      stand_in=[standin.AIHUB_STAND_IN] if note else [],
                      extra={"os": dev.os, "attributes": attrs, "farm": "Qualcomm AI Hub", "endpoint": api_url,
                             **({"endpoint_note": note} if note else {})})


class AiHubKind(DeviceKind):
    name = KIND

    def discover(self, ctx: DeviceContext) -> list[DeviceInfo]:
        try:
            config = client_config()
        except AiHubError as exc:
            return [DeviceInfo(id=KIND, kind=KIND, state="error", name="AI Hub", hint=str(exc), note=True)]
        if config is None:
            if ctx.extra.get("aihub"):  # asked for explicitly: say why there is nothing
                return [DeviceInfo(id=KIND, kind=KIND, state="no token", name="AI Hub",
                                   hint=f"no AI Hub credentials: {CONFIGURE_HINT}", note=True)]
            return []
        try:
            devices = _client(config).get_devices()
        except Exception as exc:  # noqa: BLE001 - an unreachable Hub or a rejected token is a note, not a crash
            return [DeviceInfo(id=KIND, kind=KIND, state="error", name="AI Hub", note=True,
                               hint=str(_hub_error(exc, config, "listing devices")) +
                               ("; " + CONFIGURE_HINT if "authenticate" in str(exc) else ""))]
        seen: dict[str, DeviceInfo] = {}
        for dev in devices:
            seen.setdefault(dev.name, device_info(dev, config.api_url))  # one id per name: the Hub picks the OS
        return list(seen.values())

    def select(self, serial: str, found: list[DeviceInfo]) -> list[DeviceInfo]:
        """`aihub:chipset:qualcomm-snapdragon-8gen3` (attributes, comma-separated, as `get_devices` takes them):
        the first device by name that has them all; the run then names that device."""
        wanted = [a.strip() for a in serial.split(",") if a.strip()]
        if not wanted or not all(":" in a for a in wanted):
            return []
        hits = sorted((d for d in found if all(a in d.extra.get("attributes", []) for a in wanted)), key=lambda d: d.id)
        return hits[:1]

    def open(self, info: DeviceInfo, ctx: DeviceContext) -> Device:
        try:
            config = client_config()
        except AiHubError as exc:
            raise UnknownDeviceError(f"{info.id}: {exc}") from None
        if config is None:
            raise UnknownDeviceError(f"{info.id}: no AI Hub credentials; {CONFIGURE_HINT}")
        return AiHubDevice(info, ctx, config)


class _Failure(Exception):
    def __init__(self, kind: str, message: str, detail: str | None = None, transient: bool = False,
                 hub_failed: bool = False):
        super().__init__(message)
        self.kind, self.message, self.detail, self.transient = kind, message, detail, transient
        self.hub_failed = hub_failed  # the Hub job itself failed: a later run submits it anew


class Ledger:
    """A JSON file of {key: value}, rewritten atomically on every change (thread-safe)."""

    _lock = threading.Lock()

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> Any:
        return self.read().get(key)

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = self.read()
            data[key] = value
            write_json_atomic(self.path, data)


def failure_kind(reason: str) -> tuple[str, bool]:
    """(JobError kind, transient) of a Hub job's failure reason."""
    low = reason.lower()
    if "unavailable" in low or "no device" in low or "try again" in low:
        return "device", True
    if "quota" in low or "rate" in low and "limit" in low:
        return "device", False
    if "compile" in low or "unsupported" in low or "not supported" in low:
        return "compile", False
    if "timeout" in low or "timed out" in low:
        return "timeout", False
    return "device", False


class AiHubDevice(Device):
    kind = KIND

    def __init__(self, info: DeviceInfo, ctx: DeviceContext, config: Any):
        super().__init__(info, ctx)
        from harness.export.cache import cache_root

        self.config = config
        self.client = _client(config)
        root = cache_root(ctx.cache_dir) / "aihub"
        self.models = Ledger(root / "models.json")
        self.submitted_dir = root / "submitted"
        self.poll_s = float(os.environ.get(POLL_ENV) or 10)
        self._cancel = threading.Event()
        self._prepare_errors: dict[str, _Failure] = {}
        self._submitted_now: set[str] = set()
        self._facts: dict[tuple, Any] = {}
        self._live_models: dict[str, Any] = {}

    # ---- helpers

    def _ledger(self, spec: JobSpec) -> Ledger:
        return Ledger(self.submitted_dir / f"{spec.run_id}.json")

    def _call(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - every client error becomes a job failure with its message
            err = _hub_error(exc, self.config, what)
            kind = "input" if type(exc).__name__ == "UserError" and "authenticate" not in str(exc) else "device"
            transient = type(exc).__name__ in ("InternalError", "RateLimitedError")
            raise _Failure(kind, str(err), transient=transient) from None

    def _artifact(self, spec: JobSpec) -> tuple[Path, dict[str, Any]]:
        try:
            where, graph = given_graph(spec)
            if graph:
                path = Path(graph).expanduser()
                check_tflite(path, where)
                return path, {"source": "graph"}  # weights/planned tensors: from the export's meta only, as on Android
        except JobFailure as f:
            raise _Failure(f.kind, f.message) from None
        from harness.export import ensure_artifact
        from harness.variants import Flags

        try:
            art = ensure_artifact(spec.model, Flags.from_dict(spec.flags), fmt="tflite", dtype=spec.options.dtype,
                                  cache_dir=self.ctx.cache_dir, variant=spec.variant)
        except Exception as exc:  # noqa: BLE001 - a converter failure fails this variant only
            raise _Failure("export", f"exporting variant {spec.variant!r} to .tflite failed: {exc}",
                           detail=traceback.format_exc()[-3000:]) from None
        meta = dict(getattr(art, "meta", None) or {})
        return Path(art.path), {"source": "export", "key": art.key, "na_flags": list(getattr(art, "na_flags", []) or []),
                                "weight_bytes": meta.get("weight_bytes"),
                                "planned_tensor_bytes": meta.get("planned_tensor_bytes")}

    def _file_fact(self, path: Path, what: str, fn) -> Any:
        """fn(path), once per file (path, size, mtime) in this session (its sha256)."""
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, what)
        if key not in self._facts:
            self._facts[key] = fn(path)
        return self._facts[key]

    def _model(self, path: Path) -> tuple[Any, str, bool]:
        """(qai_hub Model, sha256, uploaded now) for a file: the model id recorded for this endpoint and
        sha256 when the Hub still has it (`get_model`), else a new upload. One upload per file per session."""
        from harness.export.cache import sha256_path

        sha = self._file_fact(path, "sha256", sha256_path)
        key = f"{self.config.api_url}|{sha}"
        if key in self._live_models:
            return self._live_models[key], sha, False
        model_id = self.models.get(key)
        model, uploaded = None, False
        if model_id:
            try:
                model = self.client.get_model(model_id)
            except Exception:  # noqa: BLE001 - gone (or never there): upload again
                model = None
        if model is None:
            model = self._call(f"uploading {path.name}", self.client.upload_model, str(path), name=path.name)
            self.models.put(key, model.model_id)
            uploaded = True
        self._live_models[key] = model
        return model, sha, uploaded

    def _submit(self, spec: JobSpec) -> dict[str, Any]:
        """Upload (or reuse) the job's model and submit its profile job; the Hub job id is recorded at once."""
        import qai_hub

        if spec.workload != "unet_iteration":
            raise _Failure("input", f"workload {spec.workload!r} does not run on AI Hub devices yet; the "
                           "unet_iteration workload (Table 1) does")
        runtime = spec.options.runtime
        if runtime not in COMPUTE_UNIT:
            raise _Failure("input", f"runtime {runtime!r} does not run on AI Hub; use "
                           f"{', '.join(k for k in COMPUTE_UNIT if k != 'torch')} (--set runtime=...)")
        unit = COMPUTE_UNIT[runtime]
        path, art = self._artifact(spec)
        model, sha, uploaded = self._model(path)
        options = f"--compute_unit {unit}"
        more = spec.options.extra.get("aihub_options")
        if more:
            options += f" {more}"
        job = self._call("submitting the profile job", self.client.submit_inference_job, model,
                         qai_hub.Device(self.info.name), name=f"{spec.run_id} {spec.variant}", options=options,
                         profile=True, retry=False)
        entry = {"hub_job_id": job.job_id, "endpoint": self.config.api_url, "model_id": model.model_id,
                 "sha256": sha, "uploaded": uploaded, "options": options, "unit": unit, "artifact": {**art, "path": str(path)},
                 "submitted_at": time.time(), "state": "submitted"}
        self._ledger(spec).put(spec.job_id, entry)
        self._submitted_now.add(spec.job_id)
        return entry

    def _entry(self, spec: JobSpec) -> dict[str, Any]:
        entry = self._ledger(spec).get(spec.job_id)
        if entry and entry.get("state") != "failed":
            entry["resumed"] = spec.job_id not in self._submitted_now  # submitted by an earlier (interrupted) run
            return entry
        failure = self._prepare_errors.pop(spec.job_id, None)
        if failure is not None:
            raise failure
        return self._submit(spec)

    # ---- Device interface

    def prepare(self, specs: list[JobSpec]) -> None:
        """Submit every job not yet submitted (the Hub runs them in parallel on its phones); a problem
        is kept for that job's run_job."""
        for spec in specs:
            if self._cancel.is_set():
                return
            entry = self._ledger(spec).get(spec.job_id)
            if entry and entry.get("state") != "failed":
                continue
            try:
                self._submit(spec)
            except _Failure as f:
                self._prepare_errors[spec.job_id] = f

    def run_job(self, spec: JobSpec, workdir: Path, progress: ProgressFn | None = None) -> JobResult:
        started = time.time()
        workdir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(workdir / "job.json", spec)
        entry: dict[str, Any] = {}
        try:
            entry = self._entry(spec)
            profile = self._wait(spec, entry, progress)
            (workdir / "aihub_profile.json").write_text(json.dumps(profile, indent=1))
            result = profile_to_result(spec, profile, entry, started)
            result.extra["aihub"]["profile_file"] = str(workdir / "aihub_profile.json")
            self._ledger(spec).put(spec.job_id, {**entry, "state": "done"})
            return result
        except _Failure as f:
            if f.hub_failed:  # a timeout or an interrupt keeps the job: --resume waits for it again
                self._ledger(spec).put(spec.job_id, {**entry, "state": "failed"})
            extra = {"aihub": _public(entry)} if entry else {}
            return JobResult.failure(spec.job_id, f.kind, f.message, detail=f.detail, transient=f.transient,
                                     started_at=started, ended_at=time.time(), extra=extra)
        except Exception as exc:  # noqa: BLE001 - a bug here fails this job, not the run
            return JobResult.failure(spec.job_id, "internal", mask(f"{type(exc).__name__}: {exc}", self.config.api_token),
                                     detail=mask(traceback.format_exc()[-3000:], self.config.api_token),
                                     started_at=started, ended_at=time.time())

    def _wait(self, spec: JobSpec, entry: dict[str, Any], progress: ProgressFn | None) -> dict[str, Any]:
        job_id = entry["hub_job_id"]
        job = self._call(f"reading job {job_id}", self.client.get_job, job_id)
        deadline = time.monotonic() + spec.measure.timeout_seconds
        states = ["CREATED", "PROVISIONING_DEVICE", "MEASURING_PERFORMANCE"]
        while True:
            status = self._call(f"polling job {job_id}", job.get_status)
            if status.finished:
                break
            if progress:
                code = status.code
                progress(f"aihub {job_id} {code.lower()}", states.index(code) if code in states else 0, len(states))
            if time.monotonic() >= deadline:
                raise _Failure("timeout", f"AI Hub job {job_id} did not finish within measure.timeout_seconds="
                               f"{spec.measure.timeout_seconds:g} s (last state {status.code}); it stays recorded: "
                               f"`harness run --resume {spec.run_id}` waits for it again ({job.url})")
            if self._cancel.wait(self.poll_s):
                raise _Failure("interrupted", f"stopped while waiting for AI Hub job {job_id}; it stays recorded "
                               f"for `harness run --resume {spec.run_id}`")
        if not status.success:
            reason = status.message or "no reason given"
            kind, transient = failure_kind(reason)
            raise _Failure(kind, f"AI Hub job {job_id} on {self.info.name} failed: {reason} ({job.url})",
                           transient=transient, hub_failed=True)
        if progress:
            progress("aihub download", 0, 1)
        return self._call(f"downloading the profile of job {job_id}", job.download_profile)

    def cancel(self) -> None:
        self._cancel.set()


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    out = {k: entry[k] for k in ("hub_job_id", "endpoint", "model_id", "sha256", "uploaded", "options", "unit", "resumed")
           if k in entry}
    note = endpoint_note(entry["endpoint"]) if entry.get("endpoint") else None
    if note:
        out["endpoint_note"] = note
    return out


def _range(value: Any) -> list[int] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return [int(value[0]), int(value[1])]
    return None


def _ms(us: Any) -> float | None:
    return float(us) / 1000.0 if isinstance(us, (int, float)) and us > 0 else None


def profile_to_result(spec: JobSpec, profile: dict[str, Any], entry: dict[str, Any], started: float) -> JobResult:
    """A profile as `InferenceJob.download_profile()` returns it -> the job's JobResult (module doc)."""
    summary = profile.get("execution_summary") or {}
    layers = profile.get("execution_detail") or []
    unit = entry.get("unit", "gpu")
    runs = [float(t) / 1000.0 for t in summary.get("all_inference_times") or [] if isinstance(t, (int, float))]
    estimated = _ms(summary.get("estimated_inference_time"))
    samples = runs or ([estimated] if estimated is not None else [])
    if not samples:
        return JobResult.failure(spec.job_id, "parse", f"AI Hub job {entry.get('hub_job_id')}: the profile has no "
                                 "inference time", started_at=started, ended_at=time.time(), extra={"aihub": _public(entry)})
    ranges = {k[:-len("_range")]: _range(v) for k, v in summary.items() if k.endswith("_range") and _range(v)}
    peak = ranges.get("inference_memory_peak")
    op_ms = {c: 0.0 for c in OP_CATEGORIES}
    units: Counter[str] = Counter()
    off_unit: list[dict[str, Any]] = []
    for layer in layers:
        cu = str(layer.get("compute_unit", "")).lower()
        units[cu] += 1
        t = layer.get("execution_time")
        if isinstance(t, (int, float)):
            op_ms[map_op_category(str(layer.get("type", "")))] += t / 1000.0
        if cu and cu != unit:
            off_unit.append({"name": layer.get("name"), "type": layer.get("type"), "compute_unit": cu})
    label = unit
    if off_unit:
        split = ", ".join(f"{n} layers on the {u.upper()}" for u, n in units.most_common())
        label = f"{unit} (partial: {split})"
    art = entry.get("artifact") or {}
    memory = MemoryFigures(
        weight_bytes=int(art["weight_bytes"]) if isinstance(art.get("weight_bytes"), (int, float)) else None,
        tensor_bytes_planned=(int(art["planned_tensor_bytes"]) if isinstance(art.get("planned_tensor_bytes"), (int, float))
                              else None),
        peak_rss_bytes=peak[1] if peak else None)
    execution = Execution(runtime=spec.options.runtime, accelerator=unit, unit_asked=unit, unit_used=label,
                          delegation=aihub_delegation(dict(units), unit), timing_method="aihub_profile",
                          latency_summary_ms=LatencySummary(estimated=estimated),
                          na_flags=list(art.get("na_flags") or []))
    extra: dict[str, Any] = {
        "aihub": {**_public(entry), "estimated_inference_ms": estimated, "runs": len(runs),
                  "first_load_ms": _ms(summary.get("first_load_time")), "warm_load_ms": _ms(summary.get("warm_load_time")),
                  "compile_ms": _ms(summary.get("compile_time")), "memory_ranges_bytes": ranges,
                  "peak_memory_note": "memory.peak_rss_bytes is the upper end of AI Hub's inference peak-memory range",
                  "layer_units": dict(units), "layers_off_unit": off_unit[:50], "layers": len(layers),
                  "fully_on_unit": not off_unit},
        "artifact": {k: art.get(k) for k in ("source", "key", "path")} | {"sha256": entry.get("sha256")},
    }
    import harness

    return JobResult(job_id=spec.job_id, status="ok", samples_ms=samples, init_ms=_ms(summary.get("first_load_time")),
                     execution=execution, memory=memory, op_times_ms=op_ms if layers else {},
                     versions={"harness": harness.__version__, "qai_hub": _qai_hub_version()},
                     started_at=started, ended_at=time.time(), extra=extra)


def _qai_hub_version() -> str:
    try:
        import qai_hub

        return str(qai_hub.__version__)
    except Exception:  # noqa: BLE001
        return ""
