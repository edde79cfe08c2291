"""The content-addressed artifact cache.

Layout under the cache root ($HARNESS_CACHE, ~/.cache/harness, or --cache DIR):

    artifacts/<key>/<component>-<model>-<key16>.tflite   (or .mlpackage/, a directory; component:
                                                  unet, text_encoder, vae_decoder)
    artifacts/<key>/meta.json                      facts about the artifact, its sha256 included
    artifacts/.lock                                held while a conversion runs (one at a time)
    artifacts/.build-<key>-<pid>/                  a conversion in progress (renamed into place)

The key hashes everything that decides the artifact's bytes: the model config, the weights' identity,
the flags as the format realizes them, the format, the weight dtype, the converter versions and
EXPORT_VERSION of the format (bump it when the export code changes what it emits). Fields added after version 1
enter the key document only when they differ from what a version-1 key meant, so every key of a
UNet of a built-in model stays what it was: `component` (not "unet") and `model_source`:

* a `unet_config` model: the config file's path and the sha256 of its content;
* a `factory` model: the factory path, the source file of the factory's module and its sha256. Only
  that file is hashed: a change in another module the factory uses (a helper, a base class) is not
  seen; clear the cache (`rm -r $HARNESS_CACHE/artifacts`) or bump EXPORT_VERSION[format] after one. An entry whose files no longer
hash to the recorded sha256 (truncated, edited) is not a hit: it is removed and rebuilt.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from harness.export.mapping import SUFFIX, check_format, effective_flags
from harness.variants import Flags

# Per format (the key's `export_version`). tflite 2: the GPU-clean forms (harness.export.rewrite.gpu_clean).
EXPORT_VERSION: dict[str, int] = {"tflite": 2, "coreml": 1}
META = "meta.json"
_CHUNK = 8 << 20


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: `cache_dir`, else $HARNESS_CACHE, else ~/.cache/harness (as the host agent's)."""
    if cache_dir is not None:
        root = Path(cache_dir).expanduser()
        root.mkdir(parents=True, exist_ok=True)
        return root
    from harness.workloads.common import cache_dir as default_cache_dir

    return default_cache_dir()


