"""Weightless .tflite skeletons: a large artifact's graph without its weight bytes, refilled
deterministically where it runs.

An SD 1.4 UNet .tflite is 1.6 GB, almost all of it weights stored after the flatbuffer (buffers with
an offset); a machine that only runs it (a lent GPU, a phone farm behind a slow link) can take the
graph and regenerate the weights. `strip` keeps, byte for byte, the flatbuffer (ops, tensors,
shapes, quantization scales, the small inline buffers) and every external buffer that is not a large
float/int8 weight; for each large weight it records the element type, count and statistics (mean,
std, min, max) of the original bytes. `refill` writes a file of the same size and layout in which
each such buffer holds seeded random values with the original's statistics (normal with its mean and
std for float16/float32, uniform in [min, max] for int8), the same on every machine for the same
skeleton.

A refilled file runs the same graph with other weights of the same scale: its latency and memory
are the artifact's (they do not depend on weight values), its outputs are not the artifact's.
Correctness where it runs is therefore checked engine against engine on the same refilled file (the
GPU's output against LiteRT's CPU interpreter, `bench/litert_gpu.py`); the artifact itself was
checked against PyTorch when it was exported (meta.json "reference").

    python -m harness.export.skeleton strip ARTIFACT.tflite OUT.skel [--min-bytes 65536]
    python -m harness.export.skeleton refill OUT.skel REFILLED.tflite

File format (gzip): magic b"HSKEL001", a 4-byte little-endian manifest length, the manifest (JSON),
then the flatbuffer prefix and the kept buffers' bytes in manifest order.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import mmap
import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"HSKEL001"
VERSION = 1
DEFAULT_MIN_BYTES = 64 * 1024
# Element types whose large buffers are regenerated (tflite TensorType value -> numpy dtype).
_GENERATED = {0: np.float32, 1: np.float16, 9: np.int8}
_CHUNK = 1 << 24  # elements generated per step (bounded memory for 1.6 GB files)


class SkeletonError(ValueError):
    """A skeleton that cannot be made or read (not a .tflite, corrupted, another version)."""


def _buffer_types(model) -> dict[int, int]:
    """Buffer index -> the element type of a tensor that holds it (every subgraph)."""
    out: dict[int, int] = {}
    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        for t in range(g.TensorsLength()):
            tensor = g.Tensors(t)
            out.setdefault(int(tensor.Buffer()), int(tensor.Type()))
    return out


def _stats(data: np.ndarray) -> dict[str, float]:
    values = data.astype(np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}


def strip(path: str | os.PathLike, out: str | os.PathLike, min_bytes: int = DEFAULT_MIN_BYTES) -> dict[str, Any]:
    """Write the skeleton of `path` to `out`; returns its manifest."""
    from ai_edge_litert import schema_py_generated as schema

    path, out = Path(path), Path(out)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if len(mm) < 8 or mm[4:8] != b"TFL3":
            raise SkeletonError(f"{str(path)!r} is not a .tflite flatbuffer (no TFL3 identifier)")
        model = schema.Model.GetRootAsModel(mm, 0)
        types = _buffer_types(model)
        external = []
        for i in range(model.BuffersLength()):
            buf = model.Buffers(i)
            if buf.Offset() > 1:
                external.append((i, int(buf.Offset()), int(buf.Size())))
        prefix_len = min((off for _, off, _ in external), default=len(mm))
        kept, generated = [], []
        for index, offset, size in sorted(external, key=lambda e: e[1]):
            dtype = _GENERATED.get(types.get(index, -1))
            if dtype is None or size < min_bytes or size % np.dtype(dtype).itemsize:
                kept.append({"buffer": index, "offset": offset, "size": size})
                continue
            data = np.frombuffer(mm[offset:offset + size], dtype=dtype)
            generated.append({"buffer": index, "offset": offset, "size": size, "dtype": np.dtype(dtype).name,
                              **_stats(data)})
        sha = hashlib.sha256()
        for start in range(0, len(mm), 1 << 26):
            sha.update(mm[start:start + (1 << 26)])
        manifest = {"version": VERSION, "source": path.name, "source_sha256": sha.hexdigest(),
                    "file_size": len(mm), "prefix_len": prefix_len, "min_bytes": min_bytes,
                    "kept": kept, "generated": generated,
                    "generated_bytes": sum(g["size"] for g in generated)}
        head = json.dumps(manifest).encode()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        with gzip.open(tmp, "wb", compresslevel=6) as gz:
            gz.write(MAGIC + struct.pack("<I", len(head)) + head)
            gz.write(mm[:prefix_len])
            for k in kept:
                gz.write(mm[k["offset"]:k["offset"] + k["size"]])
        os.replace(tmp, out)
    return manifest


def read_manifest(skeleton: str | os.PathLike) -> dict[str, Any]:
    with gzip.open(skeleton, "rb") as gz:
        return _read_head(gz, skeleton)


def _read_head(gz, skeleton) -> dict[str, Any]:
    try:
        magic = gz.read(len(MAGIC))
    except (OSError, EOFError) as exc:
        raise SkeletonError(f"{str(skeleton)!r} is not a skeleton (not gzip: {exc})") from None
    if magic != MAGIC:
        raise SkeletonError(f"{str(skeleton)!r} is not a skeleton of this version (magic {magic!r}); make it again "
                            "with `python -m harness.export.skeleton strip`")
    (n,) = struct.unpack("<I", gz.read(4))
    return json.loads(gz.read(n))


def _seed(manifest: dict[str, Any], buffer: int) -> int:
    digest = hashlib.sha256(f"{manifest['source_sha256']}:{buffer}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _fill(fh, entry: dict[str, Any], seed: int) -> None:
    dtype = np.dtype(entry["dtype"])
    count = entry["size"] // dtype.itemsize
    rng = np.random.Generator(np.random.PCG64(seed))
    fh.seek(entry["offset"])
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        if dtype.kind == "f":
            values = rng.standard_normal(n, dtype=np.float32) * np.float32(entry["std"]) + np.float32(entry["mean"])
            values = np.clip(values, entry["min"], entry["max"]).astype(dtype)
        else:
            values = rng.integers(int(entry["min"]), int(entry["max"]) + 1, size=n, dtype=np.int16).astype(dtype)
        fh.write(values.tobytes())


def refill(skeleton: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Write the runnable .tflite of `skeleton` to `out` (module docstring); returns the manifest."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with gzip.open(skeleton, "rb") as gz:
        manifest = _read_head(gz, skeleton)
        if manifest.get("version") != VERSION:
            raise SkeletonError(f"skeleton version {manifest.get('version')} is not {VERSION}")
        with open(tmp, "wb") as fh:
            fh.truncate(manifest["file_size"])
            prefix = gz.read(manifest["prefix_len"])
            if len(prefix) != manifest["prefix_len"]:
                raise SkeletonError(f"{str(skeleton)!r} is truncated (the flatbuffer is short)")
            fh.write(prefix)
            for k in manifest["kept"]:
                data = gz.read(k["size"])
                if len(data) != k["size"]:
                    raise SkeletonError(f"{str(skeleton)!r} is truncated (buffer {k['buffer']})")
                fh.seek(k["offset"])
                fh.write(data)
            for g in manifest["generated"]:
                _fill(fh, g, _seed(manifest, g["buffer"]))
    os.replace(tmp, out)
    return manifest


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.export.skeleton", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("strip", help="write the weightless skeleton of a .tflite")
    s.add_argument("artifact", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--min-bytes", type=int, default=DEFAULT_MIN_BYTES,
                   help="regenerate float/int8 buffers of at least this many bytes (default 64 KiB)")
    r = sub.add_parser("refill", help="write the runnable .tflite of a skeleton (seeded weights)")
    r.add_argument("skeleton", type=Path)
    r.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "strip":
            m = strip(args.artifact, args.out, args.min_bytes)
            print(f"{args.out}: {args.out.stat().st_size / 2**20:.2f} MB for a {m['file_size'] / 2**20:.1f} MB artifact "
                  f"({len(m['generated'])} buffers, {m['generated_bytes'] / 2**20:.1f} MB, to regenerate)")
        else:
            m = refill(args.skeleton, args.out)
            print(f"{args.out}: {m['file_size'] / 2**20:.1f} MB ({len(m['generated'])} buffers regenerated)")
    except (SkeletonError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
