"""How each optimization flag maps onto each artifact format (the table in README.md, "Artifacts").

A flag that a format cannot express is "n/a" there: the artifact is built as if the flag had its
baseline value, so rows that differ only in n/a flags share one artifact, and reports show "n/a" for
that step on that runtime instead of a difference that is not there.
"""
from __future__ import annotations

from dataclasses import replace

from harness.variants import BASELINE, FLAG_VALUES, Flags

FORMATS: tuple[str, ...] = ("tflite", "coreml")
SUFFIX: dict[str, str] = {"tflite": ".tflite", "coreml": ".mlpackage"}

# Flags a format cannot express, and why (the artifact is the same either way).
NA_FLAGS: dict[str, dict[str, str]] = {
    "tflite": {
        "conv3x3": "LiteRT's GPU delegate picks Winograd for 3x3 convolutions itself; a .tflite "
                   "CONV_2D has no algorithm choice",
    },
    "coreml": {
        "conv3x3": "Core ML picks the convolution algorithm on the device; an mlprogram conv op has "
                   "no algorithm choice",
    },
}

# Core ML passes that fuse the primitive GroupNorm/GELU ops back into one op; removed from the
# default pass pipeline for groupnorm_gelu=decomposed, kept for fused.
COREML_FUSION_PASSES: tuple[str, ...] = (
    "common::fuse_gelu_exact",
    "common::fuse_gelu_tanh_approximation",
    "common::fuse_layernorm_or_instancenorm",
)

# (format, flag, value) -> what the artifact contains. Rendered into README.md's "Artifacts" table.
MAPPING: dict[str, dict[str, dict[str, str]]] = {
    "tflite": {
        "softmax": {
            "naive": "REDUCE_MAX, SUB, EXP, SUM, DIV (reciprocal), MUL as separate ops (written as "
                     "x * (1 / sum) so the converter does not fold them into SOFTMAX)",
            "optimized": "one builtin SOFTMAX op",
        },
        "groupnorm_gelu": {
            "decomposed": "GroupNorm as RESHAPE/MEAN/SUB/MUL/RSQRT/ADD ops; GELU as the erf formula "
                          "(the converter writes erf as MUL/ADD/MINIMUM/MAXIMUM/DIV; no GELU op)",
            "fused": "the odml.group_norm composite (litert-torch enable_group_norm_composite) and "
                     "the builtin GELU op",
        },
        "attention": {
            "standard": "BATCH_MATMUL, the softmax of the softmax flag, BATCH_MATMUL",
            "flash": "the odml.scaled_dot_product_attention composite (q/k/v as [B,T,N,H], an "
                     "explicit zero mask [B,1,1,T_k]); the softmax flag no longer applies",
        },
        "conv3x3": {"direct": "CONV_2D", "winograd": "n/a: CONV_2D, same artifact as direct"},
    },
    "coreml": {
        "softmax": {
            "naive": "reduce_max, sub, exp, reduce_sum, inverse/real_div, mul as separate ops",
            "optimized": "one softmax op",
        },
        "groupnorm_gelu": {
            "decomposed": "primitive ops: the pass pipeline runs without "
                          + ", ".join(COREML_FUSION_PASSES),
            "fused": "F.group_norm / F.gelu and the default pass pipeline (with "
                     + ", ".join(COREML_FUSION_PASSES) + "): a gelu op; GroupNorm stays "
                     "reshape/reduce_mean/... (Core ML has no group_norm op)",
        },
        "attention": {
            "standard": "matmul, the softmax of the softmax flag, matmul",
            "flash": "the fused scaled_dot_product_attention op (iOS18 target)",
        },
        "conv3x3": {"direct": "conv", "winograd": "n/a: conv, same artifact as direct"},
    },
}


class UnknownFormatError(ValueError):
    """An artifact format that is not one of FORMATS."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UnknownFormatError(f"unknown artifact format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return fmt


def na_flags(flags: Flags, fmt: str) -> list[str]:
    """The flags of `flags` that differ from the baseline but that `fmt` cannot express."""
    check_format(fmt)
    return [name for name in NA_FLAGS[fmt] if getattr(flags, name) != getattr(BASELINE, name)]


def effective_flags(flags: Flags, fmt: str) -> Flags:
    """`flags` as the artifact of `fmt` realizes them: n/a flags at their baseline values.

    Also normalizes winograd_tile, which cannot matter once conv3x3 is direct.
    """
    check_format(fmt)
    changes: dict[str, object] = {name: getattr(BASELINE, name) for name in NA_FLAGS[fmt]}
    eff = replace(flags, **changes)
    if eff.conv3x3 == "direct":
        eff = replace(eff, winograd_tile=BASELINE.winograd_tile)
    return eff


def describe(flags: Flags, fmt: str) -> dict[str, str]:
    """flag -> what the artifact of `fmt` contains for the flag's value (from MAPPING)."""
    check_format(fmt)
    return {name: MAPPING[fmt][name][getattr(flags, name)] for name in FLAG_VALUES}


def markdown_table() -> str:
    """The flag-to-format table for README.md."""
    lines = ["| flag | value | .tflite (litert-torch) | .mlpackage (coremltools, mlprogram, iOS18) |",
             "|---|---|---|---|"]
    for name, values in FLAG_VALUES.items():
        for value in values:
            lines.append(f"| {name} | {value} | {MAPPING['tflite'][name][value]} | "
                         f"{MAPPING['coreml'][name][value]} |")
    return "\n".join(lines)
