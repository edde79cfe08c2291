"""Model loaders: a built-in config, a diffusers UNet config file, or a Python factory.

A suite's `model:` is exactly one of

* `name: sd14` (or the `model: sd14` shorthand): a built-in config of `harness.models.configs.MODELS`;
* `unet_config: path/to/config.json`: a diffusers `UNet2DConditionModel` config (the `unet/config.json`
  of a diffusers checkpoint). Keys starting with `_` are ignored; `sample_size` is required (it sets
  the latent shape). Inputs: batch 2 (classifier-free guidance), 77 text tokens,
  context width `cross_attention_dim`;
* `factory: "package.module:function"`: a Python function building the network.

The factory contract
--------------------
`function(seed: int = 0)` (the `seed` keyword is passed only if the function accepts it; the torch RNG
is seeded with it before the call either way) returns either

* a tuple `(module, input_shapes)`, or
* a `torch.nn.Module` with an `input_shapes` attribute,

where `input_shapes` is `{"sample": (B, C, H, W), "timestep": () or (B,), "context": (B, T, D)}`. The
module is called like a diffusers UNet: `module(sample, timestep, encoder_hidden_states=context,
return_dict=False)[0]` is the predicted noise, so its `forward` must accept `encoder_hidden_states`
and `return_dict` (return a tuple whose first element is the output). Subclassing or returning a
`diffusers.UNet2DConditionModel` satisfies it. The optimization flags apply to the standard blocks
the module contains (diffusers `Attention`, `nn.GroupNorm`, GELU/GEGLU, 3x3 `nn.Conv2d`); a flag that
finds none is reported as n/a. The factory is also called under `torch.device("meta")` to read the
input shapes without allocating weights; it should not depend on real tensors while building.
`harness.models.mobilediffusion:build_unet` is an example.
"""
from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable

SHAPE_KEYS = ("sample", "timestep", "context")
DEFAULT_TEXT_TOKENS = 77
DEFAULT_BATCH = 2


class ModelLoadError(ValueError):
    """A model reference that cannot be loaded; the message names the problem and the fix."""


# ---------------------------------------------------------------- unet_config

