"""Tensor and weight memory of one model call: planned (TFLite GPU's greedy-by-size offsets) and measured.

The paper's Table 1 reports two memory columns per optimization:

- "Tensor": memory of the intermediate tensors under a memory manager that reuses buffers. TFLite's
  GPU delegate assigns every intermediate tensor an offset in one arena with the "greedy by size"
  algorithm (tensorflow/lite/delegates/gpu/common/memory_management/greedy_by_size_assignment.cc;
  Pisarchyk & Lee, "Efficient Memory Management for Deep Neural Net Inference", 2020). We reproduce
  it on usage records traced from one eager PyTorch call: `trace_tensor_usages` + `plan_greedy_by_size`
  (or both at once: `planned_tensor_bytes`).
- "Weight": bytes of parameters and buffers, `weight_bytes`.

`measure_peak_tensor_bytes` is a measurement, not a plan: the peak of what the allocator held for
tensors during one call (the CUDA caching allocator's counters, or the CPU allocator's events as the
PyTorch profiler records them).

Relations, for one traced call: peak_live_bytes <= planned total_bytes <= naive_bytes. peak_live is a
lower bound for every placement; eager PyTorch frees a tensor when its last Python/autograd reference
dies (never before its last read), so a measured eager peak is normally >= peak_live as well.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "TensorUsage",
    "MemoryPlan",
    "InvalidPlanError",
    "TraceResult",
    "plan_greedy_by_size",
    "validate_plan",
    "peak_live_bytes",
    "trace_tensor_usages",
    "planned_tensor_bytes",
    "measure_peak_tensor_bytes",
    "measure_and_plan_tensor_bytes",
    "weight_bytes",
]


# --------------------------------------------------------------------------------------------------
# Usage records and the greedy-by-size planner
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorUsage:
    """One intermediate tensor: its size and the inclusive interval of ops that need it in memory.

    first_op is the index of the op that produces it, last_op the index of the last op that reads it.
    Two tensors conflict (cannot share memory) iff their [first_op, last_op] intervals overlap.
    """

    id: Hashable
    size_bytes: int
    first_op: int
    last_op: int

    def __post_init__(self) -> None:
        if self.size_bytes < 0:
            raise ValueError(f"tensor {self.id!r}: size_bytes must be >= 0, got {self.size_bytes}")
        if self.first_op < 0 or self.last_op < self.first_op:
            raise ValueError(
                f"tensor {self.id!r}: need 0 <= first_op <= last_op, got first_op={self.first_op}, "
                f"last_op={self.last_op}"
            )

    def overlaps(self, other: TensorUsage) -> bool:
        """Whether the two lifetimes share at least one op."""
        return self.first_op <= other.last_op and other.first_op <= self.last_op


@dataclass(frozen=True)
class MemoryPlan:
    """Offsets of every tensor in one arena.

    total_bytes: arena size (end of the highest-placed tensor). naive_bytes: sum of sizes (no reuse).
    peak_live_bytes: max over ops of the bytes of tensors alive at that op, a lower bound on any plan.
    """

    total_bytes: int
    offsets: dict[Hashable, int]
    naive_bytes: int
    peak_live_bytes: int
    alignment: int = 1
    method: str = "greedy_by_size"

    @property
    def reuse_ratio(self) -> float:
        """naive_bytes / total_bytes (1.0 when nothing is shared; 1.0 for an empty plan)."""
        return self.naive_bytes / self.total_bytes if self.total_bytes else 1.0


class InvalidPlanError(AssertionError):
    """A memory plan that places two tensors with overlapping lifetimes in overlapping memory."""


def _align_up(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _check_usages(usages: Sequence[TensorUsage]) -> None:
    seen: set[Hashable] = set()
    for u in usages:
        if not isinstance(u, TensorUsage):
            raise TypeError(f"expected TensorUsage records, got {type(u).__name__}")
        if u.id in seen:
            raise ValueError(f"duplicate tensor id {u.id!r} in usage records; ids must be unique")
        seen.add(u.id)


def peak_live_bytes(usages: Iterable[TensorUsage]) -> int:
    """Max over ops of the summed sizes of tensors whose [first_op, last_op] contains that op."""
    delta: dict[int, int] = {}
    for u in usages:
        delta[u.first_op] = delta.get(u.first_op, 0) + u.size_bytes
        delta[u.last_op + 1] = delta.get(u.last_op + 1, 0) - u.size_bytes
    live = peak = 0
    for op in sorted(delta):
        live += delta[op]
        peak = max(peak, live)
    return peak


def plan_greedy_by_size(usages: Sequence[TensorUsage], alignment: int = 64) -> MemoryPlan:
    """TFLite GPU's greedy-by-size offset assignment.

    Tensors are taken in non-increasing size (ties: input order). For each, consider the already
    placed tensors whose lifetimes overlap it, ordered by offset; among the gaps to the left of each of
    them (from the aligned end of everything before it), take the smallest gap the tensor fits in; if
    none fits, place it at the aligned end of the highest of them (offset 0 if none overlaps).
    Offsets are multiples of `alignment` (TFLite aligns the end of every placed tensor, which is the
    same as aligning sizes up for the placement); total_bytes is the highest offset + size.
    """
    if alignment < 1:
        raise ValueError(f"alignment must be >= 1 byte, got {alignment}")
    usages = list(usages)
    _check_usages(usages)
    order = sorted(range(len(usages)), key=lambda i: -usages[i].size_bytes)  # stable: ties keep input order

    # Placed tensors, kept sorted by offset (ties: placement order, as TFLite's insertion does).
    offs = np.zeros(0, dtype=np.int64)
    ends = np.zeros(0, dtype=np.int64)  # aligned ends
    firsts = np.zeros(0, dtype=np.int64)
    lasts = np.zeros(0, dtype=np.int64)
    offsets: dict[Hashable, int] = {}
    total = 0
    for i in order:
        u = usages[i]
        mask = (firsts <= u.last_op) & (lasts >= u.first_op)
        o, e = offs[mask], ends[mask]
        if o.size == 0:
            best = 0
        else:
            prev = np.empty_like(o)  # aligned end of everything overlapping that lies before each tensor
            prev[0] = 0
            if o.size > 1:
                np.maximum.accumulate(e[:-1], out=prev[1:])
            gap = o - prev
            fits = (o >= prev) & (gap >= u.size_bytes)
            if fits.any():
                cand = np.where(fits, gap, np.iinfo(np.int64).max)
                best = int(prev[int(np.argmin(cand))])  # first smallest gap, like TFLite's strict '<'
            else:
                best = int(e.max())
        pos = int(np.searchsorted(offs, best, side="right"))
        offs = np.insert(offs, pos, best)
        ends = np.insert(ends, pos, _align_up(best + u.size_bytes, alignment))
        firsts = np.insert(firsts, pos, u.first_op)
        lasts = np.insert(lasts, pos, u.last_op)
        offsets[u.id] = best
        total = max(total, best + u.size_bytes)
    return MemoryPlan(
        total_bytes=total,
        offsets=offsets,
        naive_bytes=sum(u.size_bytes for u in usages),
        peak_live_bytes=peak_live_bytes(usages),
        alignment=alignment,
    )


def validate_plan(usages: Sequence[TensorUsage], plan: MemoryPlan) -> None:
    """Raise InvalidPlanError unless every tensor has an aligned offset inside the arena and no two
    tensors with overlapping lifetimes overlap in memory. Zero-byte tensors occupy no memory."""
    usages = list(usages)
    _check_usages(usages)
    missing = [u.id for u in usages if u.id not in plan.offsets]
    if missing:
        raise InvalidPlanError(f"plan has no offset for {len(missing)} tensor(s), e.g. {missing[:5]!r}")
    for u in usages:
        off = plan.offsets[u.id]
        if off < 0 or off % plan.alignment:
            raise InvalidPlanError(f"tensor {u.id!r}: offset {off} is negative or not a multiple of "
                                   f"the alignment {plan.alignment}")
        if off + u.size_bytes > plan.total_bytes:
            raise InvalidPlanError(f"tensor {u.id!r}: [{off}, {off + u.size_bytes}) lies beyond "
                                   f"total_bytes={plan.total_bytes}")
    # Sweep by first_op: two lifetimes overlap iff one starts inside the other, so checking each tensor
    # against the tensors still alive when it starts covers every conflicting pair.
    active: list[TensorUsage] = []
    for u in sorted((u for u in usages if u.size_bytes > 0), key=lambda u: u.first_op):
        active = [a for a in active if a.last_op >= u.first_op]
        lo, hi = plan.offsets[u.id], plan.offsets[u.id] + u.size_bytes
        for a in active:
            alo, ahi = plan.offsets[a.id], plan.offsets[a.id] + a.size_bytes
            if lo < ahi and alo < hi:
                raise InvalidPlanError(
                    f"tensors {a.id!r} (ops {a.first_op}..{a.last_op}, bytes [{alo}, {ahi})) and {u.id!r} "
                    f"(ops {u.first_op}..{u.last_op}, bytes [{lo}, {hi})) are alive together but overlap "
                    "in memory"
                )
        active.append(u)


# --------------------------------------------------------------------------------------------------
# Tracing the intermediate tensors of one eager call
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TraceResult:
    """Usage records of the intermediate tensors of one traced call.

    usages: one per storage produced inside the call (ids 0.. in production order).
    op_count: aten ops seen. op_names[i]: the i-th op (so op_names[u.first_op] produced u).
    external_bytes: bytes of the storages the call read but did not produce (inputs, weights, constants).
    """

    usages: list[TensorUsage]
    op_count: int
    op_names: list[str] = field(default_factory=list)
    external_bytes: int = 0

    @property
    def intermediate_bytes(self) -> int:
        return sum(u.size_bytes for u in self.usages)


def _iter_tensors(obj: Any, _depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors inside nested lists/tuples/dicts/dataclasses (e.g. diffusers' output classes)."""
    if _depth > 20:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):  # includes diffusers.utils.BaseOutput (an OrderedDict)
        for v in obj.values():
            yield from _iter_tensors(v, _depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _iter_tensors(v, _depth + 1)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _iter_tensors(getattr(obj, f.name, None), _depth + 1)


def _untyped_storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, opaque (mkldnn) tensors
        return None


def _make_recorder():  # the dispatch mode class is built lazily so importing this module stays cheap
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode

    class _UsageRecorder(TorchDispatchMode):
        """Records, per aten op, which storages it reads and produces; holds ints and weak refs only.

        A storage is identified by its StorageImpl address (`_cdata`). While we hold a weak reference to
        a StorageImpl, its address cannot be reused by another storage, even after its data is freed
        and the data address (data_ptr) is handed to a new tensor; so a freed tensor and a new tensor
        at the same data address are two records. Expired weak refs are still checked, defensively.
        """

        def __init__(self) -> None:
            super().__init__()
            self.op_names: list[str] = []
            self.slot: dict[int, int] = {}  # StorageImpl address -> record index
            self.refs: dict[int, Any] = {}  # StorageImpl address -> StorageWeakRef
            self.size: list[int] = []
            self.first: list[int] = []
            self.last: list[int] = []
            self.external: list[bool] = []

        def touch(self, t: torch.Tensor, op: int, produced: bool) -> None:
            st = _untyped_storage(t)
            if st is None:
                return
            key = st._cdata
            nbytes = int(st.nbytes())
            idx = self.slot.get(key)
            if idx is not None and self.refs[key].expired():
                idx = None  # a new storage at the address of a freed one
            if idx is None:
                self.slot[key] = len(self.size)
                self.refs[key] = StorageWeakRef(st)
                self.size.append(nbytes)
                self.first.append(op)
                self.last.append(op)
                # First seen as an op's input: it existed before the call (argument, weight, buffer,
                # cached constant). First seen as an output: a fresh allocation inside the call.
                self.external.append(not produced)
            else:
                self.last[idx] = op  # a read, an in-place write, or a view of a known storage
                if nbytes > self.size[idx]:  # resized in place (e.g. an out= op)
                    self.size[idx] = nbytes

        def lookup(self, t: torch.Tensor) -> int | None:
            st = _untyped_storage(t)
            if st is None:
                return None
            idx = self.slot.get(st._cdata)
            if idx is None or self.refs[st._cdata].expired():
                return None
            return idx

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            op = len(self.op_names)
            self.op_names.append(str(func))
            for t in _iter_tensors((args, kwargs)):
                self.touch(t, op, produced=False)
            for t in _iter_tensors(out):
                self.touch(t, op, produced=True)
            return out

    return _UsageRecorder()


def trace_tensor_usages(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> TraceResult:
    """Run fn(*args, **kwargs) once under a TorchDispatchMode and return the usage records of every
    storage produced inside the call.

    Each aten op is one step. A produced storage lives from the op that outputs it to the last op that
    reads (or writes, or views) it; storages in fn's return value live to the end of the trace. Views
    and in-place results alias an existing storage and are not new tensors. Storages that were first
    seen as an op input (arguments, parameters, buffers, cached constants) are weights/inputs, not
    intermediates: their bytes go to external_bytes. Call it under torch.no_grad() (or
    torch.inference_mode()) to trace inference: with autograd on, saved activations live longer.
    """
    rec = _make_recorder()
    with rec:
        out = fn(*args, **kwargs)
    op_count = len(rec.op_names)
    for t in _iter_tensors(out):
        idx = rec.lookup(t)
        if idx is not None and not rec.external[idx]:
            rec.last[idx] = op_count - 1
    del out
    usages: list[TensorUsage] = []
    external = 0
    for i in range(len(rec.size)):
        if rec.external[i]:
            external += rec.size[i]
        elif rec.size[i] > 0:
            usages.append(TensorUsage(len(usages), rec.size[i], rec.first[i], rec.last[i]))
    rec.refs.clear()
    return TraceResult(usages=usages, op_count=op_count, op_names=list(rec.op_names), external_bytes=external)


def planned_tensor_bytes(fn: Callable[..., Any], *args: Any, alignment: int = 64, **kwargs: Any) -> int:
    """Arena bytes for fn's intermediate tensors under TFLite's greedy-by-size plan (trace + plan)."""
    return plan_greedy_by_size(trace_tensor_usages(fn, *args, **kwargs).usages, alignment=alignment).total_bytes


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------

def _cpu_profiler_peak(fn: Callable[..., Any], args: tuple, kwargs: dict) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn(*args, **kwargs)
    del out
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        raise RuntimeError(
            "the PyTorch profiler returned no kineto results (is another profiler active?); "
            "run measure_peak_tensor_bytes outside any other torch.profiler.profile context"
        )
    events = [e for e in results.events()
              if e.name() == "[memory]" and e.device_type() == torch._C._autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())  # stable: same-timestamp events keep the recorded order
    live = peak = 0
    for e in events:
        live += int(e.nbytes())  # allocations are positive, frees negative
        peak = max(peak, live)
    return peak


def measure_peak_tensor_bytes(fn: Callable[..., Any], *args: Any, device: str | torch.device = "cpu",
                              **kwargs: Any) -> tuple[int, str]:
    """Measured peak bytes of tensors allocated during one call fn(*args, **kwargs), above what was
    allocated before it, and the method's name.

    - CUDA: the caching allocator's counters: max_memory_allocated after the call (peak reset before
      it) minus memory_allocated before it -> "cuda_allocator_peak".
    - CPU: the PyTorch profiler (profile_memory=True) records every allocation and free of the CPU
      allocator; the peak of their running sum over the call -> "torch_profiler_cpu_peak". It sees what
      goes through c10's CPU allocator (all tensors); scratch memory that a library (oneDNN, BLAS)
      allocates on its own is not in it.
    Returned tensors count (they are allocated during the call).
    """
    return _measured_call(fn, args, kwargs, device)


def measure_and_plan_tensor_bytes(fn: Callable[..., Any], *args: Any, device: str | torch.device = "cpu",
                                  alignment: int = 64, **kwargs: Any) -> tuple[int, str, int]:
    """Both memory figures from ONE call: (measured peak bytes, method, planned arena bytes).

    The call runs under the measurement of `measure_peak_tensor_bytes` and the usage recorder of
    `trace_tensor_usages` at once. The recorder allocates no tensor memory (it holds ints and weak
    references to storages, which free their data when the last strong reference goes), so the
    measured peak is what a call without it measures; the plan is `planned_tensor_bytes`' plan of the
    same op sequence. One model iteration instead of two."""
    holder: dict[str, TraceResult] = {}

    def traced() -> None:
        holder["trace"] = trace_tensor_usages(fn, *args, **kwargs)

    peak, method = _measured_call(traced, (), {}, device)
    return peak, method, plan_greedy_by_size(holder["trace"].usages, alignment=alignment).total_bytes


def _measured_call(fn: Callable[..., Any], args: tuple, kwargs: dict,
                   device: str | torch.device) -> tuple[int, str]:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        del out
        return max(0, peak - before), "cuda_allocator_peak"
    if dev.type == "cpu":
        return _cpu_profiler_peak(fn, args, kwargs), "torch_profiler_cpu_peak"
    raise ValueError(f"measure_peak_tensor_bytes supports devices 'cpu' and 'cuda', got {str(dev)!r}")


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of the module's parameters and buffers, each underlying storage counted once (tied or
    shared weights are not double-counted; a view's whole storage counts)."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        st = _untyped_storage(t)
        if st is None:
            total += t.numel() * t.element_size()
            continue
        if st._cdata in seen:
            continue
        seen.add(st._cdata)
        total += int(st.nbytes())
    return total
