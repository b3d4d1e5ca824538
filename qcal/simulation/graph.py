"""Read-only facts about an ONNX graph that calibration and placement need: which tensors are quantizable
activations, producers/consumers, per-node compute (MACs), and adding intermediate outputs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, shape_inference


@dataclass
class GraphInfo:
    model: onnx.ModelProto
    nodes: dict[str, onnx.NodeProto]
    producer: dict[str, str]                   # tensor -> node name
    consumers: dict[str, list[str]]            # tensor -> node names
    float_tensors: set[str]
    shapes: dict[str, tuple[int, ...]]
    initializers: set[str]
    outputs: list[str] = field(default_factory=list)

    def activation_inputs(self, node: onnx.NodeProto) -> list[str]:
        return [t for t in node.input if t and t in self.float_tensors and t not in self.initializers]

    def macs(self, node: onnx.NodeProto) -> int:
        """Multiply-accumulates of Conv/Gemm/MatMul nodes (0 for others): decides where INT8 pays off."""
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or not node.output:
            return 0
        out = self.shapes.get(node.output[0])
        w = next((t for t in node.input[1:2] if t in self.initializers), None)
        if out is None or w is None:
            return 0
        wshape = next(i.dims for i in self.model.graph.initializer if i.name == w)
        if node.op_type in ("Conv", "ConvTranspose"):
            return int(np.prod(out)) * int(np.prod(wshape[1:]))
        return int(np.prod(out)) * int(wshape[0] if node.op_type == "MatMul" else wshape[-1])


def analyse(model: onnx.ModelProto) -> GraphInfo:
    """Name every node (ORT's quantizer needs names) and infer shapes/types."""
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    floats: set[str] = set()
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if tt.elem_type == TensorProto.FLOAT:
            floats.add(vi.name)
        dims = tuple(d.dim_value for d in tt.shape.dim)
        if dims and all(d > 0 for d in dims):
            shapes[vi.name] = dims
    producer, consumers = {}, defaultdict(list)
    for n in model.graph.node:
        for t in n.output:
            producer[t] = n.name
        for t in n.input:
            if t:
                consumers[t].append(n.name)
    inits = {i.name for i in model.graph.initializer}
    return GraphInfo(model, {n.name: n for n in model.graph.node}, producer, dict(consumers), floats, shapes,
                     inits, [o.name for o in model.graph.output])


def tensors_to_calibrate(info: GraphInfo, op_types: list[str]) -> list[str]:
    """Float activations entering or leaving a node of a quantizable type (what ORT's calibrator picks)."""
    wanted = set(op_types)
    names: list[str] = []
    seen: set[str] = set()
    for n in info.model.graph.node:
        if n.op_type not in wanted:
            continue
        for t in list(n.input) + list(n.output):
            if t and t in info.float_tensors and t not in info.initializers and t not in seen:
                seen.add(t)
                names.append(t)
    return names


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model that also returns the named intermediate tensors (for streaming calibration)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for t in names:
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    return m
