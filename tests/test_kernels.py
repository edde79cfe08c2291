"""Each kernel that a flag switches, against the plain PyTorch op, on fresh random inputs."""
from __future__ import annotations

import random
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU as DiffusersGEGLU
from diffusers.models.activations import GELU as DiffusersGELU
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch.utils._python_dispatch import TorchDispatchMode

from harness.models.kernels.attention import (
    KernelAttnProcessor,
    attention,
    flash_attention,
    naive_attention,
    optimized_softmax_attention,
)
from harness.models.kernels.gelu import GEGLU, GELU, gelu, gelu_decomposed
from harness.models.kernels.groupnorm import GroupNorm, group_norm, group_norm_decomposed
from harness.models.kernels.winograd import (
    Conv3x3,
    cook_toom_matrices,
    winograd_conv2d,
    winograd_filter_transform,
)

# ---------------------------------------------------------------- attention

# (T_q, T_k, head_dim): SD-like self-attention (256 tokens, head dims 40/80) and cross-attention (77 text
# tokens), plus sizes that no block size divides.
ATTN_SHAPES = [(256, 256, 40), (256, 77, 80), (100, 300, 40), (64, 77, 80)]


def _qkv(t_q: int, t_k: int, d: int, seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, t, d, generator=gen) for t in (t_q, t_k, t_k))
    return q.to(dtype), k.to(dtype), v.to(dtype)


KERNELS = {
    "naive": naive_attention,
    "optimized": optimized_softmax_attention,
    "flash": lambda q, k, v, **kw: flash_attention(q, k, v, block_kv=64, **kw),
    "flash_tiled_q": lambda q, k, v, **kw: flash_attention(q, k, v, block_kv=48, block_q=100, **kw),
}


@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_attention_matches_sdpa_fp32(kernel, shape):
    q, k, v = _qkv(*shape, seed=sum(shape))
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(KERNELS[kernel](q, k, v), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_attention_with_scale_and_additive_mask(kernel):
    q, k, v = _qkv(96, 77, 40, seed=3)
    mask = torch.randn(2, 1, 1, 77, generator=torch.Generator().manual_seed(4))  # per-key bias
    full_mask = torch.randn(2, 3, 96, 77, generator=torch.Generator().manual_seed(5))
    for m in (mask, full_mask):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=0.3)
        torch.testing.assert_close(KERNELS[kernel](q, k, v, scale=0.3, mask=m), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 4e-2)])
