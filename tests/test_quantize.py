"""int8 weight-only modules (harness.models.quantize): storage, scales, accuracy, patched models."""
import pytest
import torch
from torch import nn

from harness.memory import weight_bytes
from harness.models.kernels.winograd import Conv3x3
from harness.models.patch import apply_flags
from harness.models.quantize import (
    INT8_REL_TOLERANCE, Int8WeightOnlyConv2d, Int8WeightOnlyLinear, compute_dtype, quantize_int8,
    quantize_per_channel,
)
from harness.models.unet import build_unet, example_inputs
from harness.variants import LADDER, Flags



@pytest.fixture(autouse=True)
def no_grad():
    """Inference only; restored after each test (grad mode is process-global)."""
    with torch.no_grad():
        yield


def _rel(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


def test_per_output_channel_symmetric_scales():
    w = torch.randn(6, 3, 3, 3)
    w[2] *= 100.0  # one channel 100x larger: a per-tensor scale would crush the others
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and q.shape == w.shape and scale.shape == (6,)
    assert scale[2] / scale[0] > 30
    for c in range(6):
        assert scale[c] == pytest.approx(w[c].abs().max().item() / 127, rel=1e-6)
        assert q[c].abs().max().item() == 127  # symmetric: the channel's max maps to +-127
    err = (q.float() * scale.view(-1, 1, 1, 1) - w).abs()
    assert (err <= scale.view(-1, 1, 1, 1) / 2 + 1e-6).all()  # at most half a step per weight


def test_zero_channel_does_not_divide_by_zero():
    w = torch.randn(3, 4)
    w[1] = 0
    q, scale = quantize_per_channel(w)
    assert torch.isfinite(scale).all() and (q[1] == 0).all()


def test_linear_and_conv_store_int8_and_match_fp32():
    lin, conv = nn.Linear(64, 32), nn.Conv2d(8, 16, 3, padding=1, stride=2)
    x, img = torch.randn(4, 64), torch.randn(2, 8, 9, 9)
    ql, qc = Int8WeightOnlyLinear(lin), Int8WeightOnlyConv2d(conv)
    for q in (ql, qc):
        assert q.weight_int8.dtype == torch.int8 and q.weight_scale.dtype == torch.float32
        assert not any(p.dtype == torch.int8 for p in q.parameters())
        assert "weight" not in dict(q.named_parameters())  # no float copy of the weight is kept
    assert ql.weight_scale.shape == (32,) and qc.weight_scale.shape == (16,)
    assert _rel(ql(x), lin(x)) < 1e-2 and _rel(qc(img), conv(img)) < 1e-2
    assert qc(img).shape == conv(img).shape


def test_compute_dtype():
    assert compute_dtype("int8", "cpu") == "fp32" and compute_dtype("int8", "cuda") == "fp16"
    assert compute_dtype("fp16", "cpu") == "fp16"


@pytest.fixture(scope="module")
@torch.no_grad()
def tiny_reference():
    inputs = example_inputs("tiny", 0, "fp32")
    return inputs, build_unet("tiny")(*inputs[:2], encoder_hidden_states=inputs[2], return_dict=False)[0]


@pytest.mark.parametrize("name", ["baseline", "+flash_attention", "+winograd"])
def test_tiny_unet_int8_within_documented_tolerance(name, tiny_reference):
    """The measured error (module doc: 1.5e-2 on the tiny UNet, every row) under INT8_REL_TOLERANCE, on the
    flag-patched modules (Winograd convs stay Winograd)."""
    flags = dict(LADDER)[name]
    inputs, ref = tiny_reference
    unet = build_unet("tiny")
    apply_flags(unet, flags)
    fp32_bytes = weight_bytes(unet)
    counts = quantize_int8(unet)
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in unet.modules())
    assert counts["linear"] > 0 and counts["conv2d"] > 0
    if flags.conv3x3 == "winograd":
        wino = [m for m in unet.modules() if isinstance(m, Int8WeightOnlyConv2d) and m.is_winograd]
        assert len(wino) == counts["conv2d_winograd"] > 0
    else:
        assert counts["conv2d_winograd"] == 0
    out = unet(*inputs[:2], encoder_hidden_states=inputs[2], return_dict=False)[0]
    rel = _rel(out, ref)
    assert 1e-3 < rel < INT8_REL_TOLERANCE  # really quantized (not fp32), and within the tolerance
    # Stored bytes: int8 weights + fp32 scales + the float rest (biases, norms, embeddings); about 1/4.
    stored = weight_bytes(unet)
    assert stored == pytest.approx(fp32_bytes / 4, rel=0.15)
    assert stored >= counts["int8_weight_bytes"] + counts["scale_bytes"]


def test_quantize_keeps_conv3x3_direct_for_stride2():
    conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)
    holder = nn.Sequential(Conv3x3.from_conv(conv, impl="winograd"))
    quantize_int8(holder)
    assert isinstance(holder[0], Int8WeightOnlyConv2d) and not holder[0].is_winograd
    x = torch.randn(1, 4, 8, 8)
    assert _rel(holder[0](x), conv(x)) < 1e-2


def test_winograd_int8_conv_matches_direct_int8():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    direct, wino = nn.Sequential(Conv3x3.from_conv(conv)), nn.Sequential(Conv3x3.from_conv(conv, impl="winograd"))
    quantize_int8(direct)
    quantize_int8(wino)
    assert wino[0].is_winograd and not direct[0].is_winograd
    assert torch.equal(wino[0].weight_int8, direct[0].weight_int8)
    x = torch.randn(2, 8, 12, 12)
    assert _rel(wino[0](x), direct[0](x)) < 1e-4  # the same int8 weights through two algorithms


def test_relu_attention_flags_then_int8():
    flags = Flags.from_dict({"softmax": "optimized", "groupnorm_gelu": "fused", "attention": "relu",
                             "conv3x3": "winograd"})
    unet = build_unet("tiny")
    apply_flags(unet, flags)
    quantize_int8(unet)
    inputs = example_inputs("tiny", 0, "fp32")
    out = unet(*inputs[:2], encoder_hidden_states=inputs[2], return_dict=False)[0]
    assert torch.isfinite(out).all()
