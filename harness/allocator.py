"""Which memory allocator the host's job processes run on (HARNESS_CPU_ALLOCATOR=thp|system|jemalloc).

On the CPU an SD 1.4 UNet iteration allocates and frees gigabytes of activations. With glibc's defaults
every large tensor is a fresh mmap: the kernel faults in and zeroes each 4 KiB page again on every
iteration. PyTorch's transparent-huge-page mode (THP_MEM_ALLOC_ENABLE=1: its CPU allocator aligns
allocations of 2 MiB and more to 2 MiB and asks the kernel for huge pages) takes one fault per 2 MiB
instead. Measured on the 2-core CI-like machine, + optimized softmax, one job each, one after another
(`/usr/bin/time -v harness run suites/table1.yaml --set variants=[+opt_softmax] --set check.enabled=false`):

    glibc malloc (system)              iterations 41/37/36 s  wall 3:59  sys 196 s  30.8 M faults  RSS 9.9 GB
    THP_MEM_ALLOC_ENABLE=1             iterations 26/29/29 s  wall 2:44  sys 119 s   0.8 M faults  RSS 7.6 GB
    + glibc mmap 64 MiB / trim 256 MiB iterations 24/24/23 s  wall 2:24  sys 104 s   0.4 M faults  RSS 7.6 GB (thp)
    + glibc mmap 512 MiB / trim 1 GiB  iterations 24/26/26 s  wall 2:37  sys 106 s   0.4 M faults  RSS 7.6 GB
    jemalloc 5.3, its defaults         iterations 41/38/43 s  wall 4:07  sys 217 s  41.5 M faults  RSS 7.2 GB
    glibc, no trim, 16 GiB mmap limit  iterations 16/16/16 s  wall 2:29  sys 84 s  RSS 21.5 GB (of 23 GiB: no)

The memory columns (profiler-measured tensors, planned tensors, weights) are the same under each; the time
the OS spends handing memory back and forth changes, and the peak RSS. `thp` (the default) is PyTorch's
huge-page mode with glibc keeping blocks under 64 MiB in its heap (MALLOC_MMAP_THRESHOLD_) and the top
256 MiB of it untrimmed (MALLOC_TRIM_THRESHOLD_), so most activations reuse memory instead of faulting it
in again; `system` gives glibc's defaults; `jemalloc` preloads libjemalloc.so.2 (apt install libjemalloc2;
tune it with MALLOC_CONF). A variable already set in the environment is left as it is. Every result
records what its process ran on (`versions.cpu_allocator`, shown in the report's environment section), so
rows measured under different allocators are told apart.
"""
from __future__ import annotations

import os
from pathlib import Path

CHOICES = ("thp", "system", "jemalloc")
JEMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2",
                  "/opt/homebrew/lib/libjemalloc.2.dylib")
THP_PROFILE = {"THP_MEM_ALLOC_ENABLE": "1", "MALLOC_MMAP_THRESHOLD_": str(64 << 20),
               "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


class AllocatorError(ValueError):
    """HARNESS_CPU_ALLOCATOR names an allocator that is unknown or not on this machine."""


def find_jemalloc() -> str | None:
    return next((p for p in JEMALLOC_PATHS if Path(p).is_file()), None)


def job_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a job process, with the allocator HARNESS_CPU_ALLOCATOR asks for (default thp)."""
    choice = env.get("HARNESS_CPU_ALLOCATOR", "thp").strip().lower() or "thp"
    if choice not in CHOICES:
        raise AllocatorError(f"HARNESS_CPU_ALLOCATOR={choice!r} is not one of {', '.join(CHOICES)}")
    out = dict(env)
    if choice == "thp":
        for key, value in THP_PROFILE.items():
            out.setdefault(key, value)
    elif choice == "jemalloc":
        lib = find_jemalloc()
        if lib is None:
            raise AllocatorError("HARNESS_CPU_ALLOCATOR=jemalloc, but no libjemalloc.so.2 is installed (looked in "
                                 f"{', '.join(JEMALLOC_PATHS[:3])}); install it (apt install libjemalloc2) or "
                                 "leave HARNESS_CPU_ALLOCATOR unset (thp)")
        out["LD_PRELOAD"] = ":".join(p for p in (lib, env.get("LD_PRELOAD", "")) if p)
    return out


def describe() -> str:
    """What this process allocates with, read from the process itself (for a result's versions)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    lib = next((line.split()[-1] for line in maps.splitlines() if "libjemalloc" in line), None)
    if lib:
        return f"jemalloc ({lib})"
    if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1":
        try:
            mode = THP_SETTING.read_text().split("[", 1)[1].split("]", 1)[0]
        except (OSError, IndexError):
            mode = "unknown"
        note = "" if mode in ("always", "madvise") else ", which the kernel ignores"
        return (f"glibc malloc{_glibc_tunables()}, PyTorch with transparent huge pages (THP_MEM_ALLOC_ENABLE=1; "
                f"kernel THP: {mode}{note})")
    return f"glibc malloc{_glibc_tunables() or ' (system)'}"


def _glibc_tunables() -> str:
    keys = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    set_ = [f"{k}={os.environ[k]}" for k in keys if os.environ.get(k)]
    return f" ({', '.join(set_)})" if set_ else ""
