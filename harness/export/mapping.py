"""How each optimization flag maps onto each artifact format (the table in README.md, "Artifacts").

A flag that a format cannot express is "n/a" there: the artifact is built as if the flag had its
baseline value, so rows that differ only in n/a flags share one artifact, and reports show "n/a" for
that step on that runtime instead of a difference that is not there.
"""
from __future__ import annotations

from dataclasses import replace

from harness.variants import BASELINE, FLAG_VALUES, Flags

FORMATS: tuple[str, ...] = ("tflite", "coreml")
# What can be exported: the UNet, the CLIP text encoder, the VAE decoder (harness.export.rewrite).
COMPONENTS: tuple[str, ...] = ("unet", "text_encoder", "vae_decoder")
# Components the flags do not apply to (no diffusers Attention, GroupNorm or 3x3 conv): one artifact
# for every row, every flag n/a.
FLAGLESS_COMPONENTS: tuple[str, ...] = ("text_encoder",)
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
            "fused": "GroupNorm with its statistics folded into one per-channel scale and shift (MEAN, SUB, "
                     "MUL, MEAN, RSQRT, then one MUL and ADD over the activation; not the odml.group_norm "
                     "composite, which LiteRT's host GPU engine crashes on) and the builtin GELU op",
        },
        "attention": {
            "standard": "BATCH_MATMUL, the softmax of the softmax flag, BATCH_MATMUL",
            "flash": "FlashAttention's tiled online softmax as ops: keys/values in blocks of at most 512 "
                     "(BATCH_MATMUL, REDUCE_MAX, MAXIMUM, EXP, SUM, rescaled accumulator; no [T_q, T_k] tensor; "
                     "not the odml.scaled_dot_product_attention composite, which LiteRT's host GPU engine "
                     "crashes on); the softmax flag no longer applies",
            "relu": "BATCH_MATMUL, RELU, BATCH_MATMUL, MUL by scale/T_k (ReLU attention, "
                    "relu(QK^T*scale)V/T_k; no SOFTMAX); the softmax flag no longer applies",
        },
        "conv3x3": {"direct": "CONV_2D", "winograd": "n/a: CONV_2D, same artifact as direct (ML Drift picks "
                                                   "Winograd itself for 3x3 stride-1 convolutions it finds worth it)"},
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
            "relu": "matmul, relu, matmul, mul by scale/T_k (no softmax); the softmax flag no longer applies",
        },
        "conv3x3": {"direct": "conv", "winograd": "n/a: conv, same artifact as direct"},
    },
}


# Weight dtype -> what each format stores (README.md "Artifacts").
DTYPE_MAPPING: dict[str, dict[str, str]] = {
    "tflite": {
        "fp32": "FLOAT32 constants",
        "fp16": "FLOAT16 constants feeding DEQUANTIZE ops (litert-torch full_fp16_recipe); EMBEDDING_LOOKUP "
                "tables stay FLOAT32 (the GPU engine refuses an fp16 table)",
        "int8": "INT8 constants with per-channel scales feeding DEQUANTIZE ops, activations float "
                "(litert-torch full_weight_only_recipe, INT8 CHANNELWISE); biases, norm scales and embedding "
                "tables stay FLOAT32; every Linear as a 1x1 CONV_2D (ML Drift's int8 FULLY_CONNECTED fails to build)",
    },
    "coreml": {
        "fp32": "compute_precision=FLOAT32",
        "fp16": "compute_precision=FLOAT16",
        "int8": "the fp16 program with linear_quantize_weights (linear_symmetric, int8, per_channel): int8 "
                "consts + constexpr_blockwise_shift_scale; weights under 2048 elements stay fp16",
    },
}


class UnknownFormatError(ValueError):
    """An artifact format that is not one of FORMATS."""


class UnknownComponentError(ValueError):
    """A component that is not one of COMPONENTS."""


def check_component(component: str) -> str:
    if component not in COMPONENTS:
        raise UnknownComponentError(f"unknown component {component!r}; known components: {', '.join(COMPONENTS)}")
    return component


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UnknownFormatError(f"unknown artifact format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return fmt


def na_flags(flags: Flags, fmt: str, component: str = "unet") -> list[str]:
    """The flags of `flags` that differ from the baseline but that `fmt` cannot express (for a
    component the flags do not apply to: every flag that differs from the baseline)."""
    check_format(fmt)
    check_component(component)
    names = FLAG_VALUES if component in FLAGLESS_COMPONENTS else NA_FLAGS[fmt]
    return [name for name in names if getattr(flags, name) != getattr(BASELINE, name)]


def effective_flags(flags: Flags, fmt: str, component: str = "unet") -> Flags:
    """`flags` as the artifact of `fmt` realizes them: n/a flags at their baseline values.

    Also normalizes winograd_tile, which cannot matter once conv3x3 is direct, and softmax under
    attention=relu (ReLU attention has no softmax). A component the flags do not apply to gets the
    baseline.
    """
    check_format(fmt)
    check_component(component)
    if component in FLAGLESS_COMPONENTS:
        return BASELINE
    changes: dict[str, object] = {name: getattr(BASELINE, name) for name in NA_FLAGS[fmt]}
    eff = replace(flags, **changes)
    if eff.conv3x3 == "direct":
        eff = replace(eff, winograd_tile=BASELINE.winograd_tile)
    if eff.attention == "relu":
        eff = replace(eff, softmax=BASELINE.softmax)
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
    for dtype in DTYPE_MAPPING["tflite"]:
        lines.append(f"| weights (--dtype) | {dtype} | {DTYPE_MAPPING['tflite'][dtype]} | "
                     f"{DTYPE_MAPPING['coreml'][dtype]} |")
    return "\n".join(lines)
