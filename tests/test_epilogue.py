"""harness.models.kernels.epilogue on the CPU: the bias folds give the values of the convolutions and
resnet blocks they replace (the CUDA path is the same arithmetic; bench/gpu_table1.py checks each GPU
row against diffusers)."""
from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from harness.models.kernels import epilogue
from harness.models.kernels.epilogue import (conv1x1_gemm, conv_without_bias, gemm_1x1_convs, gemm_eligible,
                                             silu_shared, summed_bias)
from harness.models.kernels.winograd import Conv3x3
from harness.models.unet import build_unet, example_inputs


def _cl(*shape: int) -> torch.Tensor:
    torch.manual_seed(sum(shape))
    return torch.randn(*shape).to(memory_format=torch.channels_last)


@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_gemm_is_the_convolution_and_stays_channels_last(bias):
    conv = nn.Conv2d(24, 40, 1, bias=bias)
    x = _cl(2, 24, 5, 7)
    out = conv1x1_gemm(x, conv.weight, conv.bias)
    torch.testing.assert_close(out, conv(x), rtol=1e-5, atol=1e-5)
    assert out.shape == (2, 40, 5, 7) and out.is_contiguous(memory_format=torch.channels_last)


def test_only_pointwise_convs_are_gemms():
    assert gemm_eligible(nn.Conv2d(8, 8, 1))
    assert not gemm_eligible(nn.Conv2d(8, 8, 3, padding=1))
    assert not gemm_eligible(nn.Conv2d(8, 8, 1, stride=2))
    assert not gemm_eligible(nn.Conv2d(8, 8, 1, groups=2))
    assert not gemm_eligible(nn.Conv2d(8, 8, 1, padding=1))


def test_gemm_1x1_convs_binds_every_pointwise_conv_and_keeps_values_off_cuda(monkeypatch):
    monkeypatch.setenv("HARNESS_FOLD_BIAS", "1")
    unet = build_unet("tiny", seed=0)
    inputs = example_inputs("tiny", seed=0)
    with torch.no_grad():
        expected = unet(*inputs).sample
        pointwise = sum(type(m) is nn.Conv2d and gemm_eligible(m) for m in unet.modules())
        assert gemm_1x1_convs(unet) == pointwise > 0  # SD layout: proj_in/out and the 1x1 shortcuts
        torch.testing.assert_close(unet(*inputs).sample, expected, rtol=0, atol=0)  # the CPU keeps conv2d
        monkeypatch.delenv("HARNESS_FOLD_BIAS")  # off by default (not yet measured on a GPU)
        assert gemm_1x1_convs(build_unet("tiny", seed=0)) == 0


@pytest.mark.parametrize("winograd", [False, True])
def test_conv_without_bias_leaves_only_the_bias_out(winograd):
    base = nn.Conv2d(8, 16, 3, padding=1)
    conv = Conv3x3.from_conv(base, impl="winograd") if winograd else base
    x = _cl(1, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(conv_without_bias(conv, x) + conv.bias[:, None, None], conv(x),
                                   rtol=1e-4, atol=1e-4)
        point = nn.Conv2d(8, 4, 1)
        torch.testing.assert_close(conv_without_bias(point, x), F.conv2d(x, point.weight), rtol=1e-5, atol=1e-5)


def test_summed_bias_is_cached_until_a_bias_changes():
    owner, a, b = nn.Module(), torch.ones(4), torch.full((4,), 2.0)
    with torch.no_grad():
        first = summed_bias(owner, "ab", a, None, b)
        assert torch.equal(first, torch.full((4,), 3.0)) and summed_bias(owner, "ab", a, b) is first
        b.add_(1)  # in place: a new version
        assert torch.equal(summed_bias(owner, "ab", a, b), torch.full((4,), 4.0))
        assert summed_bias(owner, "one", None, a) is a and summed_bias(owner, "none", None) is None


def test_silu_shared_reuses_the_result_for_the_same_tensor_only():
    t = torch.randn(2, 8)
    with torch.no_grad():
        first = silu_shared(t)
        assert silu_shared(t) is first and torch.equal(first, F.silu(t))
        t.mul_(2)  # same object, new version
        assert torch.equal(silu_shared(t), F.silu(t))
        other = t.clone()
        assert silu_shared(other) is not silu_shared(t)


def _reference_group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, silu=False, add=None):
    """What the Triton kernel computes (harness.models.kernels.triton.groupnorm), in PyTorch."""
    if add is not None:
        x = x + add.reshape(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))
    y = F.group_norm(x, num_groups, weight, bias, eps)
    return F.silu(y) if silu else y


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("shortcut", [True, False])
def test_fused_resnet_forward_folds_the_biases_with_diffusers_values(shortcut, fold, monkeypatch):
    """The resnet forwards of the S-GN/GELU rows on CUDA, with PyTorch's GroupNorm standing in for the
    Triton kernel (the CPU has no Triton): folded (conv1's bias in the time projection, conv2's in the 1x1
    shortcut, SiLU(temb) shared) and not, against diffusers' own ResnetBlock2D.forward."""
    import harness.models.kernels.triton.resnet as resnet

    stand_in = types.ModuleType("harness.models.kernels.triton.groupnorm")
    stand_in.group_norm = _reference_group_norm
    monkeypatch.setitem(sys.modules, "harness.models.kernels.triton.groupnorm", stand_in)
    monkeypatch.setattr(resnet, "enabled", lambda t: True)
    forward = resnet.folded_resnet_forward if fold else resnet.fused_resnet_forward
    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=16, out_channels=24 if shortcut else 16, temb_channels=12, groups=4).eval()
    for p in block.parameters():  # diffusers zero-inits nothing here, but make every bias count
        p.data.add_(torch.randn_like(p) * 0.1)
    assert (block.conv_shortcut is not None) is shortcut
    x, temb = _cl(2, 16, 6, 6), torch.randn(2, 12)
    with torch.no_grad():
        expected = ResnetBlock2D.forward(block, x, temb)
        got = forward(block, x, temb)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        calls, silu = [], F.silu
        monkeypatch.setattr(epilogue, "_silu_memo", None)
        monkeypatch.setattr(epilogue.F, "silu", lambda t, **kw: calls.append(t is temb) or silu(t, **kw))
        forward(block, x, temb)
        forward(block, x, temb)  # the same temb: SiLU once when folded
        assert calls.count(True) == (1 if fold else 2)  # unfolded: the block's own SiLU, each call


@pytest.mark.parametrize("fold", ["1", "0"])
def test_apply_flags_binds_the_folded_forward_only_when_asked(fold, monkeypatch):
    import harness.models.kernels.triton.resnet as resnet
    from harness.models.patch import apply_flags
    from harness.variants import ladder_flags

    monkeypatch.setenv("HARNESS_FOLD_BIAS", fold)
    unet = build_unet("tiny", seed=0)
    apply_flags(unet, ladder_flags("+sgn_gelu"))
    bound = {m.forward.__func__ for m in unet.modules() if type(m) is ResnetBlock2D}
    assert bound == {resnet.folded_resnet_forward if fold == "1" else resnet.fused_resnet_forward}
