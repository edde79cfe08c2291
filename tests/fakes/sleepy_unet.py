"""UNet-shaped factory models (harness.models.loaders contract) whose latency is set by a sleep: a
candidate that is slower by construction, for the same-session A/B tests (tests/test_abtest.py)."""
from __future__ import annotations

import time

import torch
from torch import nn


class SleepyUNet(nn.Module):
    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=False):
        time.sleep(self.delay_s)
        return (self.conv(sample) + encoder_hidden_states.mean() * 0 + timestep.reshape(-1)[:1].mean() * 0,)


def _shapes() -> dict:
    return {"sample": (2, 4, 8, 8), "timestep": (), "context": (2, 6, 8)}


def fast(seed: int = 0):
    return SleepyUNet(0.002).eval(), _shapes()


def slow(seed: int = 0):
    return SleepyUNet(0.030).eval(), _shapes()
