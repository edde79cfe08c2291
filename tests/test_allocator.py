"""harness.allocator: the host job process's allocator (HARNESS_CPU_ALLOCATOR), what a result records of it,
and a clear error for a bad setting."""
from __future__ import annotations

import subprocess
import sys

import pytest

from harness import allocator
from harness.allocator import AllocatorError, find_jemalloc, job_env
from harness.devices.base import DeviceContext, DeviceUnavailableError
from harness.devices.host import HostDevice, HostKind


REAL_JEMALLOC = find_jemalloc()  # before any test hides it


@pytest.fixture
def no_jemalloc(monkeypatch, tmp_path):
    monkeypatch.setattr(allocator, "JEMALLOC_PATHS", (str(tmp_path / "none" / "libjemalloc.so.2"),))


def test_default_is_pytorch_with_huge_pages(no_jemalloc):
    env = job_env({"PATH": "/bin"})
    assert env["THP_MEM_ALLOC_ENABLE"] == "1" and "LD_PRELOAD" not in env and env["PATH"] == "/bin"
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(64 << 20) and env["MALLOC_TRIM_THRESHOLD_"] == str(256 << 20)
    assert job_env({"THP_MEM_ALLOC_ENABLE": "0"})["THP_MEM_ALLOC_ENABLE"] == "0"  # the user's own setting stays
    system = job_env({"HARNESS_CPU_ALLOCATOR": "system"})
    assert not {"LD_PRELOAD", "THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_"} & set(system)


def test_jemalloc_is_preloaded_ahead_of_an_existing_preload(monkeypatch, tmp_path):
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    monkeypatch.setattr(allocator, "JEMALLOC_PATHS", (str(lib),))
    env = job_env({"HARNESS_CPU_ALLOCATOR": "jemalloc", "LD_PRELOAD": "/x/libother.so"})
    assert env["LD_PRELOAD"] == f"{lib}:/x/libother.so" and "THP_MEM_ALLOC_ENABLE" not in env


def test_bad_settings_name_the_problem_and_the_fix(no_jemalloc):
    with pytest.raises(AllocatorError, match="'tcmalloc' is not one of thp, system, jemalloc"):
        job_env({"HARNESS_CPU_ALLOCATOR": "tcmalloc"})
    with pytest.raises(AllocatorError, match="apt install libjemalloc2"):
        job_env({"HARNESS_CPU_ALLOCATOR": "jemalloc"})


def test_the_host_device_refuses_a_bad_setting_before_any_job(monkeypatch):
    monkeypatch.setenv("HARNESS_CPU_ALLOCATOR", "bogus")
    (info,) = HostKind().discover(DeviceContext())
    with pytest.raises(DeviceUnavailableError, match="HARNESS_CPU_ALLOCATOR='bogus'"):
        HostDevice(info, DeviceContext())


def _describe_in(env: dict[str, str]) -> str:
    code = "from harness.allocator import describe; print(describe())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


def test_describe_reads_the_process_itself(no_jemalloc):
    import os

    base = {k: v for k, v in os.environ.items()
            if k not in ("LD_PRELOAD", "THP_MEM_ALLOC_ENABLE", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    assert _describe_in(base) == "glibc malloc (system)"
    thp = _describe_in(job_env({**base, "HARNESS_CPU_ALLOCATOR": "thp"}))
    assert thp.startswith("glibc malloc (MALLOC_MMAP_THRESHOLD_=67108864, MALLOC_TRIM_THRESHOLD_=268435456), ")
    assert "THP_MEM_ALLOC_ENABLE=1" in thp
    if REAL_JEMALLOC:  # where the machine has jemalloc (apt install libjemalloc2), a preloaded process says so
        assert _describe_in({**base, "LD_PRELOAD": REAL_JEMALLOC}) == f"jemalloc ({REAL_JEMALLOC})"
