"""The Triton (CUDA) kernels against fp32 references, and their dispatch from the model kernels.

Everything here needs a CUDA GPU and Triton; without them the tests are skipped with the reason
(CI machines have neither: run them through the device tool, e.g. `pytest -q tests/test_triton_kernels.py`).
"""
from __future__ import annotations

import pytest
import torch

from harness.models.kernels.triton import next_pow2, triton_available

needs_cuda = pytest.mark.skipif(not triton_available(),
                                reason="needs a CUDA GPU and Triton (none on this machine); the CPU paths "
                                       "are covered by tests/test_kernels.py")


def test_next_pow2() -> None:
    assert [next_pow2(n) for n in (1, 2, 3, 40, 64, 80, 160, 257)] == [1, 2, 4, 64, 64, 128, 256, 512]


def test_winograd_matrices_match_cook_toom() -> None:
    pytest.importorskip("triton", reason="Triton is not installed here (CPU-only torch)")
    from harness.models.kernels.triton.winograd import A_T, B_T
    from harness.models.kernels.winograd import cook_toom_matrices

    a_t, _, b_t = cook_toom_matrices(4)
    assert [[float(v) for v in r] for r in a_t] == [[float(v) for v in r] for r in A_T]
    assert [[float(v) for v in r] for r in b_t] == [[float(v) for v in r] for r in B_T]


def _cases():
    if not triton_available():
        return []
    from harness.models.kernels.triton.check import all_cases

    return all_cases(torch.float16, "cuda", small=True)


@needs_cuda
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_kernel_matches_fp32_reference(case) -> None:
    from harness.models.kernels.triton.check import run_case

    row = run_case(case, seed=1)
    assert row["triton_rel_err"] <= case.tolerance, row
    # Within torch_factor x of what the PyTorch fp16 op itself achieves (4x; Winograd F(4x4,3x3): 20x,
    # as documented in harness.models.kernels.winograd), or well under the tolerance.
    assert row["triton_rel_err"] <= max(case.torch_factor * row["torch_rel_err"], 1e-3), row


@needs_cuda
def test_bf16_flash_and_groupnorm() -> None:
    from harness.models.kernels.triton.check import attention_cases, groupnorm_cases, run_case

    for case in attention_cases(torch.bfloat16, "cuda", small=True)[:2] + groupnorm_cases(torch.bfloat16, "cuda", True)[:1]:
        assert run_case(case, seed=2)["triton_rel_err"] < 3e-2, case.name


@needs_cuda
def test_dispatch_from_model_kernels() -> None:
    """The harness kernels route CUDA fp16 tensors to Triton and agree with their CPU-style paths."""
    from harness.models.kernels import attention as attn
    from harness.models.kernels.groupnorm import group_norm
    from harness.models.kernels.triton.check import rel_error
    from harness.models.kernels.winograd import Conv3x3
    import torch.nn.functional as F

    gen = torch.Generator(device="cuda").manual_seed(3)
    q, k, v = (torch.randn((2, 8, 256, 40), generator=gen, device="cuda").half() for _ in range(3))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    for out in (attn.flash_attention(q, k, v), attn.optimized_softmax_attention(q, k, v)):
        assert out.shape == ref.shape and rel_error(out, ref) < 1e-2
        assert out.transpose(1, 2).is_contiguous()  # the Triton kernels' [B, T, H, d] output layout

    x = torch.randn((2, 64, 16, 16), generator=gen, device="cuda").half().contiguous(memory_format=torch.channels_last)
    y = group_norm(x, 32, None, None, 1e-5, impl="fused")
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_error(y, F.group_norm(x.float(), 32)) < 1e-2

    conv = torch.nn.Conv2d(64, 32, 3, padding=1).cuda().half()
    wconv = Conv3x3.from_conv(conv, impl="winograd").eval()
    with torch.no_grad():
        out = wconv(x)
        ref = F.conv2d(x.float(), conv.weight.float(), conv.bias.float(), padding=1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_error(out, ref) < 1e-2


@needs_cuda
def test_tiny_unet_all_optimizations_on_cuda() -> None:
    """The whole tiny UNet with every flag on (Triton kernels) matches the unpatched diffusers model."""
    from harness.models.kernels.triton.check import rel_error
    from harness.models.patch import apply_flags
    from harness.models.unet import build_unet, example_inputs
    from harness.variants import LADDER

    inputs = example_inputs("tiny", 0, "fp16", "cuda")
    ref_model = build_unet("tiny", None, 0, "fp32").cuda()
    with torch.no_grad():
        ref = ref_model(*(t.float() for t in inputs[:2]), encoder_hidden_states=inputs[2].float(),
                        return_dict=False)[0]
    for name, flags in LADDER:
        unet = build_unet("tiny", None, 0, "fp16")
        apply_flags(unet, flags)
        unet = unet.cuda().to(memory_format=torch.channels_last)
        with torch.no_grad():
            out = unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2], return_dict=False)[0]
        assert rel_error(out, ref) < 2e-2, name
