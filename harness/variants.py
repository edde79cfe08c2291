"""Optimization flags and the paper's cumulative ladder (Table 1 of arXiv 2304.11267).

Each flag switches a real implementation in `harness.models.kernels`; `harness.models.patch.apply_flags`
installs them into a diffusers UNet. The ladder is cumulative, as in the paper.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

SoftmaxImpl = Literal["naive", "optimized"]
GroupNormGeluImpl = Literal["decomposed", "fused"]
AttentionImpl = Literal["standard", "flash", "relu"]  # relu: MobileDiffusion's ReLU attention
Conv3x3Impl = Literal["direct", "winograd"]

# Allowed values per flag, in ladder order (the first is the paper's baseline).
FLAG_VALUES: dict[str, tuple[str, ...]] = {
    "softmax": ("naive", "optimized"),
    "groupnorm_gelu": ("decomposed", "fused"),
    "attention": ("standard", "flash", "relu"),  # relu changes the model (kernels/attention.py)
    "conv3x3": ("direct", "winograd"),
}


@dataclass(frozen=True)
class Flags:
    """One kernel configuration. Defaults are the paper's baseline."""

    softmax: SoftmaxImpl = "naive"
    groupnorm_gelu: GroupNormGeluImpl = "decomposed"
    attention: AttentionImpl = "standard"
    conv3x3: Conv3x3Impl = "direct"
    # Winograd output tile size m in F(m x m, 3 x 3); the paper uses 4.
    winograd_tile: int = 4

    def __post_init__(self) -> None:
        for name, allowed in FLAG_VALUES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(
                    f"unknown value {value!r} for flag {name!r}; known values: {', '.join(allowed)}"
                )
        if self.winograd_tile not in (2, 4, 6):
            raise ValueError(f"winograd_tile must be 2, 4 or 6 (F(m x m, 3 x 3)), got {self.winograd_tile}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Flags":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown flag(s) {sorted(unknown)}; known flags: {', '.join(sorted(known))}")
        return cls(**data)


BASELINE = Flags()

# (variant name, flags): the rows of Table 1, each adding one optimization to the row above.
LADDER: tuple[tuple[str, Flags], ...] = (
    ("baseline", BASELINE),
    ("+opt_softmax", replace(BASELINE, softmax="optimized")),
    ("+sgn_gelu", replace(BASELINE, softmax="optimized", groupnorm_gelu="fused")),
    ("+flash_attention", replace(BASELINE, softmax="optimized", groupnorm_gelu="fused", attention="flash")),
    (
        "+winograd",
        replace(BASELINE, softmax="optimized", groupnorm_gelu="fused", attention="flash", conv3x3="winograd"),
    ),
)

# How each row is labelled in reports (the paper's wording).
LADDER_LABELS: dict[str, str] = {
    "baseline": "Baseline",
    "+opt_softmax": "+ optimized softmax",
    "+sgn_gelu": "+ S-GN/GELU",
    "+flash_attention": "+ FlashAttention",
    "+winograd": "+ Winograd (all)",
}


def ladder_flags(name: str) -> Flags:
    for variant, flags in LADDER:
        if variant == name:
            return flags
    raise KeyError(f"unknown ladder step {name!r}; known steps: {', '.join(n for n, _ in LADDER)}")
