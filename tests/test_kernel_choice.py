"""harness.models.kernels.choice: the per-shape choice between GPU implementations (forced by the
environment, else measured once and cached). The measuring path needs CUDA; the rest runs anywhere."""
from __future__ import annotations

import time

import pytest
import torch

from harness.models.kernels import choice


@pytest.fixture(autouse=True)
def _clean():
    choice.reset()
    yield
    choice.reset()


def test_environment_forces_a_candidate_and_is_recorded(monkeypatch):
    calls = []
    candidates = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    monkeypatch.setenv("HARNESS_DEMO", "b")
    assert choice.fastest("demo", (1, 2), candidates) == "b"
    assert calls == []  # forcing measures nothing
    assert choice.choices("demo") == {"b": 1}


def test_old_spelling_and_unknown_names(monkeypatch):
    monkeypatch.setenv("HARNESS_WINOGRAD", "always")
    assert choice.fastest("winograd", "k", {"winograd": int, "direct": int}) == "winograd"
    monkeypatch.setenv("HARNESS_WINOGRAD", "fft")
    with pytest.raises(ValueError, match="HARNESS_WINOGRAD='fft' names no winograd implementation; use auto or"):
        choice.fastest("winograd", "k", {"winograd": int, "direct": int})


def _perf_counter_ms(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def test_measured_choice_on_the_cpu_timer_is_the_faster_cached_and_skips_failures():
    """The measuring path (the one a GPU takes with CUDA events), timed here with perf_counter."""
    x = torch.randn(512, 512)
    slow = lambda: [x @ x for _ in range(20)]  # noqa: E731
    fast = lambda: x + 1  # noqa: E731
    assert choice.fastest("demo", "shape", {"slow": slow, "fast": fast}, reps=3, timer=_perf_counter_ms) == "fast"
    calls = []
    broken = {"slow": lambda: calls.append("slow") or slow(),
              "fast": lambda: (_ for _ in ()).throw(RuntimeError("No available kernel"))}
    assert choice.fastest("demo", "shape", broken, timer=_perf_counter_ms) == "fast" and calls == []  # cached
    assert choice.fastest("demo", "other", broken, reps=2, timer=_perf_counter_ms) == "slow"  # failure passed over
    assert choice.choices("demo") == {"fast": 1, "slow": 1}
    with pytest.raises(RuntimeError, match="no demo implementation ran on this shape: fast: No available kernel"):
        choice.fastest("demo", "third", {"fast": broken["fast"]}, timer=_perf_counter_ms)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="timing candidates needs a CUDA device")
def test_measured_choice_is_the_faster_and_cached():
    x = torch.randn(2048, 2048, device="cuda")
    slow = lambda: [x @ x for _ in range(8)]  # noqa: E731
    fast = lambda: x + 1  # noqa: E731
    assert choice.fastest("demo", "shape", {"slow": slow, "fast": fast}) == "fast"
    broken = {"slow": slow, "fast": lambda: (_ for _ in ()).throw(RuntimeError("No available kernel"))}
    assert choice.fastest("demo", "shape", broken) == "fast"  # cached: not measured again
    assert choice.fastest("demo", "other", broken) == "slow"  # a failing candidate is passed over
    assert choice.choices("demo") == {"fast": 1, "slow": 1}
