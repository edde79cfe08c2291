"""The per-shape FlashAttention choice on a CUDA GPU: every candidate on each attention shape of the SD 1.4
UNet (batch 2, 8 heads, fp16, the diffusers processor's strided views), its error against an fp32 softmax
reference, its median time (CUDA events, 50 calls, eager: small shapes include the launch), and what
`harness.models.kernels.attention.flash_attention` chose and took through the harness's dispatch.

    python bench/gpu_flash_choice.py
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.models.kernels import attention  # noqa: E402
from harness.models.kernels.choice import choices, events_ms  # noqa: E402

# (query tokens, key tokens, head dim) of SD 1.4's self- and cross-attention at 512x512
SHAPES = [(4096, 4096, 40), (4096, 77, 40), (1024, 1024, 80), (1024, 77, 80), (256, 256, 160), (256, 77, 160)]


def main() -> int:
    if not torch.cuda.is_available():
        print("bench/gpu_flash_choice.py needs a CUDA GPU; run it through the device tool", file=sys.stderr)
        return 2
    from harness.models.kernels.triton.attention import flash_attention as triton_flash

    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; ms (rel. error vs fp32)")
    names = ("triton", "sdpa_flash", "sdpa_cudnn")
    print(f"| shape | {' | '.join(names)} | chosen (through the harness) |\n|---|{'---|' * (len(names) + 1)}")
    for tq, tk, d in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(0)

        def heads(t: int) -> torch.Tensor:  # a [B, T, H*d] projection viewed as [B, H, T, d]
            return torch.randn(2, t, 8 * d, device="cuda", dtype=torch.float16, generator=g).view(2, t, 8, d).transpose(1, 2)

        q, k, v = heads(tq), heads(tk), heads(tk)
        scale = d ** -0.5
        ref = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * scale, -1) @ v.float()
        candidates = {"triton": lambda: triton_flash(q, k, v, scale),
                      "sdpa_flash": lambda: attention._sdpa(q, k, v, scale, "FLASH_ATTENTION"),
                      "sdpa_cudnn": lambda: attention._sdpa(q, k, v, scale, "CUDNN_ATTENTION"),
                      "chosen": lambda: attention.flash_attention(q, k, v, scale)}
        cells = []
        for fn in candidates.values():
            try:
                err = ((fn().float() - ref).abs().max() / ref.abs().max()).item()
                cells.append(f"{statistics.median(events_ms(fn, 50)):.3f} ({err:.0e})")
            except RuntimeError as exc:
                cells.append(f"failed: {str(exc).splitlines()[0][:40]}")
        print(f"| {tq}x{tk}, d={d} | {' | '.join(cells)} |")
    print(f"shapes per chosen kernel: {choices('flash')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
