"""The .mlpackage artifact: conversion with coremltools (torch.export path, mlprogram, iOS18 target),
the MIL program read back from the spec, and the check that Linux can do.

Conversion: the variant's UNet (`harness.export.rewrite`) is exported with torch.export and given to
`coremltools.convert(minimum_deployment_target=iOS18, convert_to="mlprogram", compute_precision=FLOAT16
for fp16)`. With iOS18, F.scaled_dot_product_attention (attention=flash) becomes the fused
scaled_dot_product_attention op. groupnorm_gelu goes through the pass pipeline: `decomposed` removes
the fusion passes in `mapping.COREML_FUSION_PASSES` (so the erf-formula GELU and the primitive
GroupNorm stay primitive), `fused` writes F.group_norm/F.gelu and keeps the default pipeline (a gelu
op; Core ML has no GroupNorm op, so coremltools lowers F.group_norm to its own reshape/reduce_mean/...
sequence). Compute units are a load-time option on the device, not part of the artifact.

int8 weights: the fp16 mlprogram through coremltools' linear_quantize_weights pass (what
`coremltools.optimize.coreml.linear_quantize_weights` runs: linear_symmetric, int8, per channel),
appended to the conversion's pass pipeline; the package holds int8 consts and constexpr_blockwise_shift_scale
ops that dequantize them when the model loads (not counted as ops by `read_graph`).

Core ML predictions run only on Apple OSes: the check loads the spec back and verifies its inputs,
outputs and op set against the flags, and measures the error of the exact torch program that was
converted (the export rewrite) against the PyTorch reference.

Each op's category is kept in the package's user-defined metadata (`harness.op_categories`: torch
node name -> category, from torch.export's module stack), since MIL op names carry no module path.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.export.graph import Graph, OpRecord, TensorRecord, categorize

CATEGORY_METADATA_KEY = "harness.op_categories"
_DTYPE_BYTES = {"FLOAT16": 2, "FLOAT32": 4, "FLOAT64": 8, "BFLOAT16": 2, "INT8": 1, "UINT8": 1,
                "INT16": 2, "UINT16": 2, "INT32": 4, "UINT32": 4, "INT64": 8, "UINT64": 8, "BOOL": 1,
                "INT4": 0.5, "UINT4": 0.5, "UINT2": 0.25, "UINT1": 0.125, "UINT3": 0.375, "UINT6": 0.75}
_SUFFIXES = ("_cast_fp16", "_to_fp16", "_cast_fp32", "_fp16", "_fp32")


def _module_category(node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    _, cls = list(stack.values())[-1]
    name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    name = name.rsplit(".", 1)[-1]
    category = categorize("", location=f"x.{name}_m")
    return None if category == "other" else category


def _op_categories(mlmodel: Any, handle_category: dict[int, str]) -> dict[str, str]:
    """MIL op (first output name) -> category, through each op's EXIR_DEBUG_HANDLE scope."""
    from coremltools.converters.mil.mil.scope import ScopeSource

    out: dict[str, str] = {}
    program = getattr(mlmodel, "_mil_program", None)
    if program is None:
        return out

    def visit(block) -> None:
        for op in block.operations:
            handles = op.scopes.get(ScopeSource.EXIR_DEBUG_HANDLE) or []
            category = next((handle_category[h] for h in handles if h in handle_category), None)
            if category and op.outputs:
                out[op.outputs[0].name] = category
            for inner in op.blocks:
                visit(inner)

    for function in program.functions.values():
        visit(function)
    return out


def _drop_aliases(program: Any) -> Any:
    """Remove aten.alias nodes (a no-op view; the CLIP text model's position_ids slice becomes one),
    which coremltools' torch.export frontend does not convert."""
    import torch

    graph = program.graph_module.graph
    removed = 0
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in (torch.ops.aten.alias.default, torch.ops.aten.alias_copy.default):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            removed += 1
    if removed:
        graph.lint()
        program.graph_module.recompile()
    return program


INT8_MIN_ELEMENTS = 2048  # coremltools' OpLinearQuantizerConfig weight_threshold default


def _round_weights_int8(module: Any) -> int:
    """Round `module`'s weights (>= 2 dims, >= INT8_MIN_ELEMENTS elements) as linear_quantize_weights
    does: symmetric int8 per output channel (axis 0), scale max|w| / 127. Returns how many."""
    import torch

    n = 0
    with torch.no_grad():
        for param in list(module.parameters()) + list(module.buffers()):
            if param.is_floating_point() and param.dim() >= 2 and param.numel() >= INT8_MIN_ELEMENTS:
                scale = param.abs().amax(dim=tuple(range(1, param.dim())), keepdim=True) / 127.0
                scale = torch.where(scale > 0, scale, torch.ones_like(scale))
                param.copy_(torch.clamp(torch.round(param / scale), -127, 127) * scale)
                n += 1
    return n


