"""Reference implementations that each optimization flag switches (see harness.variants.Flags).

- `attention`: naive / partially fused ("optimized") softmax attention, tiled FlashAttention, and the
  diffusers processor `KernelAttnProcessor` that runs them.
- `groupnorm`: decomposed / fused GroupNorm and the drop-in `GroupNorm` module.
- `gelu`: erf-formula / fused GELU and drop-in `GEGLU` / `GELU` modules.
- `winograd`: Cook-Toom Winograd F(m x m, 3 x 3) and the drop-in `Conv3x3` module.

`harness.models.patch.apply_flags` installs them into a UNet. Submodules are imported on demand (the
GELU one imports diffusers).
"""
