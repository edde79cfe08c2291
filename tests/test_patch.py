"""apply_flags on the tiny SD-architecture UNet: every ladder step matches the unpatched model."""
from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention

from harness.models.kernels.attention import KernelAttnProcessor
from harness.models.kernels.gelu import GEGLU
from harness.models.kernels.groupnorm import GroupNorm
from harness.models.kernels.winograd import Conv3x3, winograd_usage
from harness.models.patch import (
    COUNT_KEYS,
    apply_flags,
    describe_patch,
    flag_applies,
    flag_coverage,
    state_dicts_equal,
)
from harness.models.unet import build_unet, example_inputs
from harness.variants import BASELINE, LADDER, Flags, ladder_flags

SEED = 0

# The SD 1.x UNet layout (kept by "tiny"): 16 transformer blocks x (self + cross) attention; 22 resnets x 2
# GroupNorms + 16 transformer GroupNorms + conv_norm_out; 16 GEGLU feed-forwards; 3x3 convs: conv_in, 22
# resnets x 2, 3 stride-2 downsamplers, 3 upsamplers, conv_out -- all but the downsamplers Winograd-able.
TINY_COVERAGE = {"attention": 32, "groupnorm": 61, "gelu": 16, "conv3x3": 52, "conv3x3_winograd": 49}


@pytest.fixture(scope="module")
def reference():
    unet = build_unet("tiny", seed=SEED)
    inputs = example_inputs("tiny", seed=SEED)
    with torch.no_grad():
        out = unet(*inputs).sample
    return unet, inputs, out


def _rel_err(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out - expected).norm() / expected.norm()).item()


def test_flag_coverage_of_tiny():
    unet = build_unet("tiny", seed=SEED)
    assert flag_coverage(unet) == TINY_COVERAGE
    assert TINY_COVERAGE["attention"] == len(unet.attn_processors)
    for flag in ("softmax", "groupnorm_gelu", "attention", "conv3x3"):
        assert flag_applies(TINY_COVERAGE, flag)


def test_flag_coverage_reports_na_for_absent_blocks():
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.GroupNorm(2, 8))
    coverage = flag_coverage(plain)
    assert coverage == {"attention": 0, "groupnorm": 1, "gelu": 0, "conv3x3": 1, "conv3x3_winograd": 0}
    assert not flag_applies(coverage, "softmax")
    assert not flag_applies(coverage, "attention")
    assert not flag_applies(coverage, "conv3x3")  # its only 3x3 conv is stride 2
    assert flag_applies(coverage, "groupnorm_gelu")
    with pytest.raises(KeyError, match="known flags"):
        flag_applies(coverage, "winograd")


@pytest.mark.parametrize("step", [name for name, _ in LADDER])
def test_ladder_step_matches_unpatched_model(reference, step):
    ref_unet, inputs, expected = reference
    flags = ladder_flags(step)
    unet = build_unet("tiny", seed=SEED)
    before = {k: v.data_ptr() for k, v in unet.state_dict().items()}

    counts = apply_flags(unet, flags)

    winograd = flags.conv3x3 == "winograd"
    assert counts == {**TINY_COVERAGE, "conv3x3_winograd": TINY_COVERAGE["conv3x3_winograd"] if winograd else 0}
    # same tensors (shared, not copied), same keys, same values as the reference built with the same seed
    assert {k: v.data_ptr() for k, v in unet.state_dict().items()} == before
    assert state_dicts_equal(unet, ref_unet)

    assert winograd_usage(unet) == {"winograd": 0, "direct": 0}  # nothing has run yet
    with torch.no_grad():
        out = unet(*inputs).sample
    assert out.shape == expected.shape
    assert _rel_err(out, expected) < 1e-4
    # what each Winograd-flagged conv ran (on the CPU always Winograd; a GPU picks per shape)
    assert winograd_usage(unet) == {"winograd": TINY_COVERAGE["conv3x3_winograd"] if winograd else 0, "direct": 0}