INT8_CONFIG = {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}


def add_int8_pass(pipeline: Any) -> Any:
    """Append coremltools' `compression::linear_quantize_weights` pass (what
    coremltools.optimize.coreml.linear_quantize_weights runs: int8, linear_symmetric, per channel;
    weights under 2048 elements stay fp16) to the conversion's own pass pipeline. Calling
    linear_quantize_weights on the converted model instead would run the default pipeline a second
    time and fuse back what groupnorm_gelu=decomposed keeps primitive."""
    import coremltools as ct

    op_config = ct.optimize.coreml.OpLinearQuantizerConfig(**INT8_CONFIG)
    name = "compression::linear_quantize_weights"
    pipeline.append_pass(name)
    pipeline.set_options(name, {"config": ct.optimize.coreml.OptimizationConfig(global_config=op_config),
                                "joint_compression": False})
    return pipeline


def convert(cfg: Any, weights: str | None, seed: int, flags: Any, dtype: str, out_path: Path,
            progress: Callable[[str, int, int], None], component: str = "unet") -> dict[str, Any]:
    """Convert the variant's `component` to `out_path` (.mlpackage). Returns facts for Artifact.meta."""
    import coremltools as ct
    import torch

    from harness.export.mapping import COREML_FUSION_PASSES
    from harness.export.rewrite import INPUT_NAMES, example_inputs, export_model, reference_model
    from harness.models.patch import flag_coverage

    if dtype not in ("fp16", "fp32", "int8"):
        raise ValueError(f"Core ML artifacts hold fp16, fp32 or int8 weights, not {dtype!r}")
    torch.set_grad_enabled(False)
    progress("build", 0, 1)
    model = export_model(cfg, weights, seed, flags, "coreml", component)
    inner = next(iter(model.children()))
    coverage = flag_coverage(inner)
    inputs = example_inputs(cfg, seed, component)
    progress("export", 0, 1)
    program = _drop_aliases(torch.export.export(model, inputs).run_decompositions({}))
    # Tag every node with a debug handle: coremltools keeps it as each MIL op's EXIR_DEBUG_HANDLE
    # scope through its passes, which maps the final ops back to their module's category.
    handle_category: dict[int, str] = {}
    for handle, node in enumerate(program.graph.nodes, start=1):
        if node.op == "call_function":
            node.meta["debug_handle"] = handle
            category = _module_category(node)
            if category:
                handle_category[handle] = category
    # The torch program coremltools converts, against the reference (the part Linux can run).
    converted = program.module()
    if dtype == "int8":  # what linear_quantize_weights will do to the weights, in torch
        _round_weights_int8(converted)
    out = converted(*inputs).float()
    del converted
    ref = reference_model(cfg, weights, seed, component, flags)(*inputs).float()
    torch_abs = float((out - ref).abs().max())
    torch_rel = torch_abs / max(float(ref.abs().max()), 1e-12)
    output_shape = list(out.shape)
    del out, ref
    pipeline = ct.PassPipeline.DEFAULT
    removed: list[str] = []
    # The text encoder is converted as is (the flags do not apply): the default pass pipeline.
    if flags.groupnorm_gelu == "decomposed" and component != "text_encoder":
        removed = [p for p in COREML_FUSION_PASSES if p in pipeline.passes]
        pipeline.remove_passes(removed)
    if dtype == "int8":
        add_int8_pass(pipeline)
    progress("convert", 0, 1)
    mlmodel = ct.convert(
        program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
        compute_precision=ct.precision.FLOAT32 if dtype == "fp32" else ct.precision.FLOAT16,
        pass_pipeline=pipeline, skip_model_load=True,
    )
    categories = _op_categories(mlmodel, handle_category)
    mlmodel.user_defined_metadata[CATEGORY_METADATA_KEY] = json.dumps(categories, separators=(",", ":"))
    progress("write", 0, 1)
    mlmodel.save(str(out_path))
    facts = {
        "converter": "coremltools.convert (torch.export program, mlprogram, iOS18)",
        "compute_precision": "FLOAT32" if dtype == "fp32" else "FLOAT16",
        "removed_passes": removed,
        "fusion_passes_run": [p for p in COREML_FUSION_PASSES if p not in removed],
        "coverage": coverage,
        "torch_program_check": {"max_abs_error": torch_abs, "rel_error": torch_rel,
                                **({"weights": "rounded to int8 as linear_quantize_weights does "
                                               "(symmetric, per output channel)"} if dtype == "int8" else {})},
        "input_shapes": {n: list(t.shape) for n, t in zip(INPUT_NAMES[component], inputs)},
        "output_shape": output_shape,
    }
    if dtype == "int8":
        facts["weights"] = ("int8 weight-only: coremltools.optimize.coreml.linear_quantize_weights "
                            "(linear_symmetric, per_channel) on the fp16 mlprogram")
    if component != "unet":
        facts["component"] = component
    return facts