def artifacts_dir(root: Path) -> Path:
    path = root / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def converter_versions(fmt: str) -> dict[str, str]:
    """Versions of the packages that shape an artifact of `fmt` (part of the key)."""
    from importlib.metadata import PackageNotFoundError, version

    names = {"tflite": ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "torch", "diffusers"),
             "coreml": ("coremltools", "torch", "diffusers")}[check_format(fmt)]
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def weights_identity(weights: str | None, seed: int) -> dict[str, Any]:
    """What identifies the weights: the seed of random weights, or the checkpoint's files (relative
    name, size, modification time in ns) under its unet folder. Metadata, not a content hash: hashing
    3.4 GB on every lookup would cost seconds; rewriting a file changes its mtime."""
    if weights is None:
        return {"random_seed": seed}
    root = Path(weights).expanduser().resolve()
    unet = root / "unet" if (root / "unet").is_dir() else root
    files = sorted(p for p in unet.rglob("*") if p.is_file())
    return {"checkpoint": str(root),
            "files": [[str(p.relative_to(unet)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


def model_identity(model_name: str, cfg: Any) -> dict[str, Any]:
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    data.pop("description", None)
    data["name"] = model_name
    return data


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_source(model: Any) -> dict[str, Any] | None:
    """What identifies a non-built-in model's definition (None for a built-in model): see the module
    docstring."""
    kind = getattr(model, "kind", "builtin")
    if kind == "unet_config":
        path = Path(model.unet_config).expanduser()
        return {"unet_config": str(model.unet_config), "sha256": _file_sha256(path)}
    if kind == "factory":
        import importlib.util

        from harness.models.loaders import ModelLoadError

        module_name = model.factory.split(":")[0]
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError) as exc:
            raise ModelLoadError(f"model.factory {model.factory!r}: module {module_name!r} cannot be found "
                                 f"({exc}); check the spelling and PYTHONPATH") from None
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            raise ModelLoadError(f"model.factory {model.factory!r}: module {module_name!r} has no source file "
                                 "to hash for the artifact cache key; make it a .py module on PYTHONPATH")
        origin = Path(spec.origin)
        return {"factory": model.factory, "module_file": origin.name, "module_sha256": _file_sha256(origin)}
    return None


def artifact_key(model: Any, cfg: Any, flags: Flags, fmt: str, dtype: str,
                 versions: dict[str, str] | None = None, component: str = "unet") -> tuple[str, dict[str, Any]]:
    """(key, the document it hashes) for `component` of `model` (a ModelRef) with config `cfg` (a
    ModelConfig; a dict for a factory model) under `flags`."""
    check_format(fmt)
    eff = effective_flags(flags, fmt, component)
    doc = {
        "export_version": EXPORT_VERSION[fmt],
        "model": model_identity(model.name, cfg),
        "weights": weights_identity(model.weights, model.seed),
        "flags": eff.to_dict(),
        "format": fmt,
        "dtype": dtype,
        "versions": versions if versions is not None else converter_versions(fmt),
    }
    if component != "unet":  # new fields only where they differ from a version-1 key's meaning
        doc["component"] = component
    source = model_source(model)
    if source is not None:
        doc["model_source"] = source
    key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:40]
    return key, doc


def artifact_filename(model_name: str, key: str, fmt: str, component: str = "unet") -> str:
    """<component>-<model>-<key16><suffix>, e.g. text_encoder-sd14-0123456789abcdef.tflite."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model_name)
    return f"{component}-{safe}-{key[:16]}{SUFFIX[fmt]}"


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory (an .mlpackage): over its files' relative paths and bytes."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode() + b"\0")
            h.update(sha256_path(p).encode())
        return h.hexdigest()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def size_path(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


@dataclasses.dataclass
class Entry:
    """One cache entry on disk."""

    dir: Path
    key: str

    @property
    def meta_path(self) -> Path:
        return self.dir / META

    def meta(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None

    def artifact_path(self, meta: dict[str, Any]) -> Path:
        return self.dir / meta["file"]

    def verify(self) -> tuple[dict[str, Any] | None, str]:
        """(meta, "") when the entry is complete and its files hash to the recorded sha256; else
        (None, why not)."""
        if not self.dir.exists():
            return None, "not in the cache"
        meta = self.meta()
        if meta is None or "file" not in meta or "sha256" not in meta:
            return None, "its meta.json is missing or unreadable"
        path = self.artifact_path(meta)
        if not path.exists():
            return None, f"{path.name} is missing"
        size = size_path(path)
        if size != meta.get("size_bytes"):
            return None, f"{path.name} has {size} bytes, {meta.get('size_bytes')} were recorded (truncated?)"
        digest = sha256_path(path)
        if digest != meta["sha256"]:
            return None, f"{path.name} does not hash to the recorded sha256 (corrupted)"
        return meta, ""

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def entry(root: Path, key: str) -> Entry:
    return Entry(artifacts_dir(root) / key, key)


def new_build_dir(root: Path, key: str) -> Path:
    path = artifacts_dir(root) / f".build-{key}-{os.getpid()}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def commit(build_dir: Path, target: Entry, meta: dict[str, Any]) -> dict[str, Any]:
    """Hash the built artifact, write meta.json and move the build into place (a rename)."""
    path = build_dir / meta["file"]
    meta = {**meta, "sha256": sha256_path(path), "size_bytes": size_path(path), "created_at": time.time()}
    tmp = build_dir / f".{META}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    os.replace(tmp, build_dir / META)
    if target.dir.exists():
        target.remove()
    os.replace(build_dir, target.dir)
    return meta


@contextlib.contextmanager
def conversion_lock(root: Path, on_wait=None) -> Iterator[None]:
    """Hold the cache's conversion lock: one conversion at a time across processes (a full SD 1.4
    conversion takes 13-18 GiB). `on_wait()` is called once if another process holds it."""
    path = artifacts_dir(root) / ".lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def list_entries(root: Path) -> list[tuple[Entry, dict[str, Any] | None]]:
    base = artifacts_dir(root)
    return [(Entry(p, p.name), Entry(p, p.name).meta()) for p in sorted(base.iterdir())
            if p.is_dir() and not p.name.startswith(".")]
