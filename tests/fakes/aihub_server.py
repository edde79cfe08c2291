"""A local stand-in for Qualcomm AI Hub's REST API, for tests: the real `qai-hub` client (0.56.0) runs
against it unchanged (`qai-hub configure --api_token T --api_url http://127.0.0.1:PORT`, or a
`qai_hub.ClientConfig(api_token=..., api_url=...)`).

What it speaks (the requests as qai_hub/public_rest_api.py and api_utils.py send them; every body is
the client's own protobuf, `qai_hub.public_api_pb2`, Content-Type application/x-protobuf):

- auth: every /api/v1/ request carries `Authorization: token <API token>`; a wrong or expired token
  gets 401 {"detail": ...} (the client turns it into UserError "Failed to authenticate").
- GET  /api/v1/devices/?name=&os=&attributes=&select=   DeviceList (name exact, every attribute held;
  select: at most one device).
- POST /api/v1/models/                                   Model -> CreateUpdateResponse(id)
- GET  /api/v1/models/<id>/multipart_upload/?file_size=  FileUploadResponse.multipart_url: presigned-style
  part URLs on this server (`PUT /upload/<id>/<part>`, no auth, answers an ETag), then
- POST /api/v1/models/<id>/multipart_upload/            FileMultipartUploadComplete(upload_id, etags)
- GET  /api/v1/models/<id>/                              Model (404 for an unknown id)
- POST /api/v1/jobs/                                     Job(inference_job=InferenceJob(model, device, options,
  is_profiling_on)) -> CreateUpdateResponse(id). Rejected with 400 as the Hub would: unknown device,
  a model not uploaded, a device without framework:tflite for a .tflite, an unknown option or a
  `--compute_unit` value other than all|npu|gpu|cpu (comma lists allowed).
- GET  /api/v1/jobs/<id>/                                Job; each poll moves the job one state on
  (CREATED -> PROVISIONING_DEVICE -> MEASURING_PERFORMANCE -> DONE or FAILED).
- GET  /api/v1/jobs/<id>/result/                         JobResult(inference_job_result.detail=ProfileDetail)

The profile (ProfileDetail 1.2: estimated time, all per-run times, cold/warm load, memory ranges, one
LayerDetail per operator of the uploaded .tflite with its compute unit and time) is STAND-IN DATA: the
latency is a fixed figure per device and compute unit (PROFILES), not a measurement of the uploaded
file. The one published figure is SD 1.5 w8a16 UNet on the NPU of the Galaxy S24, 76.7 ms
(quic/ai-hub-models perf.yaml, as cited in issue 17); the GPU and CPU figures are invented multiples
of it. Ops listed in `cpu_fallback_ops` are reported on the CPU (an NPU/GPU that refused them).

Faults (constructor arguments, changeable at any time): `fail_devices` {device name: reason} (the
job FAILS with that reason, e.g. a compile failure), `unavailable_devices` (jobs FAIL "device
unavailable"), `hang_devices` (jobs never leave MEASURING_PERFORMANCE: a client-side timeout),
`http_5xx` (the next N /api requests answer 503; the client retries them), `token_expired` (401).
Counters: `requests` (method, path) in order, `uploads` (completed model uploads), `jobs`.

    python tests/fakes/aihub_server.py --port 8765 --token demo   # prints its URL, serves until Ctrl-C
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import qai_hub.public_api_pb2 as pb

STANDIN_NOTE = ("stand-in figures of a local AI Hub stand-in (tests/fakes/aihub_server.py), not a measurement: "
                "76.7 ms is the published SD 1.5 w8a16 UNet NPU figure on the Galaxy S24; GPU/CPU are invented")

# The Hub's own device names and attributes (as `qai-hub list-devices` shows them).
DEVICES: list[dict[str, Any]] = [
    {"name": "Samsung Galaxy S24 (Family)", "os": "14", "soc": "Snapdragon® 8 Gen 3",
     "attributes": ["chipset:qualcomm-snapdragon-8gen3", "format:phone", "framework:qnn", "framework:tflite",
                    "framework:onnx", "os:android", "vendor:samsung", "htp-version:v75", "hexagon:v75"]},
    {"name": "Samsung Galaxy S23 (Family)", "os": "13", "soc": "Snapdragon® 8 Gen 2",
     "attributes": ["chipset:qualcomm-snapdragon-8gen2", "format:phone", "framework:qnn", "framework:tflite",
                    "framework:onnx", "os:android", "vendor:samsung", "htp-version:v73", "hexagon:v73"]},
    {"name": "Snapdragon 8 Elite QRD", "os": "15", "soc": "Snapdragon® 8 Elite",
     "attributes": ["chipset:qualcomm-snapdragon-8-elite", "format:phone", "framework:qnn", "framework:tflite",
                    "framework:onnx", "os:android", "vendor:qualcomm", "htp-version:v79", "hexagon:v79"]},
    {"name": "Snapdragon X Elite CRD", "os": "11", "soc": "Snapdragon® X Elite",
     "attributes": ["chipset:qualcomm-snapdragon-x-elite", "format:compute", "framework:qnn", "framework:onnx",
                    "os:windows", "vendor:qualcomm"]},
]

# Estimated inference time in ms per (device, unit); see STANDIN_NOTE.
PUBLISHED_S24_NPU_MS = 76.7
PROFILES: dict[tuple[str, str], float] = {}
for _dev, _scale in (("Samsung Galaxy S24 (Family)", 1.0), ("Samsung Galaxy S23 (Family)", 1.3),
                     ("Snapdragon 8 Elite QRD", 0.8), ("Snapdragon X Elite CRD", 0.9)):
    for _unit, _f in (("npu", 1.0), ("gpu", 4.0), ("cpu", 30.0)):
        PROFILES[(_dev, _unit)] = round(PUBLISHED_S24_NPU_MS * _scale * _f, 1)

KNOWN_OPTIONS = {"--compute_unit", "--max_profiler_iterations", "--max_profiler_time", "--tflite_delegates",
                 "--tflite_options", "--qnn_options", "--dequantize_outputs"}
COMPUTE_UNITS = ("all", "npu", "gpu", "cpu")
STATES = [pb.JOB_STATE_CREATED, pb.JOB_STATE_PROVISIONING_DEVICE, pb.JOB_STATE_MEASURING_PERFORMANCE]


class BadRequest(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class _Model:
    id: str
    name: str
    model_type: int
    data: bytearray = field(default_factory=bytearray)
    parts: dict[int, bytes] = field(default_factory=dict)
    complete: bool = False
    ops: list[str] = field(default_factory=list)  # the .tflite's operators, read once at upload


@dataclass
class _Job:
    id: str
    model: _Model
    device: dict[str, Any]
    options: str
    name: str
    compute_unit: str
    created: float
    polls: int = 0
    state: int = pb.JOB_STATE_CREATED
    failure: str | None = None


def parse_options(options: str) -> dict[str, str]:
    """The job's options string as the Hub reads it: `--flag value` pairs; 400 for anything unknown."""
    words = options.split()
    out: dict[str, str] = {}
    i = 0
    while i < len(words):
        flag = words[i]
        if flag not in KNOWN_OPTIONS:
            raise BadRequest(400, f"Invalid option '{flag}'. Valid options: {', '.join(sorted(KNOWN_OPTIONS))}")
        if i + 1 >= len(words):
            raise BadRequest(400, f"Option '{flag}' requires a value")
        out[flag] = words[i + 1]
        i += 2
    if "--compute_unit" in out:
        units = out["--compute_unit"].split(",")
        bad = [u for u in units if u not in COMPUTE_UNITS]
        if bad:
            raise BadRequest(400, f"Invalid value '{out['--compute_unit']}' for --compute_unit: "
                                  f"expected a comma-separated list of {', '.join(COMPUTE_UNITS)}")
    return out


