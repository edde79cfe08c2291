"""Model variants as device artifacts: .tflite (litert-torch) and .mlpackage (coremltools), cached.

    from harness.export import ensure_artifact
    art = ensure_artifact(ModelRef(name="sd14"), ladder_flags("+flash_attention"), "tflite")
    art.path, art.sha256, art.meta["na_flags"], art.meta["reference"]["rel_error"]

`ensure_artifact` returns the cached artifact when its key is in the cache and its files still hash
to the recorded sha256; otherwise it converts in a subprocess (`harness.export.worker`, one at a
time: a lock file in the cache makes concurrent callers wait), checks the result against the
PyTorch reference, and only then puts it into the cache. How each flag maps onto each format:
`harness.export.mapping` (README.md, "Artifacts"). Reading an artifact back: `harness.export.inspect`.

Components (`COMPONENTS`, keyword `component=`): "unet" (default), "text_encoder" (the CLIP text
model; the flags do not apply, one artifact for every row), "vae_decoder" (flags apply to its
GroupNorm, attention and 3x3 convs). Each artifact's inputs, in signature order (what a runner feeds):

    unet          sample [B,4,h,w] f32, timestep [] f32, encoder_hidden_states [B,T,D] f32
                  (.tflite signature names args_0, args_1, args_2) -> noise prediction [B,4,h,w]
    text_encoder  input_ids [B,T] int32 (B = 2: unconditional, conditional; T = 77 for sd14)
                  -> last_hidden_state [B,T,D] f32 (D = 768 for sd14)
    vae_decoder   latents [1,4,h,w] f32 (h = w = 64 for sd14, 512x512 images; the decoder divides by
                  the VAE scaling factor itself) -> image [1,3,8h,8w] f32 in [-1, 1]

.mlpackage inputs carry the same names; the .tflite output is `output_0`. Weight dtypes (`DTYPES`):
fp16, fp32, int8 (weight-only, per channel; activations stay float). Models: built-in configs,
`unet_config` and `factory` models (UNet only; see `cache` for what their keys hash).
"""
from __future__ import annotations

from harness.models.configs import MODELS

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.export import cache as _cache
from harness.export.mapping import (
    COMPONENTS, FORMATS, MAPPING, NA_FLAGS, UnknownComponentError, UnknownFormatError, check_component,
    check_format, effective_flags, na_flags,
)
from harness.protocol import ModelRef
from harness.variants import LADDER, Flags

__all__ = [
    "FORMATS", "Artifact", "ExportError", "ReferenceMismatchError", "UnknownFormatError",
    "ensure_artifact", "lookup_artifact", "variant_name", "effective_flags", "na_flags", "MAPPING",
    "NA_FLAGS", "DEFAULT_REL_TOLERANCE", "PlannedArtifact", "plan_artifacts", "COMPONENTS", "DTYPES",
    "UnknownComponentError",
]

# Max |artifact - reference| / max |reference| an artifact may show before it is refused, by weight
# dtype. fp16 weights round every weight to 11 significant bits: ~1e-3 on the small configs. int8
# weight-only (per-channel symmetric, 8 bits) measured on the tiny config (.tflite, random weights):
# UNet 1.5e-2, VAE decoder 2.0e-2, text encoder 1.9e-2; 1e-1 leaves 5x margin for deeper models
# (errors of per-layer rounding add up with depth; full-size errors could not be measured here).
DEFAULT_REL_TOLERANCE: dict[str, float] = {"fp16": 5e-2, "fp32": 1e-3, "int8": 1e-1}
DTYPES = ("fp16", "fp32", "int8")
ProgressFn = Callable[[str, int, int], None]
_REPO = Path(__file__).resolve().parents[2]


