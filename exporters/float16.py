"""FP16 ONNX: a whole FP32 model through onnxruntime's own float16 converter (export_fp16), or chosen nodes of
a (QDQ) model (nodes_to_fp16: the "fp16" layers of a mixed-precision allocation).

Inputs and outputs stay float32 (keep_io_types) so the FP16 model is a drop-in for the FP32 one; ops that
ONNX Runtime has no float16 kernel for on CPU are left in float32 by the converter's default block list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import onnx

from exporters.errors import ExporterError
from exporters.onnx_io import atomic_save, stamp_metadata


def export_fp16(fp32_model: str | Path, out_path: str | Path, *, metadata: Mapping[str, str] | None = None) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src = Path(fp32_model)
    if not src.is_file():
        raise ExporterError(f"FP32 model {src} does not exist: export it first.")
    model = onnx.load(str(src))
    try:
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    except Exception as e:  # the converter raises bare exceptions on graphs it cannot handle
        raise ExporterError(f"FP16 conversion of {src.name} failed: {e}. Check the model with onnx.checker.") from e
    if metadata:
        stamp_metadata(half, {**metadata, "qcal.precision": "fp16"})
    return atomic_save(half, out_path)


def nodes_to_fp16(model: onnx.ModelProto, nodes: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` in which the named nodes compute in float16 and everything else is unchanged.

    For a mixed-precision QDQ model: the layers an allocation chose "fp16" were left out of quantization (float
    in the QDQ graph); this makes them FP16. Per named node: float32 initializers it reads get a float16 copy
    (`<name>_fp16`); other float32 inputs get a Cast to float16 unless a named node produced them; each output
    becomes `<name>_fp16` with a Cast back to float32 under the original name, so every other node and the
    graph's inputs and outputs keep their float32 tensors. Adjacent named nodes pass float16 directly.

    Written here rather than through onnxruntime's convert_float_to_float16(node_block_list=...): blocking
    every other node of a QDQ graph made that converter wire the graph input's Cast out of topological order.
    """
    from onnx import TensorProto, helper, numpy_helper

    names = set(nodes)
    graph = model.graph
    known = {n.name for n in graph.node}
    missing = sorted(names - known)
    if missing:
        raise ExporterError(f"FP16 nodes {missing[:5]} are not nodes of the graph (names look like "
                            f"{sorted(known)[:3]}): name nodes of this model.")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    produced_fp16 = {o for n in g.node if n.name in names for o in n.output if o}
    float_outputs = {o.name for o in g.output}
    consumers_outside = {i for n in g.node if n.name not in names for i in n.input} | float_outputs
    new_nodes: list[onnx.NodeProto] = []
    cast_in: dict[str, str] = {}
    half_inits: dict[str, str] = {}
    for node in g.node:
        if node.name not in names:
            new_nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if not name:
                continue
            if name in produced_fp16:
                node.input[k] = f"{name}_fp16"
            elif name in inits:
                init = inits[name]
                if init.data_type != TensorProto.FLOAT:
                    continue   # integer inputs (shapes, axes) stay as they are
                if name not in half_inits:
                    half = numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"), f"{name}_fp16")
                    g.initializer.append(half)
                    half_inits[name] = half.name
                node.input[k] = half_inits[name]
            else:
                if name not in cast_in:
                    cast_in[name] = f"{name}_to_fp16"
                    new_nodes.append(helper.make_node("Cast", [name], [cast_in[name]], name=f"{name}_Cast_fp16",
                                                      to=TensorProto.FLOAT16))
                node.input[k] = cast_in[name]
        outs = list(node.output)
        for k, name in enumerate(outs):
            if name:
                node.output[k] = f"{name}_fp16"
        new_nodes.append(node)
        for name in outs:
            if name and name in consumers_outside:
                new_nodes.append(helper.make_node("Cast", [f"{name}_fp16"], [name], name=f"{name}_Cast_fp32",
                                                  to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(new_nodes)
    produced = {o for n in g.node for o in n.output}
    stale = [v for v in g.value_info if v.name in produced_fp16 and v.name not in produced]
    for v in stale:   # outputs only named nodes read now exist as <name>_fp16 alone
        g.value_info.remove(v)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used or i.name in {x.name for x in g.input}]
    del g.initializer[:]
    g.initializer.extend(keep)
    return out


def convert_nodes_fp16(path: str | Path, nodes: Iterable[str], out_path: str | Path | None = None,
                       *, metadata: Mapping[str, str] | None = None) -> Path:
    """nodes_to_fp16 on a model file, written atomically (in place when out_path is None); checked by onnx."""
    src = Path(path)
    model = nodes_to_fp16(onnx.load(str(src)), nodes)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ExporterError(f"FP16 conversion of nodes in {src.name} gave an invalid graph: {e}") from e
    if metadata:
        stamp_metadata(model, dict(metadata))
    return atomic_save(model, out_path or src)
