"""harness.models.kernels.choice: the per-shape choice between GPU implementations (forced by the
environment, else measured once and cached). The measuring path needs CUDA; the rest runs anywhere."""
from __future__ import annotations

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