@pytest.mark.parametrize("kernel", ["naive", "optimized", "flash"])
def test_attention_half_precision_close_to_fp32(kernel, dtype, tol):
    q, k, v = _qkv(256, 77, 40, seed=6)
    expected = F.scaled_dot_product_attention(q, k, v)
    out = KERNELS[kernel](q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype
    assert (out.float() - expected).abs().max().item() < tol


def test_attention_dispatch_by_flags():
    q, k, v = _qkv(70, 70, 16, seed=7)
    expected = F.scaled_dot_product_attention(q, k, v)
    for softmax in ("naive", "optimized"):
        for impl in ("standard", "flash"):
            torch.testing.assert_close(attention(q, k, v, softmax=softmax, impl=impl, block_kv=32), expected,
                                       rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="softmax"):
        attention(q, k, v, softmax="fast")
    with pytest.raises(ValueError, match="attention impl"):
        attention(q, k, v, impl="paged")


class _ShapeRecorder(TorchDispatchMode):
    """Records (op name, output shape) of every aten op run inside it."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.ops.append((func.overloadpacket.__name__, tuple(out.shape)))
        return out


def _square_ops(fn, t_q=96, t_k=80, d=16) -> list[str]:
    """The ops of `fn` whose output is a [.., T_q, T_k] matrix."""
    q, k, v = _qkv(t_q, t_k, d, seed=8)
    with _ShapeRecorder() as rec:
        fn(q, k, v)
    return [name for name, shape in rec.ops if shape[-2:] == (t_q, t_k)]


def test_what_each_kernel_materializes():
    naive = _square_ops(naive_attention)
    optimized = _square_ops(optimized_softmax_attention)
    flash = _square_ops(lambda q, k, v: flash_attention(q, k, v, block_kv=32))
    # naive normalizes the [T_q, T_k] matrix; optimized never builds the normalized probabilities
    assert "div" in naive
    assert "div" not in optimized
    assert len(optimized) < len(naive)
    # flash never builds any [T_q, T_k] tensor
    assert flash == []


def _attention_module(cross: bool, seed: int, **kwargs) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(query_dim=32, cross_attention_dim=24 if cross else None, heads=4, dim_head=8, **kwargs)
    return attn.eval()


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("softmax,impl", [("naive", "standard"), ("optimized", "standard"), ("naive", "flash")])
def test_processor_matches_diffusers(cross, softmax, impl):
    attn = _attention_module(cross, seed=10)
    gen = torch.Generator().manual_seed(11)
    hidden = torch.randn(2, 130, 32, generator=gen)
    context = torch.randn(2, 77, 24, generator=gen) if cross else None
    with torch.no_grad():
        attn.set_processor(AttnProcessor())
        expected = attn(hidden, encoder_hidden_states=context)
        attn.set_processor(KernelAttnProcessor(softmax, impl, block_kv=32))
        out = attn(hidden, encoder_hidden_states=context)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_processor_4d_input_group_norm_residual_rescale_mask():
    attn = _attention_module(False, seed=12, norm_num_groups=8, residual_connection=True,
                             rescale_output_factor=2.0, bias=True)
    gen = torch.Generator().manual_seed(13)
    hidden = torch.randn(2, 32, 6, 7, generator=gen)  # [B, C, H, W] as in VAE mid-block attention
    mask = torch.zeros(2, 1, 42)
    mask[:, :, -5:] = -1e4  # mask the last five keys
    with torch.no_grad():
        for ref_processor in (AttnProcessor(), AttnProcessor2_0()):
            attn.set_processor(ref_processor)
            expected = attn(hidden, attention_mask=mask)
            for softmax, impl in (("naive", "standard"), ("optimized", "standard"), ("naive", "flash")):
                attn.set_processor(KernelAttnProcessor(softmax, impl, block_kv=16))
                torch.testing.assert_close(attn(hidden, attention_mask=mask), expected, rtol=1e-5, atol=1e-5)


def test_processor_spatial_norm():
    attn = _attention_module(False, seed=14, spatial_norm_dim=5)
    gen = torch.Generator().manual_seed(15)
    hidden = torch.randn(1, 32, 4, 4, generator=gen)
    temb = torch.randn(1, 5, 2, 2, generator=gen)
    with torch.no_grad():
        attn.set_processor(AttnProcessor())
        expected = attn(hidden, temb=temb)
        attn.set_processor(KernelAttnProcessor("optimized", "standard"))
        torch.testing.assert_close(attn(hidden, temb=temb), expected, rtol=1e-5, atol=1e-5)


def test_processor_upcast_in_half_precision():
    attn = _attention_module(True, seed=16, upcast_attention=True, upcast_softmax=True).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(17)
    hidden = torch.randn(2, 64, 32, generator=gen).to(torch.bfloat16)
    context = torch.randn(2, 77, 24, generator=gen).to(torch.bfloat16)
    with torch.no_grad():
        attn.set_processor(AttnProcessor())
        expected = attn(hidden, encoder_hidden_states=context)
        attn.set_processor(KernelAttnProcessor("naive", "standard"))
        out = attn(hidden, encoder_hidden_states=context)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------- GroupNorm

@pytest.mark.parametrize("shape,groups", [((2, 64, 16, 16), 32), ((2, 40, 9, 7), 8), ((3, 12, 50), 4)])
@pytest.mark.parametrize("impl", ["decomposed", "fused"])
def test_group_norm_matches_torch(impl, shape, groups):
    gen = torch.Generator().manual_seed(20)
    x = torch.randn(*shape, generator=gen) * 3 + 1
    weight, bias = torch.randn(shape[1], generator=gen), torch.randn(shape[1], generator=gen)
    expected = F.group_norm(x, groups, weight, bias, eps=1e-6)
    torch.testing.assert_close(group_norm(x, groups, weight, bias, 1e-6, impl), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(group_norm(x, groups, None, None, 1e-6, impl), F.group_norm(x, groups, eps=1e-6),
                               rtol=1e-5, atol=1e-5)


def test_group_norm_module_keeps_parameters():
    torch.manual_seed(21)
    norm = torch.nn.GroupNorm(8, 32, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 32, 5, 5)
    for impl in ("decomposed", "fused"):
        new = GroupNorm.from_group_norm(norm, impl)
        assert new.weight is norm.weight and new.bias is norm.bias
        assert (new.num_groups, new.eps, new.impl) == (8, 1e-6, impl)
        assert list(new.state_dict()) == list(norm.state_dict())
        torch.testing.assert_close(new(x), norm(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        group_norm_decomposed(torch.randn(1, 10, 4), 3)


def test_group_norm_decomposed_half_precision():
    x = torch.randn(2, 64, 16, 16, generator=torch.Generator().manual_seed(22))
    expected = F.group_norm(x, 32)
    out = group_norm_decomposed(x.half(), 32)
    assert out.dtype == torch.float16
    assert (out.float() - expected).abs().max().item() < 1e-2


# ---------------------------------------------------------------- GELU / GEGLU

def test_erf_gelu_matches_torch():
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    torch.testing.assert_close(gelu_decomposed(x), F.gelu(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gelu_decomposed(x, "tanh"), F.gelu(x, approximate="tanh"), rtol=1e-12, atol=1e-12)
    x32 = torch.randn(1000, generator=torch.Generator().manual_seed(30)) * 4
    for impl in ("decomposed", "fused"):
        torch.testing.assert_close(gelu(x32, impl), F.gelu(x32), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="GELU impl"):
        gelu(x32, "lut")


@pytest.mark.parametrize("impl", ["decomposed", "fused"])
def test_geglu_replacement_matches_diffusers(impl):
    torch.manual_seed(31)
    ref = DiffusersGEGLU(40, 160).eval()
    new = GEGLU.from_geglu(ref, impl)
    assert new.proj is ref.proj
    assert list(new.state_dict()) == list(ref.state_dict()) == ["proj.weight", "proj.bias"]
    x = torch.randn(2, 77, 40)
    with torch.no_grad():
        torch.testing.assert_close(new(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_module_replacement_matches_diffusers(approximate):
    torch.manual_seed(32)
    ref = DiffusersGELU(16, 24, approximate=approximate).eval()
    new = GELU.from_gelu(ref, "decomposed")
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(new(x), ref(x), rtol=1e-5, atol=1e-5)
    assert list(new.state_dict()) == list(ref.state_dict())


# ---------------------------------------------------------------- Winograd

@pytest.mark.parametrize("m", [2, 4, 6])
def test_cook_toom_1d_identity_exact(m):
    """A^T [(G g) * (B^T d)] equals the m-output 3-tap correlation, exactly in rationals."""
    a_t, g_mat, b_t = cook_toom_matrices(m)
    n = m + 2
    assert (len(a_t), len(a_t[0]), len(g_mat), len(g_mat[0]), len(b_t), len(b_t[0])) == (m, n, n, 3, n, n)
    rng = random.Random(m)
    for _ in range(20):
        d = [Fraction(rng.randint(-50, 50), rng.randint(1, 9)) for _ in range(n)]
        g = [Fraction(rng.randint(-50, 50), rng.randint(1, 9)) for _ in range(3)]
        gg = [sum(row[j] * g[j] for j in range(3)) for row in g_mat]
        bd = [sum(row[j] * d[j] for j in range(n)) for row in b_t]
        y = [sum(row[j] * gg[j] * bd[j] for j in range(n)) for row in a_t]
        assert y == [sum(d[i + k] * g[k] for k in range(3)) for i in range(m)]


def test_cook_toom_f43_is_lavins_transform():
    """Points 0, +-1, +-2, inf give Lavin & Gray's published F(4,3) input transform."""
    _, _, b_t = cook_toom_matrices(4)
    assert b_t == [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
    with pytest.raises(ValueError, match="distinct"):
        cook_toom_matrices(2, 3, (Fraction(0), Fraction(1), Fraction(1)))


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("size", [(13, 17), (8, 8), (1, 5)])
def test_winograd_matches_conv2d(m, size):
    gen = torch.Generator().manual_seed(40 + m)
    x = torch.randn(2, 6, *size, generator=gen)
    w = torch.randn(5, 6, 3, 3, generator=gen)
    b = torch.randn(5, generator=gen)
    # fp32 rounding grows with the tile size (larger interpolation points): error relative to the output scale
    tol = {2: 2e-6, 4: 1e-5, 6: 5e-5}[m]

    def assert_matches(out, expected):
        assert out.shape == expected.shape
        assert (out - expected).abs().max().item() <= tol * expected.abs().max().item()

    assert_matches(winograd_conv2d(x, w, b, padding=1, m=m), F.conv2d(x, w, b, padding=1))
    if min(size) >= 3:
        assert_matches(winograd_conv2d(x, w, None, padding=0, m=m), F.conv2d(x, w, padding=0))


def test_winograd_filter_transform_shape_and_errors():
    w = torch.randn(7, 3, 3, 3)
    assert winograd_filter_transform(w, 4).shape == (36, 3, 7)
    with pytest.raises(ValueError, match="3x3"):
        winograd_filter_transform(torch.randn(7, 3, 5, 5), 4)
    with pytest.raises(ValueError, match="channels"):
        winograd_conv2d(torch.randn(1, 4, 8, 8), w, m=4)


def test_conv3x3_module_winograd_and_fallback():
    torch.manual_seed(41)
    convs = {
        "3x3 s1": torch.nn.Conv2d(8, 16, 3, padding=1),
        "3x3 s2 (downsampler)": torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
        "3x3 groups 2": torch.nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),
        "3x3 dilated": torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2),
    }
    x = torch.randn(2, 8, 11, 9)
    for name, conv in convs.items():
        for impl in ("direct", "winograd"):
            new = Conv3x3.from_conv(conv, impl=impl, tile=4)
            assert new.weight is conv.weight and new.bias is conv.bias
            assert list(new.state_dict()) == list(conv.state_dict())
            assert new.is_winograd == (impl == "winograd" and name == "3x3 s1"), name
            with torch.no_grad():
                torch.testing.assert_close(new(x), conv(x), rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="tile"):
        Conv3x3(4, 4, 3, impl="winograd", tile=3)


