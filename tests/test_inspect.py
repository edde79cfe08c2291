"""Reading artifacts back: the planner on .tflite graphs, weights stored after the flatbuffer, the
paper's op categories with composites named, and `harness inspect`. Small modules converted in-process
(a few seconds each)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness.export import tflite
from harness.export.graph import categorize, location_classes
from harness.export.inspect import format_report, inspect_artifact
from harness.memory import TensorUsage, plan_greedy_by_size, validate_plan


def _convert(module: nn.Module, args: tuple, path, group_norm_composite: bool = False) -> None:
    import litert_torch

    litert_torch.config.show_progress = False
    previous = litert_torch.config.enable_group_norm_composite
    litert_torch.config.enable_group_norm_composite = group_norm_composite
    try:
        litert_torch.convert(module.eval(), args).export(str(path))
    finally:
        litert_torch.config.enable_group_norm_composite = previous


class Chain(nn.Module):
    """exp -> sin -> cos -> matmul: four ops, three [4, 256] fp32 intermediates and the output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(torch.randn(256, 128), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(torch.sin(torch.exp(x))) @ self.w


@pytest.fixture(scope="module")
def chain_tflite(tmp_path_factory):
    path = tmp_path_factory.mktemp("chain") / "chain.tflite"
    _convert(Chain(), (torch.randn(4, 256),), path)
    return path


def test_planner_on_a_tflite_graph(chain_tflite):
    graph = tflite.read_graph(chain_tflite)
    assert [op.type for op in graph.ops] == ["EXP", "SIN", "COS", "FULLY_CONNECTED"]
    usages = sorted(graph.tensor_usages(), key=lambda u: u.first_op)
    # Each op's output lives from that op to its last reader; the graph output to the end.
    assert [(u.size_bytes, u.first_op, u.last_op) for u in usages] == [
        (4 * 256 * 4, 0, 1), (4 * 256 * 4, 1, 2), (4 * 256 * 4, 2, 3), (4 * 128 * 4, 3, 3)]
    plan = graph.plan()
    validate_plan(usages, plan)
    # Two 4 KiB tensors are alive at once at most: cos reuses exp's slot, the output sin's.
    expected = plan_greedy_by_size([TensorUsage(u.id, u.size_bytes, u.first_op, u.last_op) for u in usages])
    assert plan.total_bytes == expected.total_bytes == 2 * 4096
    assert plan.offsets[usages[0].id] == plan.offsets[usages[2].id]
    assert plan.naive_bytes == 3 * 4096 + 2048 and plan.peak_live_bytes == 2 * 4096
    assert graph.weight_bytes_by_dtype == {"float32": 256 * 128 * 4}


def _externalize(src, dst) -> None:
    """Re-serialize a .tflite the way large models are written: every buffer's bytes after the
    flatbuffer, found by Buffer.offset/size (16-byte aligned), the flatbuffer holding no data."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(open(src, "rb").read(), 0)
    data = {}
    for i, buf in enumerate(model.buffers):
        if buf.data is not None and len(buf.data):
            data[i] = bytes(np.asarray(buf.data, dtype=np.uint8))
            buf.data, buf.offset, buf.size = None, 1, 1

    def pack() -> bytes:
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    head = pack()
    pos = -(-len(head) // 16) * 16
    for i, blob in data.items():
        model.buffers[i].offset, model.buffers[i].size = pos, len(blob)
        pos = -(-(pos + len(blob)) // 16) * 16
    head = pack()  # same length: offset/size are fixed-size scalars
    out = bytearray(pos)
    out[: len(head)] = head
    for i, blob in data.items():
        out[model.buffers[i].offset: model.buffers[i].offset + len(blob)] = blob
    open(dst, "wb").write(bytes(out))


def test_weights_stored_after_the_flatbuffer_count_by_buffer_size(chain_tflite, tmp_path):
    ext = tmp_path / "chain_external.tflite"
    _externalize(chain_tflite, ext)
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(ext.read_bytes(), 0)
    offsets = [model.Buffers(i).Offset() for i in range(model.BuffersLength())]
    assert any(o > 1 for o in offsets)
    assert all(model.Buffers(i).DataLength() == 0 for i in range(model.BuffersLength()))  # DataLength() sees none
    inline, external = tflite.read_graph(chain_tflite), tflite.read_graph(ext)
    assert external.weight_bytes_by_dtype == inline.weight_bytes_by_dtype == {"float32": 256 * 128 * 4}
    assert external.plan().total_bytes == inline.plan().total_bytes
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    outs = []
    for path in (chain_tflite, ext):
        interpreter = tflite.load_interpreter(path)
        interpreter.allocate_tensors()
        outs.append(tflite.run_once(interpreter, [x]))
    np.testing.assert_array_equal(outs[0], outs[1])


class Block(nn.Module):
    """GroupNorm (fused kernel), 3x3 conv, GELU (fused), attention through the export's flash composite."""

    def __init__(self) -> None:
        super().__init__()
        from harness.models.kernels.gelu import TorchGELU
        from harness.models.kernels.groupnorm import GroupNorm

        torch.manual_seed(0)
        self.norm = GroupNorm(4, 16, impl="fused")
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.act = TorchGELU(impl="fused")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from harness.export.rewrite import _tflite_flash

        h = self.act(self.conv(self.norm(x)))
        b, c, hh, ww = h.shape
        t = h.reshape(b, c, hh * ww).transpose(1, 2).reshape(b, hh * ww, 2, c // 2)  # [B, T, N, H]
        a = _tflite_flash(t, t, t, (c // 2) ** -0.5)
        return a.reshape(b, hh * ww, c)


@pytest.fixture(scope="module")
def block_tflite(tmp_path_factory):
    path = tmp_path_factory.mktemp("block") / "block.tflite"
    _convert(Block(), (torch.randn(1, 16, 8, 8),), path, group_norm_composite=True)
    return path


def test_categories_and_composites_of_a_graph(block_tflite):
    graph = tflite.read_graph(block_tflite)
    cats = graph.category_histogram()
    # (plus the layout TRANSPOSEs the converter puts between NCHW and NHWC ops)
    cats = {c: {op: n for op, n in h.items() if op != "TRANSPOSE"} for c, h in cats.items()}
    assert cats["groupnorm"] == {"composite odml.group_norm": 1}
    assert cats["attention"].get("composite odml.scaled_dot_product_attention") == 1
    assert cats["gelu"] == {"GELU": 1}
    assert cats["conv3x3"] == {"CONV_2D": 1}
    assert graph.composites() == {"odml.group_norm": 1, "odml.scaled_dot_product_attention": 1}
    assert "SOFTMAX" in graph.decompositions["odml.scaled_dot_product_attention"]
    # The composite's decomposition runs inside one op: only the main graph's activations are planned.
    planned = {u.id for u in graph.tensor_usages()}
    assert planned <= {t for op in graph.ops for t in op.outputs}


def test_categorize_by_op_composite_filter_and_module_path():
    assert categorize("STABLEHLO_COMPOSITE", "odml.group_norm") == "groupnorm"
    assert categorize("SOFTMAX") == "attention" and categorize("GELU") == "gelu"
    assert categorize("CONV_2D", kernel_hw=(3, 3)) == "conv3x3"
    assert categorize("CONV_2D", kernel_hw=(1, 1)) == "other"
    loc = ("__main__.W/diffusers.models.unets.unet_2d_blocks.CrossAttnDownBlock2D_0/"
           "diffusers.models.attention_processor.Attention_attn1;;__main__.W/diffusers.models.unets."
           "unet_2d_blocks.CrossAttnDownBlock2D_0/diffusers.models.attention_processor.Attention_attn1/"
           "torch.nn.modules.linear.Linear_to_q;1")
    assert location_classes(loc)[-2:] == ["Attention", "Linear"]
    assert categorize("FULLY_CONNECTED", location=loc) == "other"  # the projection, not the attention core
    assert categorize("MEAN", location="a.W/harness.models.kernels.groupnorm.GroupNorm_norm1;3") == "groupnorm"
    assert categorize("MUL", location="a.W/diffusers.models.attention.FeedForward_ff/harness.models.kernels.gelu.GEGLU_0;2") == "gelu"
    assert categorize("MEAN", location="a.W/torch.nn.modules.normalization.LayerNorm_norm1;1") == "other"


def test_inspect_report_and_cli(block_tflite, capsys):
    from harness.cli import main

    report = inspect_artifact(block_tflite)
    assert report["format"] == "tflite" and report["planned_tensor_bytes"] > 0
    text = format_report(report)
    for needle in ("weights:", "float32", "GroupNorm", "GELU", "softmax/attention", "3x3 convolution",
                   "composite ops: odml.group_norm x1, odml.scaled_dot_product_attention x1",
                   "odml.scaled_dot_product_attention decomposes to:", "planned tensor memory:"):
        assert needle in text, needle
    assert main(["inspect", str(block_tflite)]) == 0
    assert "composite odml.group_norm 1" in capsys.readouterr().out
    assert main(["inspect", str(block_tflite), "--json"]) == 0
    import json

    as_json = capsys.readouterr().out
    assert json.loads(as_json)["composites"]["odml.group_norm"] == 1
    assert main(["inspect", str(block_tflite), "--format", "json"]) == 0  # --json is its alias
    again, first = json.loads(capsys.readouterr().out), json.loads(as_json)
    assert {k: again[k] for k in ("format", "composites", "planned_tensor_bytes")} == {
        k: first[k] for k in ("format", "composites", "planned_tensor_bytes")}


def test_inspect_bad_input_says_what_to_give(tmp_path, capsys):
    from harness.cli import main

    (tmp_path / "notes.txt").write_text("hello")
    assert main(["inspect", str(tmp_path / "notes.txt")]) == 2
    assert "neither a .tflite file nor an .mlpackage" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.tflite")]) == 2
    assert "no artifact at" in capsys.readouterr().err
