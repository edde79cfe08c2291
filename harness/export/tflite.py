"""The .tflite artifact: conversion with litert-torch, the graph as the flatbuffer holds it, and the
check against the PyTorch reference through ai-edge-litert's interpreter.

Conversion (`convert`, run by the export worker in its own process): the variant's UNet
(`harness.export.rewrite`), `litert_torch.convert(..., lightweight_conversion=True)` with
`enable_group_norm_composite` for groupnorm_gelu=fused, and fp16 weights through litert-torch's
fp16 weight-only recipe (weights stored as FLOAT16 constants feeding DEQUANTIZE ops; activations
stay fp32, the GPU delegate runs fp16 throughout), int8 weights through its int8 weight-only recipe
(`full_weight_only_recipe`, INT8 CHANNELWISE MIN_MAX: the matrices and conv filters are INT8 tensors
with per-channel scales; activations stay float; what ai-edge-quantizer leaves, e.g. biases and norm
scales, stays FLOAT32). Components (UNet, text encoder, VAE decoder): `harness.export.rewrite`.

Reading (`read_graph`): the flatbuffer through ai_edge_litert.schema_py_generated, memory-mapped. A
large model keeps its weights after the flatbuffer: a buffer's bytes are Buffer.Size() when
Buffer.Offset() > 1, else DataLength().
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.export.graph import Graph, OpRecord, TensorRecord, categorize

# TensorType value -> (name, bytes per element); sub-byte types count a fraction.
_TENSOR_TYPES: dict[int, tuple[str, float]] = {
    0: ("float32", 4), 1: ("float16", 2), 2: ("int32", 4), 3: ("uint8", 1), 4: ("int64", 8),
    5: ("string", 1), 6: ("bool", 1), 7: ("int16", 2), 8: ("complex64", 8), 9: ("int8", 1),
    10: ("float64", 8), 11: ("complex128", 16), 12: ("uint64", 8), 13: ("resource", 0),
    14: ("variant", 0), 15: ("uint32", 4), 16: ("uint16", 2), 17: ("int4", 0.5), 18: ("bfloat16", 2),
    19: ("int2", 0.25), 20: ("uint4", 0.5), 21: ("float8_e4m3fn", 1), 22: ("float8_e5m2", 1),
}
SIGNATURE = "serving_default"


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _op_names(schema) -> dict[int, str]:
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _buffer_bytes(model, index: int) -> int:
    if index <= 0 or index >= model.BuffersLength():
        return 0
    buf = model.Buffers(index)
    if buf.Offset() > 1:
        return int(buf.Size())
    return int(buf.DataLength())


def _composite(schema, op) -> tuple[str, int] | None:
    table = op.BuiltinOptions2()
    if table is None:
        return None
    opts = schema.StableHLOCompositeOptions()
    opts.Init(table.Bytes, table.Pos)
    return opts.Name().decode(), int(opts.DecompositionSubgraphIndex())


def read_graph(path: str | os.PathLike) -> Graph:
    """The main subgraph of a .tflite file (the serving signature's), its tensors and weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .tflite file at {str(path)!r}")
    schema = _schema()
    names = _op_names(schema)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if len(mm) < 8 or mm[4:8] != b"TFL3":
            raise ValueError(f"{str(path)!r} is not a .tflite flatbuffer (no TFL3 identifier); "
                             "rebuild it with `harness export`")
        model = schema.Model.GetRootAsModel(mm, 0)
        main = 0
        if model.SignatureDefsLength():
            main = int(model.SignatureDefs(0).SubgraphIndex())
        weights: dict[str, int] = {}
        seen_buffers: set[int] = set()

        def tensors_of(graph) -> dict[int, TensorRecord]:
            out = {}
            for i in range(graph.TensorsLength()):
                t = graph.Tensors(i)
                dtype, size = _TENSOR_TYPES.get(t.Type(), (f"type{t.Type()}", 0))
                shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
                numel = int(np.prod(shape)) if shape else 1
                buf_index = t.Buffer()
                data = _buffer_bytes(model, buf_index)
                constant = data > 0
                if constant and buf_index not in seen_buffers:
                    seen_buffers.add(buf_index)
                    weights[dtype] = weights.get(dtype, 0) + data
                out[i] = TensorRecord(i, t.Name().decode(errors="replace"), shape, dtype,
                                      int(np.ceil(numel * size)), constant)
            return out

        def ops_of(graph, tensors) -> tuple[list[OpRecord], list[tuple[str, int]]]:
            ops, subs = [], []
            for i in range(graph.OperatorsLength()):
                op = graph.Operators(i)
                code = model.OperatorCodes(op.OpcodeIndex())
                op_type = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
                if op_type == "CUSTOM":
                    op_type = f"CUSTOM:{code.CustomCode().decode(errors='replace')}"
                composite = None
                if op_type == "STABLEHLO_COMPOSITE":
                    info = _composite(schema, op)
                    if info:
                        composite = info[0]
                        subs.append(info)
                inputs = tuple(int(x) for x in op.InputsAsNumpy()) if op.InputsLength() else ()
                outputs = tuple(int(x) for x in op.OutputsAsNumpy()) if op.OutputsLength() else ()
                location = tensors[outputs[0]].name if outputs and outputs[0] in tensors else ""
                kernel_hw = None
                if op_type in ("CONV_2D", "DEPTHWISE_CONV_2D") and len(inputs) > 1 and inputs[1] in tensors:
                    fshape = tensors[inputs[1]].shape  # OHWI (conv) / 1HWO (depthwise)
                    kernel_hw = tuple(fshape[1:3]) if len(fshape) == 4 else None
                ops.append(OpRecord(i, op_type, tuple(x for x in inputs if x >= 0), outputs,
                                    categorize(op_type, composite, location, kernel_hw), composite, location))
            return ops, subs

        g = model.Subgraphs(main)
        tensors = tensors_of(g)
        ops, subs = ops_of(g, tensors)
        decompositions: dict[str, dict[str, int]] = {}
        for name, index in subs:
            if name in decompositions or not 0 <= index < model.SubgraphsLength():
                continue
            sg = model.Subgraphs(index)
            sub_ops, _ = ops_of(sg, tensors_of(sg))
            hist: dict[str, int] = {}
            for op in sub_ops:
                hist[op.label] = hist.get(op.label, 0) + 1
            decompositions[name] = dict(sorted(hist.items(), key=lambda kv: -kv[1]))
        # Weights in other subgraphs (composite decompositions) were counted above; the rest:
        for s in range(model.SubgraphsLength()):
            if s != main and not any(s == idx for _, idx in subs):
                tensors_of(model.Subgraphs(s))
        graph = Graph(
            fmt="tflite", ops=ops, tensors=tensors,
            inputs=[int(x) for x in g.InputsAsNumpy()] if g.InputsLength() else [],
            outputs=[int(x) for x in g.OutputsAsNumpy()] if g.OutputsLength() else [],
            weight_bytes_by_dtype=dict(sorted(weights.items(), key=lambda kv: -kv[1])),
            decompositions=decompositions,
            extra={"subgraphs": int(model.SubgraphsLength()), "file_bytes": len(mm),
                   "metadata": [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]},
        )
    return graph


# ------------------------------------------------------------------------------------ interpreter

def load_interpreter(path: str | os.PathLike, num_threads: int | None = None, xnnpack: bool = True):
    """ai-edge-litert's Interpreter for `path` (XNNPACK on the CPU unless xnnpack=False)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs: dict[str, Any] = {"model_path": str(path)}
    if num_threads:
        kwargs["num_threads"] = num_threads
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(**kwargs)


def signature_io(interpreter) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of the serving signature in argument order: dicts with index, name, shape, dtype."""
    runner = interpreter.get_signature_runner(SIGNATURE)
    sig = interpreter.get_signature_list()[SIGNATURE]
    ins, outs = runner.get_input_details(), runner.get_output_details()
    pick = ("index", "shape", "dtype")
    inputs = [{"name": n, **{k: ins[n][k] for k in pick}} for n in sig["inputs"]]
    outputs = [{"name": n, **{k: outs[n][k] for k in pick}} for n in sig["outputs"]]
    return inputs, outputs


def run_once(interpreter, arrays: list[np.ndarray]) -> np.ndarray:
    """Set the signature's inputs (in argument order), invoke, return the first output."""
    inputs, outputs = signature_io(interpreter)
    if len(arrays) != len(inputs):
        raise ValueError(f"the artifact takes {len(inputs)} inputs ({[i['name'] for i in inputs]}), "
                         f"got {len(arrays)}")
    for spec, arr in zip(inputs, arrays):
        interpreter.set_tensor(spec["index"], np.asarray(arr, dtype=spec["dtype"]).reshape(spec["shape"]))
    interpreter.invoke()
    return interpreter.get_tensor(outputs[0]["index"]).copy()


# ------------------------------------------------------------------------------------ conversion

_WEIGHTS = {"fp16": "fp16 weight-only (full_fp16_recipe)",
            "int8": "int8 weight-only, per-channel (full_weight_only_recipe: INT8 CHANNELWISE MIN_MAX)",
            "fp32": "fp32"}


def quant_config_for(dtype: str):
    """litert-torch's weight-only recipe for `dtype` (None: fp32 weights)."""
    if dtype not in _WEIGHTS:
        raise ValueError(f"tflite artifacts hold {', '.join(_WEIGHTS)} weights, not {dtype!r}")
    if dtype == "fp32":
        return None
    from litert_torch.generative.quantize import quant_attrs, quant_recipes

    if dtype == "fp16":
        return quant_recipes.full_fp16_recipe()
    return quant_recipes.full_weight_only_recipe(weight_dtype=quant_attrs.Dtype.INT8,
                                                 granularity=quant_attrs.Granularity.CHANNELWISE)


# Ops whose constant operands keep their fp32 values in fp16/int8 artifacts: ML Drift's
# EMBEDDING_LOOKUP takes an fp32 table (or a quantized one with scales) but refuses an fp16 table
# behind DEQUANTIZE ("EMBEDDING_LOOKUP: Empty quantization params"), which would send the text encoder
# to the CPU.
FP32_OPS: tuple[str, ...] = ("EMBEDDING_LOOKUP",)


def quant_recipe(dtype: str) -> list[dict[str, Any]] | None:
    """The ai-edge-quantizer recipe of `dtype` (None for fp32): litert-torch's weight-only recipe
    (what `quant_config_for` gives it) with FP32_OPS left unquantized."""
    import copy

    config = quant_config_for(dtype)
    if config is None:
        return None
    from litert_torch.quantize import translate_recipe

    recipe = list(translate_recipe.translate_to_ai_edge_recipe(config.generative_recipe))
    for op in FP32_OPS:
        keep = copy.deepcopy(recipe[0])
        keep.update(operation=op, algorithm_key="no_quantize")
        recipe.append(keep)
    return recipe


def convert(cfg: Any, weights: str | None, seed: int, flags: Any, dtype: str, out_path: Path,
            progress: Callable[[str, int, int], None], component: str = "unet") -> dict[str, Any]:
    """Convert the variant's `component` to `out_path` (.tflite). Returns facts for Artifact.meta."""
    import gc

    import litert_torch
    import torch

    from harness.export.rewrite import INPUT_NAMES, example_inputs, export_model

    recipe = quant_recipe(dtype)
    litert_torch.config.enable_group_norm_composite = False  # GPU-clean forms (harness.export.rewrite)
    litert_torch.config.show_progress = False
    torch.set_grad_enabled(False)
    progress("build", 0, 1)
    model = export_model(cfg, weights, seed, flags, "tflite", component, dtype=dtype)
    inputs = example_inputs(cfg, seed, component)
    progress("convert", 0, 1)
    if component == "unet":  # positional (signature args_0..2), as artifacts built before components
        edge = litert_torch.convert(model, inputs, lightweight_conversion=True)
    else:  # named signature inputs (input_ids, latents)
        edge = litert_torch.convert(model, (), dict(zip(INPUT_NAMES[component], inputs)),
                                    lightweight_conversion=True)
    del model
    gc.collect()
    if recipe is None:
        progress("write", 0, 1)
        edge.export(str(out_path))
    else:  # what litert-torch does with a quant_config, with our recipe (quant_recipe)
        from litert_torch.quantize import translate_recipe

        progress("quantize", 0, 1)
        content = translate_recipe.quantize_model(edge.model_content(), recipe)
        del edge
        gc.collect()
        progress("write", 0, 1)
        out_path.write_bytes(content)
        del content
    edge = None
    gc.collect()
    facts = {"converter": "litert_torch.convert", "lightweight_conversion": True,
             "group_norm_composite": False, "weights": _WEIGHTS[dtype],
             "fp32_ops": list(FP32_OPS) if recipe is not None else []}
    if component != "unet":
        facts["component"] = component
        facts["input_shapes"] = {n: list(t.shape) for n, t in zip(INPUT_NAMES[component], inputs)}
        facts["input_dtypes"] = {n: str(t.dtype).replace("torch.", "") for n, t in zip(INPUT_NAMES[component], inputs)}
    return facts


def reference_check(path: Path, cfg: Any, weights: str | None, seed: int, flags: Any = None,
                    facts: dict[str, Any] | None = None, component: str = "unet") -> dict[str, Any]:
    """Run the artifact through ai-edge-litert on the example inputs and compare with the plain
    PyTorch module: max abs error and max abs error / max |reference|."""
    import torch

    from harness.export.rewrite import example_inputs, reference_model

    torch.set_grad_enabled(False)
    inputs = example_inputs(cfg, seed, component)
    reference = reference_model(cfg, weights, seed, component, flags)(*inputs).float().numpy()
    interpreter = load_interpreter(path)
    interpreter.allocate_tensors()
    out = run_once(interpreter, [t.numpy() for t in inputs]).astype(np.float32)
    if out.shape != reference.shape:
        raise ValueError(f"the artifact's output has shape {out.shape}, the reference {reference.shape}")
    max_abs = float(np.max(np.abs(out - reference)))
    scale = float(np.max(np.abs(reference))) or 1e-12
    finite = bool(np.isfinite(out).all())
    what = {"unet": "diffusers UNet", "text_encoder": "transformers CLIPTextModel",
            "vae_decoder": "diffusers VAE decoder"}[component]
    relu = " with ReLU attention" if flags is not None and flags.attention == "relu" else ""
    return {"method": f"ai_edge_litert.Interpreter vs PyTorch ({what}{relu}, fp32) on the example inputs",
            "max_abs_error": max_abs if finite else float("inf"),
            "rel_error": max_abs / scale if finite else float("inf")}
