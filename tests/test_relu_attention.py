"""ReLU attention (the `attention: relu` flag): the kernel against a plain reference, and the
workload's reference check building the reference model with the same attention function."""
import pytest
import torch

from harness.models.kernels.attention import KernelAttnProcessor, attention, relu_attention
from harness.models.patch import apply_flags, describe_patch
from harness.models.unet import build_unet, example_inputs
from harness.protocol import JobSpec, ModelRef
from harness.variants import Flags


def reference_relu_attention(q, k, v, scale, mask=None):
    """relu(Q K^T * scale + mask) V / T_k, written plainly in fp64."""
    s = q.double() @ k.double().transpose(-1, -2) * scale
    if mask is not None:
        s = s + mask.double()
    return (torch.relu(s) / k.shape[-2]) @ v.double()


@pytest.mark.parametrize("block_kv", [None, 1, 7, 64, 1000])
def test_relu_attention_matches_reference(block_kv):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=gen) for n in (33, 50, 50))
    out = relu_attention(q, k, v, scale=0.25, block_kv=block_kv)
    torch.testing.assert_close(out.double(), reference_relu_attention(q, k, v, 0.25), rtol=1e-5, atol=1e-6)


def test_relu_attention_mask_half_and_dispatch():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, n, 8, generator=gen) for n in (9, 12, 12))
    mask = torch.zeros(1, 1, 1, 12)
    mask[..., 8:] = -10000.0  # diffusers' additive mask: masked keys get weight 0 after the ReLU
    ref = reference_relu_attention(q, k, v, 8 ** -0.5, mask)
    torch.testing.assert_close(relu_attention(q, k, v, mask=mask, block_kv=5).double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attention(q, k, v, mask=mask, impl="relu").double(), ref, rtol=1e-5, atol=1e-6)
    half = relu_attention(q.half(), k.half(), v.half(), mask=mask)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.double(), ref, rtol=1e-2, atol=1e-3)
    # It is not softmax attention.
    assert (attention(q, k, v, impl="standard") - attention(q, k, v, impl="relu")).abs().max() > 1e-2
    with pytest.raises(ValueError, match="known: standard, flash, relu"):
        KernelAttnProcessor(attention="sigmoid")


def test_flag_value_and_patch():
    assert Flags(attention="relu").attention == "relu"
    with pytest.raises(ValueError, match="standard, flash, relu"):
        Flags(attention="linear")
    unet = build_unet("tiny")
    apply_flags(unet, Flags(attention="relu"))
    assert set(describe_patch(unet)["attention"]) == {"relu"}


def test_workload_reference_uses_relu_attention(tmp_path, monkeypatch):
    """The workload's reference for a relu variant is the unpatched model with ReLU attention: the fully
    patched relu variant agrees with it, and the softmax reference would have rejected it."""
    from harness.workloads.unet_iteration import reference_output

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    flags = Flags(softmax="optimized", groupnorm_gelu="fused", attention="relu", conv3x3="winograd")
    spec = JobSpec(job_id="j", run_id="r", device="host", variant="+relu", model=ModelRef(name="tiny"),
                   flags=flags.to_dict())
    inputs = example_inputs("tiny")
    unet = build_unet("tiny")
    apply_flags(unet, flags)
    out = unet(*inputs[:2], encoder_hidden_states=inputs[2], return_dict=False)[0]
    relu_ref = reference_output(spec, "cpu", inputs, attention="relu")
    softmax_ref = reference_output(spec, "cpu", inputs)
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()  # noqa: E731
    assert rel(out, relu_ref) < 1e-4
    assert rel(out, softmax_ref) > 1e-3
    assert len(list((tmp_path / "cache" / "reference").glob("*.pt"))) == 2  # separate cache keys
