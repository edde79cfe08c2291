"""A tiny UNet-shaped factory model (harness.models.loaders contract) whose graph LiteRT's GPU engine
does not take wholly: the scalar timestep expanded to the batch and reshaped (what diffusers' UNet did
before the GPU-clean export: a BROADCAST_TO). For the litert-gpu tests of refused graphs."""
from __future__ import annotations

import torch
from torch import nn


class BroadcastUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.ctx = nn.Linear(8, 4)

    def forward(self, sample, timestep, encoder_hidden_states=None, return_dict=False):
        batch = sample.shape[0]
        # the first timestep expanded to the batch and reshaped: a BROADCAST_TO (the export feeds a [B] timestep)
        t = timestep.reshape(-1)[:1].expand(batch).reshape(batch, 1, 1, 1) * 1e-3
        c = self.ctx(encoder_hidden_states).mean(1).reshape(batch, 4, 1, 1)
        return (self.conv(sample) + t + c,)


def build(seed: int = 0):
    return BroadcastUNet().eval(), {"sample": (2, 4, 8, 8), "timestep": (), "context": (2, 6, 8)}
