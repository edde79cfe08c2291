"""An artifact's graph as `harness inspect` and the planner read it: ops in execution order, tensors
with their sizes, weights by element type, and each op's category in the paper's terms.

Readers: `harness.export.tflite.read_graph` (.tflite flatbuffer) and `harness.export.coreml.read_graph`
(.mlpackage MIL program).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from harness.memory import MemoryPlan, TensorUsage, plan_greedy_by_size

# The paper's op categories (Table 1's discussion), in report order.
CATEGORIES: tuple[str, ...] = ("groupnorm", "gelu", "attention", "conv3x3", "other")
CATEGORY_LABELS: dict[str, str] = {
    "groupnorm": "GroupNorm", "gelu": "GELU", "attention": "softmax/attention",
    "conv3x3": "3x3 convolution", "other": "other",
}

# Composite ops (tflite STABLEHLO_COMPOSITE names) -> category.
COMPOSITE_CATEGORY: dict[str, str] = {
    "odml.group_norm": "groupnorm",
    "odml.scaled_dot_product_attention": "attention",
    "odml.gelu": "gelu",
}
# Single ops whose type alone gives the category (tflite builtin names and Core ML MIL op types).
OP_CATEGORY: dict[str, str] = {
    "GELU": "gelu", "SOFTMAX": "attention",
    "gelu": "gelu", "softmax": "attention", "scaled_dot_product_attention": "attention",
}
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "conv")

# Module classes (from the location a converter keeps in tensor names) -> category.
_CLASS_CATEGORY: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"GroupNorm"), "groupnorm"),
    (re.compile(r"^(GEGLU|GELU|TorchGELU)$"), "gelu"),
    (re.compile(r"^Attention$"), "attention"),
    (re.compile(r"^Conv3x3$"), "conv3x3"),
)
_SEGMENT_CLASS = re.compile(r"(?:^|\.)([A-Za-z][A-Za-z0-9]*)_[^./]*$")


def location_classes(location: str) -> list[str]:
    """Module classes along a converter location such as
    '__main__.W/diffusers...UNet2DConditionModel_u/harness.models.kernels.groupnorm.GroupNorm_norm1;3'
    (outermost first). A fused op's name joins several locations with ';': the deepest one counts
    (e.g. the Linear inside an Attention block, not the block)."""
    best: list[str] = []
    for part in location.split(";"):
        classes = []
        for segment in part.split("/"):
            m = _SEGMENT_CLASS.search(segment)
            if m:
                classes.append(m.group(1))
        if len(classes) > len(best):
            best = classes
    return best


_SEGMENT = re.compile(r"(?:^|\.)(?P<cls>[A-Za-z][A-Za-z0-9]*)_(?P<attr>[^./]*)$")


def location_modules(location: str) -> str:
    """A converter location as a readable torch module path, e.g.
    'UNet2DConditionModel(unet) > CrossAttnDownBlock2D(down_blocks_0) > GroupNorm(norm1)' (the deepest
    of the ';'-joined locations of a fused op); '' when it names no module."""
    best: list[str] = []
    for part in location.split(";"):
        names = []
        for segment in part.split("/"):
            m = _SEGMENT.search(segment)
            if m:
                names.append(f"{m['cls']}({m['attr']})")
        if len(names) > len(best):
            best = names
    return " > ".join(best)


def categorize(op_type: str, composite: str | None = None, location: str = "",
               kernel_hw: tuple[int, int] | None = None) -> str:
    """The paper's category of one op: by composite name, by op type, by a 3x3 filter, then by the
    innermost module class in its location (decomposed GroupNorm/GELU/attention ops)."""
    if composite:
        return COMPOSITE_CATEGORY.get(composite, "other")
    if op_type in OP_CATEGORY:
        return OP_CATEGORY[op_type]
    if op_type in CONV_OPS:
        return "conv3x3" if kernel_hw == (3, 3) else "other"
    classes = location_classes(location) if location else []
    if classes:
        innermost = classes[-1]
        for pattern, category in _CLASS_CATEGORY:
            if pattern.search(innermost):
                return category
    return "other"


@dataclass(frozen=True)
class TensorRecord:
    id: int | str
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    constant: bool = False


@dataclass(frozen=True)
class OpRecord:
    index: int
    type: str  # builtin name (tflite) or MIL op type (Core ML)
    inputs: tuple[int | str, ...]
    outputs: tuple[int | str, ...]
    category: str
    composite: str | None = None  # tflite STABLEHLO_COMPOSITE name
    location: str = ""

    @property
    def label(self) -> str:
        return f"composite {self.composite}" if self.composite else self.type


@dataclass
class Graph:
    """The main graph of an artifact (what a runtime executes, composites as one op each)."""

    fmt: str
    ops: list[OpRecord]
    tensors: dict[int | str, TensorRecord]
    inputs: list[int | str]
    outputs: list[int | str]
    weight_bytes_by_dtype: dict[str, int]
    decompositions: dict[str, dict[str, int]] = field(default_factory=dict)  # composite subgraph -> op histogram
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def weight_bytes(self) -> int:
        return sum(self.weight_bytes_by_dtype.values())

    def op_histogram(self) -> dict[str, int]:
        """op label -> count (composites by name)."""
        return dict(Counter(op.label for op in self.ops).most_common())

    def category_histogram(self) -> dict[str, dict[str, int]]:
        """category -> {op label: count}, for every category in CATEGORIES."""
        out: dict[str, Counter] = {c: Counter() for c in CATEGORIES}
        for op in self.ops:
            out[op.category][op.label] += 1
        return {c: dict(out[c].most_common()) for c in CATEGORIES}

    def composites(self) -> dict[str, int]:
        return dict(Counter(op.composite for op in self.ops if op.composite).most_common())

    def tensor_usages(self) -> list[TensorUsage]:
        """Usage records of the activations: every non-constant tensor an op produces, alive from
        that op to its last reader (graph outputs to the last op). Graph inputs are not planned (as
        the PyTorch planner leaves out a call's arguments), nor are tensors computed from constants
        only (DEQUANTIZE of fp16 weights: a delegate folds them into the weights)."""
        derived_constant: set[int | str] = {tid for tid, t in self.tensors.items() if t.constant}
        first: dict[int | str, int] = {}
        last: dict[int | str, int] = {}
        for op in self.ops:
            ins = [t for t in op.inputs if t in self.tensors]
            if ins and all(t in derived_constant for t in ins):
                derived_constant.update(op.outputs)
                continue
            for t in ins:
                if t in first:
                    last[t] = op.index
            for t in op.outputs:
                if t in self.tensors and t not in first:
                    first[t] = last[t] = op.index
        end = self.ops[-1].index if self.ops else 0
        for t in self.outputs:
            if t in first:
                last[t] = end
        inputs = set(self.inputs)
        return [TensorUsage(t, self.tensors[t].nbytes, first[t], last[t])
                for t in first if t not in inputs and t not in derived_constant]

    def plan(self, alignment: int = 64) -> MemoryPlan:
        """TFLite GPU's greedy-by-size plan over this graph's activations (harness.memory)."""
        return plan_greedy_by_size(self.tensor_usages(), alignment=alignment)