def expected_ops(flags: Any, coverage: dict[str, int]) -> tuple[dict[str, int], set[str], dict[str, int]]:
    """(op type -> exact count it must have, op types it must not have, op type -> minimum count) for
    these flags."""
    need: dict[str, int] = {}
    forbid: set[str] = set()
    at_least: dict[str, int] = {}
    attn = coverage.get("attention", 0)
    if flags.attention == "relu":
        at_least["relu"] = attn  # the model may have ReLUs of its own
        forbid |= {"softmax", "reduce_max", "scaled_dot_product_attention"}
    elif flags.attention == "flash":
        need["scaled_dot_product_attention"] = attn
        forbid |= {"softmax", "reduce_max"}
    else:
        forbid.add("scaled_dot_product_attention")
        if flags.softmax == "optimized":
            need["softmax"] = attn
            forbid.add("inverse")
        else:
            need["reduce_max"] = attn
            forbid.add("softmax")
    if flags.groupnorm_gelu == "fused":
        need["gelu"] = coverage.get("gelu", 0)
        forbid.add("erf")
    else:
        need["erf"] = coverage.get("gelu", 0)
        forbid.add("gelu")
    return need, forbid, at_least


def reference_check(path: Path, cfg: Any, weights: str | None, seed: int, flags: Any,
                    facts: dict[str, Any], component: str = "unet") -> dict[str, Any]:
    """Load the spec back: inputs, outputs and op set as the flags say (the text encoder: inputs and
    outputs only, the flags do not apply to it); plus the converted torch program's error."""
    graph = read_graph(path)
    problems: list[str] = []
    spec_inputs = graph.extra["input_shapes"]
    want = facts["input_shapes"]
    for name, shape in want.items():
        if shape and spec_inputs.get(name) != shape:  # (a 0-d timestep has no tensor shape in the spec)
            problems.append(f"input {name!r} has shape {spec_inputs.get(name)}, expected {shape}")
    if len(spec_inputs) != len(want):
        problems.append(f"expected {len(want)} inputs ({', '.join(want)}), found {sorted(spec_inputs)}")
    outs = graph.extra["output_shapes"]
    if list(outs.values()) != [facts["output_shape"]]:
        problems.append(f"expected one output of shape {facts['output_shape']}, found {outs}")
    hist = graph.op_histogram()
    if component != "text_encoder":
        need, forbid, at_least = expected_ops(flags, facts["coverage"])
        for op, count in need.items():
            if hist.get(op, 0) != count:
                problems.append(f"expected {count} {op} op(s), found {hist.get(op, 0)}")
        for op, count in at_least.items():
            if hist.get(op, 0) < count:
                problems.append(f"expected at least {count} {op} op(s), found {hist.get(op, 0)}")
        for op in sorted(forbid):
            if hist.get(op, 0):
                problems.append(f"found {hist[op]} {op} op(s), which these flags rule out")
    if facts.get("weights", "").startswith("int8") and not graph.weight_bytes_by_dtype.get("int8"):
        problems.append("int8 weights were asked for but the package holds no int8 weights")
    torch_check = facts["torch_program_check"]
    return {"method": "Core ML spec loaded back (inputs, outputs, op set); the converted torch "
                      "program vs the PyTorch reference (Core ML cannot predict on Linux)",
            "max_abs_error": None, "rel_error": None,
            "torch_program_rel_error": torch_check["rel_error"],
            "torch_program_max_abs_error": torch_check["max_abs_error"],
            "spec_ok": not problems, "spec_problems": "; ".join(problems)}


# ------------------------------------------------------------------------------------ reading

def _dtype_name(value: int) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(value)


def _tensor_info(value_type) -> tuple[tuple[int, ...], str] | None:
    if not value_type.HasField("tensorType"):
        return None
    tt = value_type.tensorType
    shape = tuple(int(d.constant.size) if d.HasField("constant") else -1 for d in tt.dimensions)
    return shape, _dtype_name(tt.dataType)