def read_unet_config(path: str | Path) -> dict[str, Any]:
    """The UNet2DConditionModel kwargs of a diffusers config.json (keys starting with `_` dropped)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(
            f"model.unet_config {str(p)!r} not found (relative paths are relative to the directory the "
            "harness runs in); give the path of a diffusers UNet config.json, e.g. the unet/config.json of "
            "a downloaded checkpoint")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"model.unet_config {str(p)!r} is not valid JSON ({exc}); fix the file, it must "
                             "be a diffusers UNet2DConditionModel config.json") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"model.unet_config {str(p)!r} must hold a JSON object of UNet2DConditionModel "
                             f"arguments, got {type(data).__name__}")
    cfg = {k: v for k, v in data.items() if not k.startswith("_")}
    if not isinstance(cfg.get("sample_size"), int):
        raise ModelLoadError(f"model.unet_config {str(p)!r} has no integer sample_size; add \"sample_size\": 64 "
                             "(the latent side, 64 for 512x512 images) so the input shapes are known")
    cross = cfg.get("cross_attention_dim", 1280)
    if not isinstance(cross, int):
        raise ModelLoadError(f"model.unet_config {str(p)!r}: cross_attention_dim {cross!r} is per block; this "
                             "harness feeds one text context, so give a single integer")
    return cfg


def config_model_config(ref: Any):
    """A ModelConfig (harness.models.configs) for a unet_config ModelRef."""
    from harness.models.configs import ModelConfig

    cfg = read_unet_config(ref.unet_config)
    cfg.setdefault("in_channels", 4)
    cfg.setdefault("cross_attention_dim", 1280)
    return ModelConfig(ref.name, cfg, text_tokens=DEFAULT_TEXT_TOKENS, batch=DEFAULT_BATCH,
                       description=f"UNet from config file {ref.unet_config}")


# ---------------------------------------------------------------- factory

def load_factory(path: str) -> Callable[..., Any]:
    """Import "package.module:function" and return the callable."""
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ModelLoadError(f"model.factory {path!r} is not 'package.module:function'; write the module's "
                             "import path, a colon, and the function name (e.g. "
                             "'harness.models.mobilediffusion:build_unet')")
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
        raise ModelLoadError(f"model.factory {path!r}: module {module_name!r} does not import "
                             f"({type(exc).__name__}: {exc}); check the spelling and that it is on PYTHONPATH "
                             "(run the harness from the directory that holds the package)") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise ModelLoadError(f"model.factory {path!r}: module {module_name!r} has no attribute {attr!r}; "
                                 f"callables there: {', '.join(public[:20]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"model.factory {path!r} is a {type(obj).__name__}, not callable; point it at a "
                             "function returning (module, input_shapes)")
    return obj


def _shapes(path: str, raw: Any) -> dict[str, tuple[int, ...]]:
    if not isinstance(raw, dict) or set(raw) != set(SHAPE_KEYS):
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ModelLoadError(f"model.factory {path!r} returned input shapes {got}; they must be a dict with "
                             "exactly the keys sample, timestep, context (e.g. {'sample': (2, 4, 64, 64), "
                             "'timestep': (), 'context': (2, 77, 768)})")
    out = {}
    for key in SHAPE_KEYS:
        shape = raw[key]
        if not isinstance(shape, (tuple, list)) or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ModelLoadError(f"model.factory {path!r}: input shape {key}={shape!r} must be a tuple of "
                                 "positive ints")
        out[key] = tuple(shape)
    if len(out["sample"]) != 4 or len(out["context"]) != 3 or len(out["timestep"]) > 1:
        raise ModelLoadError(f"model.factory {path!r}: shapes must be sample (B, C, H, W), timestep () or (B,), "
                             f"context (B, T, D); got {out}")
    return out


def call_factory(path: str, seed: int = 0) -> tuple[Any, dict[str, tuple[int, ...]]]:
    """Call the factory and check what it returned: (module in eval mode, input shapes)."""
    import torch

    fn = load_factory(path)
    try:
        accepts_seed = "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        accepts_seed = False
    torch.manual_seed(seed)
    out = fn(seed=seed) if accepts_seed else fn()
    if isinstance(out, tuple) and len(out) == 2:
        module, raw = out
    else:
        module, raw = out, getattr(out, "input_shapes", None)
        if raw is None:
            raise ModelLoadError(f"model.factory {path!r} returned a {type(out).__name__}; return "
                                 "(module, input_shapes) or a module with an input_shapes attribute "
                                 "(see harness.models.loaders)")
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"model.factory {path!r} returned a {type(module).__name__} as the model; it must "
                             "be a torch.nn.Module")
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not var_kw and not {"encoder_hidden_states", "return_dict"} <= set(params):
        raise ModelLoadError(f"model.factory {path!r}: {type(module).__name__}.forward must accept "
                             "(sample, timestep, encoder_hidden_states=..., return_dict=False) and return a "
                             "tuple whose first element is the output, like diffusers' UNet2DConditionModel")
    return module, _shapes(path, raw)


_SHAPE_CACHE: dict[tuple[str, int], dict[str, tuple[int, ...]]] = {}


def factory_input_shapes(path: str, seed: int = 0) -> dict[str, tuple[int, ...]]:
    """The factory's declared input shapes, read by building it on the meta device (no weight memory)."""
    import torch

    key = (path, seed)
    if key not in _SHAPE_CACHE:
        try:
            with torch.device("meta"):
                _, shapes = call_factory(path, seed)
        except ModelLoadError:
            raise
        except Exception:  # noqa: BLE001 - a factory that cannot build on meta is built for real
            module, shapes = call_factory(path, seed)
            del module
        _SHAPE_CACHE[key] = shapes
    return _SHAPE_CACHE[key]


# ---------------------------------------------------------------- any model

def input_shapes(model: Any, seed: int = 0) -> dict[str, tuple[int, ...]]:
    """{"sample", "timestep", "context"} shapes of one UNet iteration for a name, ModelConfig or ModelRef."""
    from harness.models.configs import ModelConfig, get_model_config

    if isinstance(model, str):
        cfg = get_model_config(model)
    elif isinstance(model, ModelConfig):
        cfg = model
    elif getattr(model, "kind", None) == "factory":
        return factory_input_shapes(model.factory, model.seed)
    elif getattr(model, "kind", None) == "unet_config":
        cfg = config_model_config(model)
    else:
        cfg = get_model_config(model.name)
    return {"sample": cfg.latent_shape, "timestep": (), "context": cfg.context_shape}