def _op_types(data: bytes) -> list[str]:
    """The builtin operator names of a .tflite's main graph, in execution order (empty if unreadable)."""
    try:
        from ai_edge_litert import schema_py_generated as schema

        model = schema.Model.GetRootAs(bytes(data), 0)
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
                 for i in range(model.OperatorCodesLength())]
        graph = model.Subgraphs(0)
        return [names.get(codes[graph.Operators(i).OpcodeIndex()], "CUSTOM") for i in range(graph.OperatorsLength())]
    except Exception:  # noqa: BLE001 - a file the stand-in cannot read still profiles, without layers
        return []


class FakeAiHub:
    """The stand-in: `with FakeAiHub(token="t") as hub: hub.url`. Thread-safe; faults as attributes."""

    def __init__(self, token: str = "test-token", host: str = "127.0.0.1", port: int = 0,
                 fail_devices: dict[str, str] | None = None, unavailable_devices: set[str] | None = None,
                 hang_devices: set[str] | None = None, http_5xx: int = 0, token_expired: bool = False,
                 cpu_fallback_ops: set[str] | None = None):
        self.token = token
        self.fail_devices = dict(fail_devices or {})
        self.unavailable_devices = set(unavailable_devices or ())
        self.hang_devices = set(hang_devices or ())
        self.http_5xx = http_5xx
        self.token_expired = token_expired
        self.cpu_fallback_ops = set(cpu_fallback_ops or ())
        self.models: dict[str, _Model] = {}
        self.jobs: dict[str, _Job] = {}
        self.requests: list[tuple[str, str]] = []
        self.answered_5xx = 0
        self.uploads = 0
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeAiHub":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-aihub")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeAiHub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):07d}"

    # ------------------------------------------------------------------ the API

    def _device_list(self, query: dict[str, list[str]]) -> pb.DeviceList:
        name = (query.get("name") or [""])[0]
        os_ = (query.get("os") or [""])[0]
        attrs = query.get("attributes") or []
        select = (query.get("select") or ["False"])[0].lower() == "true"
        found = [d for d in DEVICES if (not name or d["name"] == name) and (not os_ or os_.startswith("[")
                 or d["os"] == os_) and all(a in d["attributes"] for a in attrs)]
        if select:
            found = found[:1]
        out = pb.DeviceList(total_query_count=len(found))
        for d in found:
            out.devices.append(pb.Device(name=d["name"], os=d["os"], attributes=d["attributes"],
                                         soc_description=d["soc"]))
        return out

    def _create_job(self, body: bytes) -> pb.CreateUpdateResponse:
        job_pb = pb.Job()
        job_pb.ParseFromString(body)
        if job_pb.WhichOneof("job") != "inference_job":
            raise BadRequest(400, "this stand-in runs inference (profile) jobs only")
        ij = job_pb.inference_job
        model = self.models.get(ij.model.model_id)
        if model is None:
            raise BadRequest(404, f"Model ID '{ij.model.model_id}' could not be found.")
        if not model.complete:
            raise BadRequest(400, f"Model {model.id} has no completed upload")
        devices = [d for d in DEVICES if d["name"] == ij.device.name and (not ij.device.os or d["os"] == ij.device.os)]
        if not devices:
            raise BadRequest(400, f"Device '{ij.device.name}' (os '{ij.device.os}') is not available.")
        device = devices[0]
        if model.model_type == pb.MODEL_TYPE_TFLITE and "framework:tflite" not in device["attributes"]:
            raise BadRequest(400, f"device {device['name']} does not support TFLite model input")
        opts = parse_options(ij.options)
        unit = opts.get("--compute_unit", "all").split(",")[0]
        job = _Job(self._new_id("j"), model, device, ij.options, ij.name, "npu" if unit == "all" else unit, time.time())
        self.jobs[job.id] = job
        resp = pb.CreateUpdateResponse(id=job.id)
        resp.creation_time.FromSeconds(int(job.created))
        return resp

    def _advance(self, job: _Job) -> None:
        name = job.device["name"]
        if job.state in (pb.JOB_STATE_DONE, pb.JOB_STATE_FAILED):
            return
        job.polls += 1
        if job.polls < len(STATES):
            job.state = STATES[job.polls]
            return
        if name in self.hang_devices:
            job.state = pb.JOB_STATE_MEASURING_PERFORMANCE
            return
        if name in self.unavailable_devices:
            job.state, job.failure = pb.JOB_STATE_FAILED, (
                f"Device '{name}' is unavailable: no device of this type is online right now. Please try again later.")
        elif name in self.fail_devices:
            job.state, job.failure = pb.JOB_STATE_FAILED, self.fail_devices[name]
        else:
            job.state = pb.JOB_STATE_DONE

    def _job_pb(self, job: _Job) -> pb.Job:
        ij = pb.InferenceJob(inference_job_id=job.id, name=job.name, job_state=job.state, options=job.options,
                             is_profiling_on=True,
                             model=pb.Model(model_id=job.model.id, name=job.model.name, model_type=job.model.model_type),
                             device=pb.Device(name=job.device["name"], os=job.device["os"],
                                              attributes=job.device["attributes"]))
        ij.creation_time.FromSeconds(int(job.created))
        if job.failure:
            ij.failure_reason = job.failure
        out = pb.Job(inference_job=ij)
        if job.state == pb.JOB_STATE_FAILED:
            out.failure_type = (pb.JOB_FAILURE_TYPE_CLOUD_RESOURCE_MISSING if job.device["name"] in self.unavailable_devices
                                else pb.JOB_FAILURE_TYPE_MODEL_INVALID)
        return out

    def _profile(self, job: _Job) -> pb.ProfileDetail:
        est_ms = PROFILES.get((job.device["name"], job.compute_unit), PUBLISHED_S24_NPU_MS)
        rng = random.Random(hashlib.sha256(bytes(job.model.data)).hexdigest() + job.device["name"] + job.compute_unit)
        runs = [round(est_ms * 1000 * rng.uniform(0.97, 1.05)) for _ in range(100)]
        d = pb.ProfileDetail(major_version=1, minor_version=2, execution_time=int(est_ms * 1000),
                             cold_load_time=int(est_ms * 1000 * 40), warm_load_time=int(est_ms * 1000 * 8),
                             compile_time=0, after_execution_peak_memory=len(job.model.data) * 2 + 64 * 2**20,
                             after_cold_load_peak_memory=len(job.model.data) * 3 + 80 * 2**20,
                             after_warm_load_peak_memory=len(job.model.data) * 2 + 70 * 2**20)
        d.all_execution_times.extend(runs)
        d.all_cold_load_times.append(d.cold_load_time)
        d.all_warm_load_times.append(d.warm_load_time)
        size = len(job.model.data)
        for mem, lo, hi in ((d.execution_memory, size, size * 2), (d.cold_load_memory, size * 2, size * 3),
                            (d.warm_load_memory, size, size * 2)):
            mem.increase.lower, mem.increase.upper = 0, 4 * 2**20
            mem.peak.lower, mem.peak.upper = lo + 60 * 2**20, hi + 64 * 2**20
        unit_enum = {"npu": pb.COMPUTE_UNIT_NPU, "gpu": pb.COMPUTE_UNIT_GPU, "cpu": pb.COMPUTE_UNIT_CPU}[job.compute_unit]
        ops = job.model.ops
        for i, op in enumerate(ops):
            cu = pb.COMPUTE_UNIT_CPU if op in self.cpu_fallback_ops else unit_enum
            d.layer_details.append(pb.LayerDetail(
                name=f"{op.lower()}_{i}", id=str(i), layer_type_name=op, compute_unit=cu,
                delegate_name={pb.COMPUTE_UNIT_NPU: "QNN", pb.COMPUTE_UNIT_GPU: "GPUV2"}.get(cu, ""),
                execution_time=max(1, round(est_ms * 1000 / len(ops) * rng.uniform(0.5, 1.5)))))
        d.tool_versions.append(pb.ToolVersion(name="standin", version="aihub_server.py"))
        return d

    # ------------------------------------------------------------------ HTTP

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes = b"", ctype: str = "application/x-protobuf",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    return self.rfile.read(n)
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                return b""

            def _dispatch(self, method: str) -> None:
                url = urlparse(self.path)
                parts = [p for p in url.path.split("/") if p]
                body = self._body()
                with hub._lock:
                    hub.requests.append((method, url.path))
                try:
                    if parts[:1] == ["upload"]:  # the presigned part URL: no API auth, as S3
                        return self._upload(method, parts, body)
                    if parts[:2] != ["api", "v1"]:
                        raise BadRequest(404, "not found")
                    with hub._lock:
                        if hub.http_5xx > 0:
                            hub.http_5xx -= 1
                            hub.answered_5xx += 1
                            return self._send(503, b"<html>503 Service Unavailable</html>", "text/html")
                    auth = self.headers.get("Authorization", "")
                    if hub.token_expired or auth != f"token {hub.token}":
                        detail = "Token has expired." if hub.token_expired else "Invalid token."
                        return self._send(401, json.dumps({"detail": detail}).encode(), "application/json")
                    with hub._lock:
                        msg = self._api(method, parts[2:], parse_qs(url.query), body)
                    return self._send(200, msg.SerializeToString())
                except BadRequest as exc:
                    return self._send(exc.status, json.dumps({"detail": exc.detail}).encode(), "application/json")

            def _upload(self, method: str, parts: list[str], body: bytes) -> None:
                if method != "PUT" or len(parts) != 3:
                    raise BadRequest(405, "PUT /upload/<model>/<part>")
                with hub._lock:
                    model = hub.models.get(parts[1])
                    if model is None:
                        raise BadRequest(403, "<Error><Code>AccessDenied</Code><Message>no such upload</Message></Error>")
                    model.parts[int(parts[2])] = body
                self._send(200, b"", "text/plain", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

            def _api(self, method: str, path: list[str], query: dict[str, list[str]], body: bytes):
                if method == "GET" and path == ["users", "auth", "user"]:
                    return pb.User(id=1, email="standin@example.com")
                if method == "GET" and path == ["devices"]:
                    return hub._device_list(query)
                if method == "POST" and path == ["models"]:
                    m = pb.Model()
                    m.ParseFromString(body)
                    model = _Model(hub._new_id("m"), m.name, m.model_type)
                    hub.models[model.id] = model
                    return pb.CreateUpdateResponse(id=model.id)
                if len(path) >= 2 and path[0] == "models":
                    model = hub.models.get(path[1])
                    if model is None:
                        raise BadRequest(404, f"Model ID '{path[1]}' could not be found.")
                    if method == "GET" and len(path) == 2:
                        return pb.Model(model_id=model.id, name=model.name, model_type=model.model_type,
                                        file_upload_complete=model.complete)
                    if path[2:] == ["multipart_upload"] and method == "GET":
                        size = int((query.get("file_size") or ["0"])[0])
                        part = 5 * 2**20
                        n = max(1, -(-size // part))
                        return pb.FileUploadResponse(multipart_url=pb.FileMultipartUploadURL(
                            urls=[f"{hub.url}/upload/{model.id}/{i}" for i in range(n)],
                            upload_id=f"up-{model.id}", max_part_size=part))
                    if path[2:] == ["multipart_upload"] and method == "POST":
                        done = pb.FileMultipartUploadComplete()
                        done.ParseFromString(body)
                        expect = [f'"{hashlib.md5(model.parts[i]).hexdigest()}"' for i in sorted(model.parts)]
                        if done.upload_id != f"up-{model.id}" or list(done.etags) != expect:
                            raise BadRequest(400, "multipart upload: the ETags do not match the uploaded parts")
                        model.data = bytearray(b"".join(model.parts[i] for i in sorted(model.parts)))
                        model.complete = True
                        model.ops = _op_types(model.data)
                        hub.uploads += 1
                        return pb.CreateUpdateResponse(id=model.id)
                if method == "POST" and path == ["jobs"]:
                    return hub._create_job(body)
                if method == "GET" and len(path) >= 2 and path[0] == "jobs":
                    job = hub.jobs.get(path[1])
                    if job is None:
                        raise BadRequest(404, f"Job ID '{path[1]}' could not be found.")
                    if len(path) == 2:
                        hub._advance(job)
                        return hub._job_pb(job)
                    if path[2:] == ["result"]:
                        if job.state != pb.JOB_STATE_DONE:
                            raise BadRequest(400, f"Job {job.id} has no result (state {pb.JobState.Name(job.state)})")
                        return pb.JobResult(inference_job_result=pb.InferenceJobResult(
                            inference_job_id=job.id, detail=hub._profile(job)))
                raise BadRequest(404, f"no such endpoint: {method} /api/v1/{'/'.join(path)}/")

            def do_GET(self) -> None:  # noqa: N802
                self._dispatch("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._dispatch("POST")

            def do_PUT(self) -> None:  # noqa: N802
                self._dispatch("PUT")

            def do_PATCH(self) -> None:  # noqa: N802
                self._dispatch("PATCH")

        return Handler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A local stand-in for Qualcomm AI Hub's REST API (tests, demos)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--token", default="standin-token", help="the API token it accepts")
    p.add_argument("--fail", action="append", default=[], metavar="DEVICE=REASON", help="jobs on DEVICE fail")
    p.add_argument("--unavailable", action="append", default=[], metavar="DEVICE")
    p.add_argument("--hang", action="append", default=[], metavar="DEVICE", help="jobs on DEVICE never finish")
    p.add_argument("--http-5xx", type=int, default=0, help="answer the next N API requests with 503")
    p.add_argument("--cpu-fallback-op", action="append", default=[], metavar="OP",
                   help="report layers of this TFLite op on the CPU (e.g. GELU)")
    args = p.parse_args(argv)
    hub = FakeAiHub(token=args.token, port=args.port, fail_devices=dict(f.split("=", 1) for f in args.fail),
                    unavailable_devices=set(args.unavailable), hang_devices=set(args.hang), http_5xx=args.http_5xx,
                    cpu_fallback_ops=set(args.cpu_fallback_op))
    print(hub.url, flush=True)
    print(f"# {STANDIN_NOTE}\n# configure: qai-hub configure --api_token {args.token} --api_url {hub.url}", flush=True)
    try:
        hub._server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["FakeAiHub", "DEVICES", "PROFILES", "STANDIN_NOTE"]
