"""Attention kernels switched by the `softmax` and `attention` flags, and a diffusers processor using them.

All three compute softmax(Q K^T * scale + mask) V for q [..., T_q, d], k [..., T_k, d], v [..., T_k, d_v]:

* `naive_attention` (the paper's baseline): every step is its own op on the full [T_q, T_k] matrix:
  scores = Q K^T * scale, row max, subtract, exp, row sum, divide, then P V. PyTorch materializes
  four [T_q, T_k] tensors (scores, shifted, exps, probabilities).
* `optimized_softmax_attention` (the paper's partially fused softmax, section 3.1): the row
  reductions (max, and sum of exp) are computed first; the exponent is fed straight into the product
  with V and the normalization is applied to the [T_q, d_v] output instead of the [T_q, T_k] matrix:
  out = (exp(S - m) V) / l. The normalized probability matrix P never exists. What PyTorch eager
  still materializes: the scores S and E = exp(S - m) (two [T_q, T_k] tensors instead of four), since
  eager PyTorch cannot fuse the exp into the matmul's operand load; a GPU kernel (or a compiler)
  computes exp(S - m) on the fly inside the reduction and inside the matmul, which is the paper's
  saving. As a graph (e.g. .tflite) it is BMM, MAX, SUB, EXP, SUM, BMM, DIV with the DIV on [T_q, d_v].
* `flash_attention` (FlashAttention, Dao et al. 2022): loop over key/value blocks of `block_kv`
  keys, keep a running row max m and running row sum l, rescale the output accumulator by
  exp(m_old - m_new) whenever the max grows, divide by l at the end. The largest score tensor is
  [T_q, block_kv] (or [block_q, block_kv] with query tiling); a full [T_q, T_k] matrix never exists.
  Statistics and the accumulator are fp32 for half-precision inputs, as in FlashAttention. On CUDA,
  fp16/bf16 inputs of a supported shape go to torch's flash SDPA kernel instead (`use_sdpa=True`).

* `relu_attention` (the `attention: relu` flag, MobileDiffusion's ReLU attention): softmax replaced
  by ReLU, out = relu(Q K^T * scale + mask) V / T_k. MobileDiffusion (Zhao et al., arXiv 2311.16567,
  section on transformer blocks: "finetune softmax into relu") swaps softmax for ReLU and fine-tunes
  the model; the normalization by the key length T_k is the L^-1 scaling of Wortsman et al.,
  "Replacing softmax with ReLU in Vision Transformers" (arXiv 2309.08586), our choice where the
  MobileDiffusion text gives no normalizer. Without row statistics, the kernel tiles over key/value
  blocks with no rescaling (a plain sum of relu(Q K_blk^T) V_blk); it is a different model from
  softmax attention, not an approximation of it.

The loops run over static block counts (shapes, not tensor values), so the kernels trace/export.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from harness.models.kernels.choice import fastest

SoftmaxImpl = Literal["naive", "optimized"]
AttentionImpl = Literal["standard", "flash", "relu"]

DEFAULT_FLASH_BLOCK = 128
_HALF = (torch.float16, torch.bfloat16)


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float | None, mask: torch.Tensor | None,
            upcast_attention: bool, upcast_softmax: bool) -> torch.Tensor:
    """S = Q K^T * scale + mask, materialized (shared first step of the two standard kernels)."""
    if upcast_attention:
        q, k = q.float(), k.float()
    scores = torch.matmul(q, k.transpose(-1, -2)) * _scale(q, scale)
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    if upcast_softmax:
        scores = scores.float()
    return scores


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                    mask: torch.Tensor | None = None, upcast_attention: bool = False,
                    upcast_softmax: bool = False) -> torch.Tensor:
    """Baseline: materialized scores, softmax as separate max/sub/exp/sum/div ops, then P V.

    `mask` is additive (broadcastable to [..., T_q, T_k]). As diffusers' Attention.get_attention_scores:
    `upcast_attention` computes Q K^T in fp32, `upcast_softmax` the softmax in fp32; the probabilities
    are cast back to v's dtype for the product with V.
    """
    scores = _scores(q, k, scale, mask, upcast_attention, upcast_softmax)
    row_max = scores.amax(dim=-1, keepdim=True)
    shifted = scores - row_max
    exps = torch.exp(shifted)
    row_sum = exps.sum(dim=-1, keepdim=True)
    probs = exps / row_sum
    return torch.matmul(probs.to(v.dtype), v)


def optimized_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                                mask: torch.Tensor | None = None, upcast_attention: bool = False,
                                upcast_softmax: bool = False) -> torch.Tensor:
    """Partially fused softmax: reductions first, then exp(S - m) V divided by the row sums.

    Same arguments as `naive_attention`; see the module docstring for what is materialized.
    On CUDA fp16/bf16 without a mask or upcast_attention, the Triton kernels of
    `harness.models.kernels.triton.attention` compute it (exp fused into the reductions and into P V).
    """
    if mask is None and not upcast_attention and _triton_attention_ok(q, k, v):
        from harness.models.kernels.triton.attention import optimized_softmax_attention as _triton_opt

        return _triton_opt(q, k, v, _scale(q, scale))
    scores = _scores(q, k, scale, mask, upcast_attention, upcast_softmax)
    # Step 1: the row reductions.
    row_max = scores.amax(dim=-1, keepdim=True)
    unnormalized = torch.exp(scores - row_max)
    row_sum = unnormalized.sum(dim=-1, keepdim=True)
    # Step 2: exp fed into the product with V; normalize the [T_q, d_v] result, not the [T_q, T_k] one.
    out = torch.matmul(unnormalized.to(v.dtype), v)
    return out / row_sum.to(out.dtype)


def _triton_attention_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the Triton attention kernels take these operands (CUDA fp16/bf16, 4-D, d <= 256)."""
    from harness.models.kernels.triton import enabled as _triton_enabled

    return (_triton_enabled(q) and q.dtype == k.dtype == v.dtype and q.dim() == k.dim() == v.dim() == 4
            and q.shape[-1] == k.shape[-1] == v.shape[-1] <= 256)


