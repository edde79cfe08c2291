"""Per-shape kernel choice on a GPU: run whichever implementation is fastest for a shape, measured once.

Where an optimization has more than one GPU implementation (Winograd F(4x4,3x3) or cuDNN's direct 3x3
convolution; our Triton flash kernel or PyTorch's fused FlashAttention kernels), the first call on a new
shape times every candidate (median of `reps` calls, CUDA events, after warm-up calls) and caches the
fastest, the way cuDNN's benchmark mode picks its convolution algorithms. Later calls on that shape run
the cached choice, also inside a CUDA-graph capture; during a capture an unmeasured shape runs the first
candidate (nothing can be timed there).

`HARNESS_<KIND>=<candidate>` in the environment forces one candidate for a kind (`HARNESS_WINOGRAD=winograd`
or its old spelling `always`, `HARNESS_FLASH=triton`); `choices(kind)` says what ran where, so a result
can record it (`extra.winograd_ran`, `extra.flash_ran`).
"""
from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch

# kind -> shape key -> chosen candidate, for this process
_CHOSEN: dict[str, dict[Hashable, str]] = {}
# Old spellings of a forced choice: HARNESS_WINOGRAD=always predates this module.
_ALIASES = {"winograd": {"always": "winograd"}}


def forced(kind: str, names: list[str]) -> str | None:
    """The candidate `HARNESS_<KIND>` forces, None when unset or `auto`; an unknown name is an error."""
    value = os.environ.get(f"HARNESS_{kind.upper()}", "auto").strip().lower()
    value = _ALIASES.get(kind, {}).get(value, value)
    if value in ("", "auto"):
        return None
    if value not in names:
        raise ValueError(f"HARNESS_{kind.upper()}={value!r} names no {kind} implementation; "
                         f"use auto or one of: {', '.join(names)}")
    return value


def events_ms(fn: Callable[[], Any], iterations: int, warmup: int = 3) -> list[float]:
    """`iterations` calls of fn on the current CUDA stream, each timed between its own pair of CUDA events
    (ms), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return samples


def fastest(kind: str, key: Hashable, candidates: Mapping[str, Callable[[], Any]], reps: int = 10,
            timer: Callable[[Callable[[], Any], int], list[float]] = events_ms) -> str:
    """The name of the candidate to run for `key` (a shape): forced by the environment, cached, or timed
    now (`timer(fn, reps)`: per-call ms; CUDA events on the current device by default). Candidates must
    compute the same function; only their speed differs."""
    names = list(candidates)
    cache = _CHOSEN.setdefault(kind, {})
    force = forced(kind, names)
    if force is not None:
        cache[key] = force
        return force
    choice = cache.get(key)
    if choice is not None:
        return choice
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return names[0]
    times: dict[str, float] = {}
    failures: list[str] = []
    for name, fn in candidates.items():
        try:
            times[name] = statistics.median(timer(fn, reps))
        except RuntimeError as exc:  # e.g. a fused SDPA backend this build or GPU lacks ("No available kernel")
            failures.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if not times:
        raise RuntimeError(f"no {kind} implementation ran on this shape: " + "; ".join(failures))
    choice = min(times, key=times.__getitem__)
    cache[key] = choice
    return choice


def choices(kind: str) -> dict[str, int]:
    """How many distinct shapes of `kind` chose each candidate in this process (empty: none ran)."""
    return dict(Counter(_CHOSEN.get(kind, {}).values()))


def reset(kind: str | None = None) -> None:
    """Forget the cached choices (all kinds, or one): the next call on each shape measures again."""
    if kind is None:
        _CHOSEN.clear()
    else:
        _CHOSEN.pop(kind, None)