@pytest.mark.parametrize("step", [name for name, _ in LADDER])
def test_patched_modules_follow_flags(step):
    flags = ladder_flags(step)
    unet = build_unet("tiny", seed=SEED)
    apply_flags(unet, flags)
    processors = [m.processor for m in unet.modules() if isinstance(m, Attention)]
    assert all(isinstance(p, KernelAttnProcessor) for p in processors)
    assert {(p.softmax, p.attention) for p in processors} == {(flags.softmax, flags.attention)}
    assert {m.impl for m in unet.modules() if isinstance(m, GroupNorm)} == {flags.groupnorm_gelu}
    assert {m.impl for m in unet.modules() if isinstance(m, GEGLU)} == {flags.groupnorm_gelu}
    assert not any(type(m) is torch.nn.GroupNorm for m in unet.modules())
    description = describe_patch(unet)
    if flags.conv3x3 == "winograd":
        assert description["conv3x3"] == {f"winograd_f{flags.winograd_tile}": 49, "direct": 3}
        downsamplers = [m for n, m in unet.named_modules() if n.endswith("downsamplers.0.conv")]
        assert len(downsamplers) == 3 and not any(m.is_winograd for m in downsamplers)
    else:
        assert description["conv3x3"] == {"direct": 52}


def test_baseline_is_the_naive_paths():
    unet = build_unet("tiny", seed=SEED)
    apply_flags(unet, BASELINE)
    assert describe_patch(unet) == {
        "conv3x3": {"direct": 52}, "groupnorm": {"decomposed": 61},
        "attention": {"standard/naive": 32}, "gelu": {"decomposed": 16},
    }


@pytest.mark.parametrize("tile", [2, 6])
def test_other_winograd_tiles(reference, tile):
    _, inputs, expected = reference
    unet = build_unet("tiny", seed=SEED)
    counts = apply_flags(unet, Flags(conv3x3="winograd", winograd_tile=tile))
    assert counts["conv3x3_winograd"] == 49
    assert {m.tile for m in unet.modules() if isinstance(m, Conv3x3) and m.is_winograd} == {tile}
    with torch.no_grad():
        assert _rel_err(unet(*inputs).sample, expected) < 1e-4


def test_reapplying_flags_reconfigures(reference):
    _, inputs, expected = reference
    unet = build_unet("tiny", seed=SEED)
    first = apply_flags(unet, ladder_flags("+winograd"))
    second = apply_flags(unet, BASELINE)
    third = apply_flags(unet, ladder_flags("+winograd"))
    assert first == third and second["conv3x3_winograd"] == 0
    assert set(first) == set(COUNT_KEYS)
    assert describe_patch(unet)["attention"] == {"flash": 32}
    with torch.no_grad():
        assert _rel_err(unet(*inputs).sample, expected) < 1e-4


def test_checkpoint_loads_into_patched_model(reference):
    """A state_dict (e.g. a diffusers checkpoint) loads strictly into a patched model, and the cached
    Winograd filter transforms follow the new weights."""
    ref_unet, inputs, expected = reference
    unet = build_unet("tiny", seed=SEED + 1)
    apply_flags(unet, ladder_flags("+winograd"))
    with torch.no_grad():
        other = unet(*inputs).sample  # fills the filter-transform caches with the seed-1 weights
        assert _rel_err(other, expected) > 1e-2
        unet.load_state_dict(ref_unet.state_dict(), strict=True)
        assert _rel_err(unet(*inputs).sample, expected) < 1e-4


def test_apply_flags_rejects_non_flags():
    with pytest.raises(TypeError, match="Flags"):
        apply_flags(torch.nn.Linear(2, 2), {"softmax": "naive"})



def test_keep_channels_last_hands_back_channels_last_with_same_values(reference):
    """The CUDA path's layout fix: diffusers' transformer blocks return their output without an NCHW copy."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    from harness.models.patch import keep_channels_last

    _, inputs, expected = reference
    unet = build_unet("tiny", seed=SEED)
    assert keep_channels_last(unet) == sum(isinstance(m, Transformer2DModel) for m in unet.modules()) > 0
    unet = unet.to(memory_format=torch.channels_last)
    outs = []
    block = next(m for m in unet.modules() if isinstance(m, Transformer2DModel))
    handle = block.register_forward_hook(lambda _m, _i, out: outs.append(out[0]))
    with torch.no_grad():
        out = unet(inputs[0].contiguous(memory_format=torch.channels_last), *inputs[1:]).sample
    handle.remove()
    assert outs and outs[0].is_contiguous(memory_format=torch.channels_last)
    assert not outs[0].is_contiguous()  # stock diffusers copies it back to NCHW
    assert _rel_err(out, expected) < 1e-4