def _strip(name: str) -> list[str]:
    """Candidate torch node names for a MIL value name ('mean_1_cast_fp16' -> 'mean_1', ...)."""
    out = [name]
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            out.append(name[: -len(suffix)])
    return out


def read_graph(path: str | os.PathLike) -> Graph:
    """The main function of an .mlpackage's MIL program: ops in order, value sizes, weights."""
    import coremltools as ct

    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise FileNotFoundError(f"{str(path)!r} is not an .mlpackage (no Manifest.json); rebuild it with "
                                "`harness export --format coreml`")
    spec = ct.utils.load_spec(str(path))
    if not spec.HasField("mlProgram"):
        raise ValueError(f"{str(path)!r} is not an mlprogram model")
    meta = dict(spec.description.metadata.userDefined)
    categories: dict[str, str] = json.loads(meta.get(CATEGORY_METADATA_KEY, "{}"))
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    tensors: dict[str, TensorRecord] = {}
    weights: dict[str, int] = {}
    ops: list[OpRecord] = []
    for arg in fn.inputs:
        info = _tensor_info(arg.type)
        if info:
            shape, dtype = info
            tensors[arg.name] = TensorRecord(arg.name, arg.name, shape, dtype,
                                             int(np.ceil(np.prod(shape) * _DTYPE_BYTES.get(dtype, 4))))
    for op in block.operations:
        out_infos = [(o.name, _tensor_info(o.type)) for o in op.outputs]
        if op.type == "const":
            for name, info in out_infos:
                if info:
                    shape, dtype = info
                    nbytes = int(np.ceil(np.prod(shape) * _DTYPE_BYTES.get(dtype, 4))) if shape else _DTYPE_BYTES.get(dtype, 4)
                    tensors[name] = TensorRecord(name, name, shape, dtype, int(nbytes), constant=True)
                    if dtype not in ("STRING", "BOOL"):  # op parameters (pad types, flags), not weights
                        weights[dtype.lower()] = weights.get(dtype.lower(), 0) + int(nbytes)
            continue
        if op.type.startswith("constexpr_"):
            # Weight decompression done when the model loads (int8 + scale -> fp16): its inputs were
            # stored inline (data, scale, offset: blob file values); its output is a constant, not an
            # activation.
            for arg in op.inputs.values():
                for a in arg.arguments:
                    info = _tensor_info(a.value.type) if a.HasField("value") else None
                    if info:
                        shape, dtype = info
                        nbytes = int(np.ceil(np.prod(shape) * _DTYPE_BYTES.get(dtype, 4))) if shape else _DTYPE_BYTES.get(dtype, 4)
                        weights[dtype.lower()] = weights.get(dtype.lower(), 0) + nbytes
            for name, info in out_infos:
                if info:
                    shape, dtype = info
                    tensors[name] = TensorRecord(name, name, shape, dtype,
                                                 int(np.ceil(np.prod(shape) * _DTYPE_BYTES.get(dtype, 4))),
                                                 constant=True)
            continue
        inputs = tuple(a.name for arg in op.inputs.values() for a in arg.arguments if a.name)
        for name, info in out_infos:
            if info:
                shape, dtype = info
                tensors[name] = TensorRecord(name, name, shape, dtype,
                                             int(np.ceil(np.prod(shape) * _DTYPE_BYTES.get(dtype, 4))))
        kernel_hw = None
        if op.type == "conv" and "weight" in op.inputs:
            w = tensors.get(op.inputs["weight"].arguments[0].name)
            kernel_hw = tuple(w.shape[2:4]) if w and len(w.shape) == 4 else None
        category = categorize(op.type, None, "", kernel_hw)
        if category == "other" and op.type != "conv":
            first = out_infos[0][0] if out_infos else ""
            for candidate in _strip(first):
                if candidate in categories:
                    category = categories[candidate]
                    break
        ops.append(OpRecord(len(ops), op.type, inputs, tuple(n for n, _ in out_infos), category))
    outputs = list(block.outputs)
    input_shapes = {a.name: list(tensors[a.name].shape) for a in fn.inputs if a.name in tensors}
    output_shapes = {n: list(tensors[n].shape) for n in outputs if n in tensors}
    return Graph(fmt="coreml", ops=ops, tensors=tensors, inputs=[a.name for a in fn.inputs], outputs=outputs,
                 weight_bytes_by_dtype=dict(sorted(weights.items(), key=lambda kv: -kv[1])),
                 extra={"opset": fn.opset, "input_shapes": input_shapes, "output_shapes": output_shapes,
                        "spec_version": int(spec.specificationVersion)})
