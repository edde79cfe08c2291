"""GELU: the erf formula written out (the paper's baseline) or one fused op (the "S-GN/GELU" row).

`decomposed` is 0.5 * x * (1 + erf(x / sqrt(2))) as separate elementwise ops (div, erf, add, mul,
mul); litert-torch keeps it as those ops. `fused` is F.gelu, which litert-torch lowers to the builtin
GELU op (one kernel).

SD 1.4's transformer feed-forward uses GEGLU (diffusers.models.activations.GEGLU): a Linear to
2 x width, split into (hidden, gate), hidden * gelu(gate). `GEGLU` and `GELU` below subclass the
diffusers modules, keep the same `proj` Linear (same state_dict keys) and switch only the gelu.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU as DiffusersGEGLU
from diffusers.models.activations import GELU as DiffusersGELU
from torch import nn

GeluImpl = Literal["decomposed", "fused"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_decomposed(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU as separate elementwise ops: 0.5 * x * (1 + erf(x / sqrt(2))) (or the tanh form)."""
    if approximate == "none":
        return 0.5 * x * (1.0 + torch.erf(x * _INV_SQRT2))
    if approximate == "tanh":
        return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    raise ValueError(f"unknown GELU approximation {approximate!r}; known: none, tanh")


def gelu(x: torch.Tensor, impl: GeluImpl = "fused", approximate: str = "none") -> torch.Tensor:
    """GELU by the chosen implementation."""
    if impl == "fused":
        return F.gelu(x, approximate=approximate)
    if impl == "decomposed":
        return gelu_decomposed(x, approximate)
    raise ValueError(f"unknown GELU impl {impl!r}; known: decomposed, fused")


def _check_impl(impl: str) -> None:
    if impl not in ("decomposed", "fused"):
        raise ValueError(f"unknown GELU impl {impl!r}; known: decomposed, fused")


class GEGLU(DiffusersGEGLU):
    """diffusers GEGLU (proj to 2 x dim_out, hidden * gelu(gate)) with a switchable gelu."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True, impl: GeluImpl = "fused") -> None:
        super().__init__(dim_in, dim_out, bias=bias)
        _check_impl(impl)
        self.impl: GeluImpl = impl

    @classmethod
    def from_geglu(cls, module: DiffusersGEGLU, impl: GeluImpl) -> "GEGLU":
        """A GEGLU sharing `module`'s `proj` Linear (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.proj = module.proj
        new.impl = impl
        _check_impl(impl)
        new.train(module.training)
        return new

    def gelu(self, gate: torch.Tensor) -> torch.Tensor:
        return gelu(gate, self.impl)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        from harness.models.kernels.triton import enabled as _triton_enabled

        if self.impl == "fused" and _triton_enabled(hidden_states):  # CUDA fp16/bf16: fused Triton GEGLU
            from harness.models.kernels.triton.geglu import geglu as _triton_geglu

            return _triton_geglu(self.proj(hidden_states))
        hidden_states, gate = self.proj(hidden_states).chunk(2, dim=-1)
        return hidden_states * self.gelu(gate)

    def extra_repr(self) -> str:
        return f"impl={self.impl}"


class GELU(DiffusersGELU):
    """diffusers GELU (proj then gelu, optional tanh approximation) with a switchable gelu."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True,
                 impl: GeluImpl = "fused") -> None:
        super().__init__(dim_in, dim_out, approximate=approximate, bias=bias)
        _check_impl(impl)
        self.impl: GeluImpl = impl

    @classmethod
    def from_gelu(cls, module: DiffusersGELU, impl: GeluImpl) -> "GELU":
        """A GELU sharing `module`'s `proj` Linear (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.proj = module.proj
        new.approximate = module.approximate
        new.impl = impl
        _check_impl(impl)
        new.train(module.training)
        return new

    def gelu(self, gate: torch.Tensor) -> torch.Tensor:
        return gelu(gate, self.impl, self.approximate)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.gelu(self.proj(hidden_states))

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}, impl={self.impl}"


class TorchGELU(nn.GELU):
    """Drop-in torch.nn.GELU (no parameters) with a switchable implementation."""

    def __init__(self, approximate: str = "none", impl: GeluImpl = "fused") -> None:
        super().__init__(approximate=approximate)
        _check_impl(impl)
        self.impl: GeluImpl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x, self.impl, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}, impl={self.impl}"