def _flash_sdpa_supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether torch's CUDA flash SDPA kernel accepts these operands."""
    return (q.is_cuda and q.dtype in _HALF and q.dtype == k.dtype == v.dtype and mask is None
            and q.dim() == 4 and q.shape[-1] == k.shape[-1] == v.shape[-1]
            and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                    mask: torch.Tensor | None = None, block_kv: int = DEFAULT_FLASH_BLOCK,
                    block_q: int | None = None, use_sdpa: bool = True) -> torch.Tensor:
    """Tiled attention with online softmax (FlashAttention); never builds a [T_q, T_k] matrix.

    `block_kv` keys per step; `block_q` queries per outer step (None: all queries at once, which is
    what the GPU's parallel query blocks compute). `use_sdpa`: on CUDA with fp16/bf16, 4-D
    [B, heads, T, d] operands, no mask and head dim a multiple of 8 up to 256, run torch's flash kernel.
    """
    if block_kv < 1 or (block_q is not None and block_q < 1):
        raise ValueError(f"flash attention block sizes must be positive, got block_kv={block_kv}, block_q={block_q}")
    scale = _scale(q, scale)
    if use_sdpa and mask is None and _triton_attention_ok(q, k, v):  # CUDA fp16/bf16: the fastest kernel
        return _gpu_flash(q, k, v, scale)
    if use_sdpa and _flash_sdpa_supported(q, k, v, mask):
        return _sdpa(q, k, v, scale, "FLASH_ATTENTION")

    t_q = q.shape[-2]
    if block_q is None or block_q >= t_q:
        return _flash_query_block(q, k, v, scale, mask, block_kv)
    outs = []
    for start in range(0, t_q, block_q):
        mask_blk = None
        if mask is not None:
            # A mask broadcast over queries (size 1 there) applies to every query block unchanged.
            mask_blk = mask if mask.shape[-2] == 1 else mask[..., start:start + block_q, :]
        outs.append(_flash_query_block(q[..., start:start + block_q, :], k, v, scale, mask_blk, block_kv))
    return torch.cat(outs, dim=-2)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: str) -> torch.Tensor:
    """torch's fused SDPA restricted to one backend (FLASH_ATTENTION: FlashAttention-2; CUDNN_ATTENTION:
    cuDNN's fused flash attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, backend)):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def _gpu_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """FlashAttention on a CUDA fp16/bf16 shape: whichever of our Triton kernel and torch's fused flash
    kernels (FlashAttention-2, cuDNN's) is fastest on this shape, measured once per process
    (`harness.models.kernels.choice`; HARNESS_FLASH=triton|sdpa_flash|sdpa_cudnn forces one). Every
    candidate is a one-pass online-softmax kernel: none builds a [T_q, T_k] matrix."""
    from harness.models.kernels.triton.attention import flash_attention as _triton_flash

    candidates = {"triton": lambda: _triton_flash(q, k, v, scale)}
    if _flash_sdpa_supported(q, k, v, None):
        candidates["sdpa_flash"] = lambda: _sdpa(q, k, v, scale, "FLASH_ATTENTION")
        candidates["sdpa_cudnn"] = lambda: _sdpa(q, k, v, scale, "CUDNN_ATTENTION")
    key = (tuple(q.shape), tuple(k.shape), q.stride(), k.stride(), q.dtype, q.device)
    return candidates[fastest("flash", key, candidates)]()


def _flash_query_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                       mask: torch.Tensor | None, block_kv: int) -> torch.Tensor:
    """Online-softmax loop over key/value blocks for one block of queries."""
    stat_dtype = torch.float32 if q.dtype in _HALF else q.dtype
    t_k = k.shape[-2]
    row_max = row_sum = acc = None
    for start in range(0, t_k, block_kv):
        k_blk = k[..., start:start + block_kv, :]
        v_blk = v[..., start:start + block_kv, :]
        scores = (torch.matmul(q, k_blk.transpose(-1, -2)) * scale).to(stat_dtype)  # [.., T_q, B_kv]
        if mask is not None:
            m_blk = mask if mask.shape[-1] == 1 else mask[..., start:start + block_kv]
            scores = scores + m_blk.to(stat_dtype)
        blk_max = scores.amax(dim=-1, keepdim=True)
        if acc is None:  # first block: initialize the running statistics from it
            new_max = blk_max
            p = torch.exp(scores - new_max)
            row_sum = p.sum(dim=-1, keepdim=True)
            acc = torch.matmul(p.to(v.dtype), v_blk).to(stat_dtype)
        else:
            new_max = torch.maximum(row_max, blk_max)
            correction = torch.exp(row_max - new_max)  # rescales what was accumulated so far
            p = torch.exp(scores - new_max)
            row_sum = row_sum * correction + p.sum(dim=-1, keepdim=True)
            acc = acc * correction + torch.matmul(p.to(v.dtype), v_blk).to(stat_dtype)
        row_max = new_max
    return (acc / row_sum).to(v.dtype)


def relu_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                   mask: torch.Tensor | None = None, block_kv: int | None = DEFAULT_FLASH_BLOCK,
                   upcast_attention: bool = False) -> torch.Tensor:
    """ReLU attention: relu(Q K^T * scale + mask) V / T_k, over key/value blocks of `block_kv` keys.

    `mask` is additive as for the softmax kernels (a large negative entry makes its weight 0 after the
    ReLU). Scores and the accumulator are fp32 for half-precision inputs (or with `upcast_attention`);
    `block_kv=None` computes the whole [T_q, T_k] matrix at once. See the module docstring for the source.
    """
    if block_kv is not None and block_kv < 1:
        raise ValueError(f"relu attention block size must be positive, got block_kv={block_kv}")
    scale = _scale(q, scale)
    acc_dtype = torch.float32 if (q.dtype in _HALF or upcast_attention) else q.dtype
    t_k = k.shape[-2]
    step = t_k if block_kv is None else block_kv
    acc = None
    for start in range(0, t_k, step):
        k_blk = k[..., start:start + step, :]
        v_blk = v[..., start:start + step, :]
        scores = torch.matmul(q.to(acc_dtype), k_blk.to(acc_dtype).transpose(-1, -2)) * scale
        if mask is not None:
            m_blk = mask if mask.shape[-1] == 1 else mask[..., start:start + step]
            scores = scores + m_blk.to(acc_dtype)
        part = torch.matmul(torch.relu(scores), v_blk.to(acc_dtype))
        acc = part if acc is None else acc + part
    return (acc / t_k).to(v.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
              mask: torch.Tensor | None = None, softmax: SoftmaxImpl = "naive",
              impl: AttentionImpl = "standard", block_kv: int = DEFAULT_FLASH_BLOCK,
              upcast_attention: bool = False, upcast_softmax: bool = False) -> torch.Tensor:
    """Attention by the flags: `impl="flash"` ignores `softmax` (flash has its own online softmax) and
    the upcast options (its softmax statistics are always fp32 for half-precision inputs); `impl="relu"`
    is ReLU attention (`relu_attention`), a different function from softmax attention."""
    if impl == "flash":
        return flash_attention(q, k, v, scale, mask, block_kv=block_kv)
    if impl == "relu":  # no softmax at all: `softmax` does not apply
        return relu_attention(q, k, v, scale, mask, block_kv=block_kv, upcast_attention=upcast_attention)
    if impl != "standard":
        raise ValueError(f"unknown attention impl {impl!r}; known: standard, flash, relu")
    if softmax == "naive":
        return naive_attention(q, k, v, scale, mask, upcast_attention, upcast_softmax)
    if softmax == "optimized":
        return optimized_softmax_attention(q, k, v, scale, mask, upcast_attention, upcast_softmax)
    raise ValueError(f"unknown softmax impl {softmax!r}; known: naive, optimized")


class KernelAttnProcessor:
    """diffusers attention processor running `attention()` with the chosen softmax/attention kernels.

    Mirrors diffusers' AttnProcessor / AttnProcessor2_0 (spatial_norm, 4-D inputs, attention mask,
    group_norm, norm_cross, q/k norms, heads, attn.scale, output projection + dropout,
    residual_connection, rescale_output_factor); only the softmax(QK^T)V core differs.
    """

    def __init__(self, softmax: SoftmaxImpl = "naive", attention: AttentionImpl = "standard",
                 block_kv: int = DEFAULT_FLASH_BLOCK) -> None:
        if softmax not in ("naive", "optimized"):
            raise ValueError(f"unknown softmax impl {softmax!r}; known: naive, optimized")
        if attention not in ("standard", "flash", "relu"):
            raise ValueError(f"unknown attention impl {attention!r}; known: standard, flash, relu")
        self.softmax: SoftmaxImpl = softmax
        self.attention: AttentionImpl = attention
        self.block_kv = block_kv

    def __repr__(self) -> str:
        return f"KernelAttnProcessor(softmax={self.softmax!r}, attention={self.attention!r}, block_kv={self.block_kv})"

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            # [batch * heads, 1 or T_q, T_k] -> [batch, heads, 1 or T_q, T_k]
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)

        hidden_states = attention(
            query, key, value, scale=attn.scale, mask=attention_mask, softmax=self.softmax,
            impl=self.attention, block_kv=self.block_kv,
            upcast_attention=bool(attn.upcast_attention), upcast_softmax=bool(attn.upcast_softmax),
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        if attn.rescale_output_factor != 1.0:  # SD's is 1.0: no elementwise pass for a division by one
            hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states