class ExportError(RuntimeError):
    """A variant that could not be turned into an artifact; the message names the variant."""

    def __init__(self, message: str, *, variant: str = "", fmt: str = "", kind: str = "convert",
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.variant, self.fmt, self.kind, self.detail = variant, fmt, kind, detail


class ReferenceMismatchError(ExportError):
    """The artifact was built but disagrees with the PyTorch reference; it was not cached."""


@dataclass(frozen=True)
class Artifact:
    """A device artifact in the cache."""

    path: Path  # the .tflite file or the .mlpackage directory
    key: str  # content hash key (model config, weights, flags as realized, format, dtype, versions)
    fmt: str  # tflite | coreml
    sha256: str  # of the file (of the directory's files for .mlpackage), for push-if-differs
    size_bytes: int
    meta: dict[str, Any] = field(default_factory=dict)  # versions, reference check, op histogram, na_flags, ...
    cached: bool = False  # True when this call found it in the cache (nothing was converted)

    @property
    def na_flags(self) -> list[str]:
        return list(self.meta.get("na_flags", []))


def variant_name(flags: Flags) -> str:
    """The ladder step these flags are, else 'key=value,...' of the flags that differ from baseline."""
    for name, ladder in LADDER:
        if ladder == flags:
            return name
    base = Flags()
    diff = [f"{k}={v}" for k, v in flags.to_dict().items() if getattr(base, k) != v]
    return ",".join(diff) or "baseline"


def _model_config(model: ModelRef, component: str = "unet"):
    """The ModelConfig of a built-in or unet_config model; for a factory model, a dict naming the
    factory and its declared input shapes (what the key's `model` field holds)."""
    from harness.models import loaders
    from harness.models.configs import get_model_config

    check_component(component)
    if model.kind != "builtin" and component != "unet":
        raise ExportError(f"component {component!r}: a {model.kind} model defines a UNet only; the text encoder "
                          f"and VAE decoder export for the built-in models ({', '.join(MODELS)})", kind="input")
    try:
        if model.kind == "factory":
            shapes = loaders.factory_input_shapes(model.factory, model.seed)
            cfg: Any = {"factory": model.factory, "input_shapes": {k: list(v) for k, v in shapes.items()}}
        elif model.kind == "unet_config":
            cfg = loaders.config_model_config(model)
        else:
            cfg = get_model_config(model.name)
    except KeyError as exc:
        raise ExportError(str(exc.args[0]), kind="input") from None
    except loaders.ModelLoadError as exc:
        raise ExportError(str(exc), kind="input") from None
    need = {"text_encoder": "text_encoder", "vae_decoder": "vae"}.get(component)
    if need and not getattr(cfg, need, None):
        raise ExportError(f"component {component!r}: model {model.name!r} has no {need} config "
                          "(harness.models.configs)", kind="input")
    return cfg


def _check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ExportError(f"artifact weights are {', '.join(DTYPES)}, not {dtype!r}; pick one with --dtype",
                          kind="input")
    return dtype


def _artifact(entry: _cache.Entry, meta: dict[str, Any], flags: Flags, fmt: str, variant: str,
              cached: bool, component: str = "unet") -> Artifact:
    call_meta = {**meta, "requested_flags": flags.to_dict(), "na_flags": na_flags(flags, fmt, component),
                 "variant": variant, "component": component}
    return Artifact(path=entry.artifact_path(meta), key=entry.key, fmt=fmt, sha256=meta["sha256"],
                    size_bytes=int(meta["size_bytes"]), meta=call_meta, cached=cached)


def _judge(meta: dict[str, Any], tolerance: float, variant: str, fmt: str, path: Path) -> None:
    """Raise ReferenceMismatchError when a cached artifact's recorded error exceeds `tolerance`."""
    ref = meta.get("reference", {})
    rel = ref.get("rel_error")
    if rel is not None and rel > tolerance:
        raise ReferenceMismatchError(
            f"variant {variant!r} ({fmt}): the cached artifact {path.name} differs from the PyTorch "
            f"reference by {rel:.3g} (relative), above the tolerance {tolerance:g}",
            variant=variant, fmt=fmt, kind="check")


def lookup_artifact(model: ModelRef, flags: Flags, fmt: str, dtype: str = "fp16",
                    cache_dir: Path | None = None, *, component: str = "unet") -> tuple[str, Artifact | None, str]:
    """(key, the cached artifact or None, why not cached) without converting anything."""
    check_format(fmt)
    check_component(component)
    _check_dtype(dtype)
    cfg = _model_config(model, component)
    root = _cache.cache_root(cache_dir)
    key, _ = _cache.artifact_key(model, cfg, flags, fmt, dtype, component=component)
    entry = _cache.entry(root, key)
    meta, why = entry.verify()
    if meta is None:
        return key, None, why
    return key, _artifact(entry, meta, flags, fmt, variant_name(flags), cached=True, component=component), ""


def ensure_artifact(model: ModelRef, flags: Flags, fmt: str, dtype: str = "fp16",
                    cache_dir: Path | None = None, progress: ProgressFn | None = None, *,
                    rel_tolerance: float | None = None, variant: str | None = None,
                    timeout_s: float | None = None, component: str = "unet") -> Artifact:
    """The artifact of `component` (COMPONENTS) of `model` under `flags` in format `fmt` with `dtype`
    weights: from the cache
    when it is there and intact, else converted (in a subprocess, one conversion at a time), checked
    against the PyTorch reference (max relative error <= rel_tolerance, default by dtype) and cached.

    Raises UnknownFormatError / UnknownComponentError for an unknown format / component, ExportError (naming the variant, with the
    converter's message) when the conversion fails, ReferenceMismatchError when the artifact
    disagrees with the reference (it is not cached).
    """
    check_format(fmt)
    check_component(component)
    _check_dtype(dtype)
    if not isinstance(flags, Flags):
        raise TypeError(f"ensure_artifact needs harness.variants.Flags, got {type(flags).__name__}")
    progress = progress or (lambda phase, done, total: None)
    variant = variant or variant_name(flags)
    tolerance = DEFAULT_REL_TOLERANCE[dtype] if rel_tolerance is None else float(rel_tolerance)
    try:
        cfg = _model_config(model, component)
    except ExportError as exc:
        raise ExportError(f"variant {variant!r} ({fmt}): {exc}", variant=variant, fmt=fmt, kind="input") from None
    if model.weights is not None and not Path(model.weights).expanduser().is_dir():
        raise ExportError(f"variant {variant!r} ({fmt}): weights directory {model.weights!r} does not exist",
                          variant=variant, fmt=fmt, kind="input")
    root = _cache.cache_root(cache_dir)
    key, key_doc = _cache.artifact_key(model, cfg, flags, fmt, dtype, component=component)
    entry = _cache.entry(root, key)

    progress("lookup", 0, 1)
    meta, why = entry.verify()
    if meta is not None:
        _judge(meta, tolerance, variant, fmt, entry.artifact_path(meta))
        return _artifact(entry, meta, flags, fmt, variant, cached=True, component=component)

    with _cache.conversion_lock(root, on_wait=lambda: progress("waiting", 0, 1)):
        meta, why_now = entry.verify()  # another process may have built it while we waited
        if meta is not None:
            _judge(meta, tolerance, variant, fmt, entry.artifact_path(meta))
            return _artifact(entry, meta, flags, fmt, variant, cached=True, component=component)
        rebuilt = entry.dir.exists()
        if rebuilt:
            entry.remove()  # corrupted or incomplete: rebuild from scratch
        meta = _convert(root, key, key_doc, cfg, model, flags, fmt, dtype, tolerance, variant, progress,
                        timeout_s, component)
        if rebuilt:
            meta["rebuilt_because"] = why
        progress("hash", 0, 1)
        meta = _cache.commit(Path(meta.pop("_build_dir")), entry, meta)
    progress("done", 1, 1)
    return _artifact(entry, meta, flags, fmt, variant, cached=False, component=component)


def _convert(root: Path, key: str, key_doc: dict[str, Any], cfg: Any, model: ModelRef, flags: Flags,
             fmt: str, dtype: str, tolerance: float, variant: str, progress: ProgressFn,
             timeout_s: float | None, component: str = "unet") -> dict[str, Any]:
    import dataclasses

    build = _cache.new_build_dir(root, key)
    filename = _cache.artifact_filename(model.name, key, fmt, component)
    eff = effective_flags(flags, fmt, component)
    request = {
        "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg),
        "model": model.model_dump(), "flags": eff.to_dict(), "format": fmt, "dtype": dtype,
        "out_path": str(build / filename), "rel_tolerance": tolerance, "component": component,
    }
    req_path, res_path = build / "request.json", build / "result.json"
    req_path.write_text(json.dumps(request, indent=2))
    timeout_s = timeout_s or float(os.environ.get("HARNESS_EXPORT_TIMEOUT", 3600))
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(_REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, "-m", "harness.export.worker", str(req_path), str(res_path)]
    tail: deque[str] = deque(maxlen=60)
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(_REPO), start_new_session=True)
    reader = threading.Thread(target=lambda: tail.extend(proc.stderr), daemon=True)
    reader.start()
    killer = threading.Timer(timeout_s, proc.kill)
    killer.start()
    try:
        for line in proc.stdout:
            if line.startswith("@@progress "):
                parts = line.split()
                if len(parts) == 4:
                    progress(parts[1], int(parts[2]), int(parts[3]))
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        _cleanup(build)
        raise
    finally:
        killer.cancel()
        reader.join(timeout=5)
    elapsed = time.time() - started
    stderr_tail = "".join(tail)[-4000:]
    try:
        result = json.loads(res_path.read_text())
    except (OSError, ValueError):
        _cleanup(build)
        if elapsed >= timeout_s:
            how = f"ran past the export timeout of {timeout_s:.0f} s (HARNESS_EXPORT_TIMEOUT)"
        elif rc < 0:
            how = f"was killed by signal {-rc}" + (" (out of memory?)" if -rc == 9 else "")
        else:
            how = f"exited with code {rc}"
        last = _last_error_line(stderr_tail)
        raise ExportError(f"variant {variant!r} ({fmt}): the converter process {how} without a result"
                          + (f": {last}" if last else ""), variant=variant, fmt=fmt, kind="crash",
                          detail=stderr_tail) from None
    if not result.get("ok"):
        _cleanup(build)
        err = result.get("error", {})
        cls = ReferenceMismatchError if err.get("kind") == "check" else ExportError
        raise cls(f"variant {variant!r} ({fmt}): {err.get('message', 'conversion failed')}", variant=variant,
                  fmt=fmt, kind=err.get("kind", "convert"), detail=err.get("detail") or stderr_tail)
    req_path.unlink(missing_ok=True)
    res_path.unlink(missing_ok=True)
    meta = result["meta"]
    meta.update({"file": filename, "format": fmt, "dtype": dtype, "key_doc": key_doc,
                 "flags": eff.to_dict(), "model": model.name, "component": component,
                 "weight_mb_by_dtype": {k: round(v / (1 << 20), 3)
                                        for k, v in meta.get("weight_bytes_by_dtype", {}).items()},
                 "_build_dir": str(build)})
    return meta


