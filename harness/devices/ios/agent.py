"""The agent app's side of the contract: the JobSpec it reads, its container's layout, and the hashes both
sides compute (an .ipa's, an .mlpackage tree's). Pure functions; JobFailure (input) for what iOS cannot run.
"""
from __future__ import annotations

import hashlib
import os
import plistlib
import re
import zipfile
from pathlib import Path
from typing import Any

from harness.devices.base import JobFailure
from harness.devices.ios.settings import AGENT_HINT, IOSConfigError
from harness.protocol import JobSpec
from harness.runtimes import UnknownRuntimeError, get_runtime

COMPUTE_UNITS = ("cpuAndGPU", "all", "cpuOnly", "cpuAndNeuralEngine")
DEFAULT_COMPUTE_UNITS = "cpuAndGPU"
E2E_COMPONENTS = ("text_encoder", "unet", "vae_decoder")
OPTION_KEYS = ("mlpackage", "mlpackages", "compute_units")
# The protocol version the agent app speaks (Protocol.swift's schemaVersion): its job.json is written at it
# (the JobSpec is the same in versions 1 and 2) and its result.json is upgraded as it is parsed.
AGENT_SCHEMA_VERSION = 1

# The app's container as house_arrest vends it (AFC paths) and as the app sees it (relative paths).
JOBS_DIR = "/Documents/jobs"
MODELS_DIR = "/Documents/models"
AGENT_MARK = "/Documents/harness/agent.sha256"
STATUS, RESULT, DONE = "status.json", "result.json", "DONE"
STDERR = "stderr.txt"  # the agent app's stderr (it redirects it there when a job starts)


def remote_model(sha256: str) -> str:
    """Where an .mlpackage goes in the container (AFC path); the app resolves it without the leading '/'."""
    return f"{MODELS_DIR}/{sha256[:16]}.mlpackage"


def ipa_info(path: str | os.PathLike) -> dict[str, Any]:
    """CFBundleIdentifier, CFBundleVersion and CFBundleShortVersionString of an .ipa (Payload/*.app/Info.plist)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if re.fullmatch(r"Payload/[^/]+\.app/Info\.plist", n)]
            if not names:
                raise IOSConfigError(f"{path}: not an iOS app archive (no Payload/NAME.app/Info.plist); {AGENT_HINT}")
            info = plistlib.loads(zf.read(names[0]))
    except (OSError, zipfile.BadZipFile, plistlib.InvalidFileException) as exc:
        raise IOSConfigError(f"{path}: cannot read the agent IPA ({exc}); {AGENT_HINT}") from None
    if not info.get("CFBundleIdentifier"):
        raise IOSConfigError(f"{path}: Info.plist has no CFBundleIdentifier")
    return {k: info.get(k) for k in ("CFBundleIdentifier", "CFBundleVersion", "CFBundleShortVersionString")}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(path: Path) -> str:
    """The hash of a file, or of a directory tree: SHA-256 over one "relative/path\\0<file sha256>\\n"
    line per file, sorted by path (the agent app computes the same: JobRunner.swift treeSHA256)."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for rel, p in sorted((q.relative_to(path).as_posix(), q) for q in path.rglob("*") if q.is_file()):
        h.update(f"{rel}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def tree_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(q.stat().st_size for q in path.rglob("*") if q.is_file())


def compute_units_of(spec: JobSpec) -> str:
    units = spec.options.extra.get("compute_units") or spec.options.compute_units or DEFAULT_COMPUTE_UNITS
    if units not in COMPUTE_UNITS:
        raise JobFailure("input", f"compute units {units!r} are not Core ML's; use one of {', '.join(COMPUTE_UNITS)}")
    return str(units)


def check_runtime(spec: JobSpec) -> None:
    """iOS runs Core ML only (harness.runtimes); `torch` (the suite default, which phones cannot run)
    means Core ML."""
    try:
        get_runtime(spec.options.runtime).on("ios")
    except UnknownRuntimeError as exc:
        raise JobFailure("input", f"{exc} (or leave the suite's torch, which means Core ML on a phone)") from None


def device_spec(spec: JobSpec, model_paths: dict[str, str], heartbeat_s: float,
                token_ids: list[list[int]] | None = None) -> JobSpec:
    """The JobSpec the agent app reads: runtime coreml, its compute units, container-relative model
    paths (`artifact` is the UNet), the heartbeat interval and, for e2e, the prompt's token ids."""
    extra = {k: v for k, v in spec.options.extra.items() if k not in ("mlpackage", "mlpackages")}
    extra["models"] = dict(model_paths)
    extra["heartbeat_s"] = heartbeat_s
    if token_ids is not None:
        extra["token_ids"] = token_ids
    options = spec.options.model_copy(update={"runtime": "coreml", "compute_units": compute_units_of(spec),
                                              "extra": extra})
    return spec.model_copy(update={"options": options, "artifact": model_paths.get("unet"),
                                   "schema_version": AGENT_SCHEMA_VERSION})


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:120] or "_"