def test_conv3x3_filter_transform_cache_follows_weight_updates():
    torch.manual_seed(42)
    conv = Conv3x3(4, 4, 3, padding=1, impl="winograd", tile=4).requires_grad_(False)
    x = torch.randn(1, 4, 10, 10)
    conv(x)
    first = conv.transformed_weight()
    assert conv.transformed_weight() is first  # cached
    conv.weight.copy_(torch.randn(4, 4, 3, 3))  # in-place update, e.g. load_state_dict
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=2e-5, atol=2e-5)
    assert conv.transformed_weight() is not first


def test_conv3x3_is_differentiable_when_training():
    torch.manual_seed(43)
    conv = Conv3x3(3, 2, 3, padding=1, impl="winograd", tile=2)
    x = torch.randn(1, 3, 6, 6)
    conv(x).square().sum().backward()
    grad_w = conv.weight.grad.clone()
    conv.weight.grad = None
    F.conv2d(x, conv.weight, conv.bias, padding=1).square().sum().backward()
    torch.testing.assert_close(grad_w, conv.weight.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_winograd_half_precision_on_cpu(dtype, tol):
    gen = torch.Generator().manual_seed(44)
    x = torch.randn(1, 32, 13, 17, generator=gen)
    w = torch.randn(32, 32, 3, 3, generator=gen) / 17
    expected = F.conv2d(x, w, padding=1)
    out = winograd_conv2d(x.to(dtype), w.to(dtype), m=4)
    assert out.dtype == dtype
    rel = ((out.float() - expected).norm() / expected.norm()).item()
    assert rel < tol


def test_winograd_f43_fp16_transforms_lose_precision_vs_direct():
    """Documents the measured fp16 cost of F(4x4, 3x3) when transforms run in fp16 (see winograd.py)."""
    gen = torch.Generator().manual_seed(45)
    x = torch.randn(1, 64, 24, 24, generator=gen, dtype=torch.float64)
    w = torch.randn(64, 64, 3, 3, generator=gen, dtype=torch.float64) / 24
    expected = F.conv2d(x, w, padding=1)

    def rel(y):
        return ((y.double() - expected).norm() / expected.norm()).item()

    direct = rel(F.conv2d(x.half().float(), w.half().float(), padding=1).half())
    wino = rel(winograd_conv2d(x.half(), w.half(), m=4, compute_dtype=torch.float16))
    assert direct < 1e-3
    assert 1.5 * direct < wino < 2e-2


# ---------------------------------------------------------------- CUDA (run on a GPU machine)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_flash_dispatches_to_sdpa_flash_and_matches(dtype):
    q, k, v = (t.cuda() for t in _qkv(1024, 1024, 40, seed=50, dtype=dtype))
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    out = flash_attention(q, k, v)
    tiled = flash_attention(q, k, v, use_sdpa=False)
    assert (out.float() - expected).abs().max().item() < 2e-2
    assert (tiled.float() - expected).abs().max().item() < 2e-2
    for fn in (naive_attention, optimized_softmax_attention):
        assert (fn(q, k, v).float() - expected).abs().max().item() < 2e-2


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("m", [2, 4, 6])
def test_cuda_winograd(m):
    gen = torch.Generator().manual_seed(51)
    x = torch.randn(2, 64, 33, 31, generator=gen)
    w = torch.randn(64, 64, 3, 3, generator=gen) / 24
    b = torch.randn(64, generator=gen)
    expected = F.conv2d(x.double(), w.double(), b.double(), padding=1)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, {2: 3e-3, 4: 1e-2, 6: 3e-2}[m])):
        out = winograd_conv2d(x.cuda().to(dtype), w.cuda().to(dtype), b.cuda().to(dtype), m=m)
        rel = ((out.double().cpu() - expected).norm() / expected.norm()).item()
        assert rel < tol, (dtype, rel)