def _cleanup(build: Path) -> None:
    import shutil

    shutil.rmtree(build, ignore_errors=True)


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Killed" in ln:
            return ln[:500]
    return lines[-1][:500] if lines else ""


# ------------------------------------------------------------------------------------ plans

@dataclass
class PlannedArtifact:
    """One artifact a suite needs, and the suite's rows that use it."""

    fmt: str
    key: str
    flags: Flags  # as the format realizes them
    variants: list[tuple[str, Flags]]  # (row name, requested flags) sharing this artifact
    cached: Artifact | None = None
    why_not_cached: str = ""
    component: str = "unet"

    @property
    def label(self) -> str:
        return self.variants[0][0]

    def na(self) -> dict[str, list[str]]:
        """row name -> the flags that are n/a for it in this format (non-empty rows only)."""
        return {name: na_flags(f, self.fmt, self.component) for name, f in self.variants
                if na_flags(f, self.fmt, self.component)}


def plan_artifacts(model: ModelRef, variants: list[tuple[str, Flags]], formats: list[str],
                   dtype: str = "fp16", cache_dir: Path | None = None,
                   components: tuple[str, ...] | list[str] = ("unet",)) -> list[PlannedArtifact]:
    """The distinct artifacts `variants` need in each format and component (rows identical under the
    mapping share one), each with its cached artifact when the cache has it intact. Ordered by
    format, then component, then first row."""
    for component in components:
        check_component(component)
    _check_dtype(dtype)
    cfgs = {component: _model_config(model, component) for component in components}
    root = _cache.cache_root(cache_dir)
    out: list[PlannedArtifact] = []
    for fmt in formats:
        check_format(fmt)
        versions = _cache.converter_versions(fmt)
        for component in components:
            by_key: dict[str, PlannedArtifact] = {}
            for name, flags in variants:
                key, _ = _cache.artifact_key(model, cfgs[component], flags, fmt, dtype, versions, component)
                if key not in by_key:
                    by_key[key] = PlannedArtifact(fmt, key, effective_flags(flags, fmt, component), [],
                                                  component=component)
                    out.append(by_key[key])
                by_key[key].variants.append((name, flags))
            for planned in by_key.values():
                entry = _cache.entry(root, planned.key)
                meta, why = entry.verify()
                planned.why_not_cached = why
                if meta is not None:
                    name, flags = planned.variants[0]
                    planned.cached = _artifact(entry, meta, flags, fmt, name, cached=True, component=component)
    return out
