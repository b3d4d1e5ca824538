"""QuantTable -> QDQ ONNX, written by qcal itself: every scale, zero point and integer weight code in the graph is
the table's, bit for bit; nothing is re-derived.

`lower_qdq(fp32, table, profile)` is the one place a table becomes a graph. The simulator (qcal.simulation.sim) runs exactly
this graph, and `export_qdq` saves exactly this graph, so what the engine scores is what ships:
  * weights and biases in the table become integer initializers (`<w>_quantized`) with a DequantizeLinear whose
    output keeps the weight's name (per channel: `axis`; group-wise: `axis` + `block_size`, opset 21);
  * every activation in the table gets one QuantizeLinear -> DequantizeLinear pair where it is produced
    (`<t>_QuantizeLinear_Output`, `<t>_DequantizeLinear_Output`); its readers read the DQ output, except, where
    the profile says so (TensorRT), nodes kept float, which read the float tensor (`unshare_float_nodes`);
  * graph outputs stay float; the profile's exact rewrites run last (exporters.rewrite).
ONNX Runtime's CPU optimizer then fuses DQ -> Conv -> Q into QLinearConv etc. The table alone decides placement:
a tensor absent from the table has no Q/DQ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporters.errors import ExporterError
from exporters.onnx_io import atomic_save, stamp_metadata
from exporters.profiles import QdqProfile
from exporters.quant_table import QuantTable, TensorQuant

_ONNX = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "int4": TensorProto.INT4, "uint4": TensorProto.UINT4,
         "int16": TensorProto.INT16, "uint16": TensorProto.UINT16, "int32": TensorProto.INT32}
_DTYPE = {v: k for k, v in _ONNX.items()}
Q_SUFFIX, DQ_SUFFIX = "_QuantizeLinear_Output", "_DequantizeLinear_Output"


def quantizable_op_types(profile: QdqProfile) -> list[str]:
    """The op types whose inputs/outputs get Q/DQ under this profile (ORT's registry when unrestricted)."""
    if profile.op_types is not None:
        return list(profile.op_types)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _param(name: str, tq: TensorQuant, per_tensor: bool) -> list[onnx.TensorProto]:
    scale = tq.scale.reshape(()) if per_tensor else tq.scale
    zp = tq.zero_point.reshape(()) if per_tensor else tq.zero_point
    z = helper.make_tensor(f"{name}_zero_point", _ONNX[tq.dtype], list(zp.shape), zp.reshape(-1).tolist())
    return [numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"), z]


def _codes(name: str, tq: TensorQuant) -> onnx.TensorProto:
    c = tq.codes
    if tq.dtype in ("int4", "uint4"):
        return helper.make_tensor(name, _ONNX[tq.dtype], list(c.shape), c.reshape(-1).tolist())
    return numpy_helper.from_array(c, name)


def lower_qdq(fp32: onnx.ModelProto, table: QuantTable, profile: QdqProfile) -> onnx.ModelProto:
    """The QDQ graph of `table` under `profile` (a new model; `fp32` is not changed)."""
    m = onnx.ModelProto()
    m.CopyFrom(fp32)
    need = max(profile.min_opset, 21 if any(t.group_size for t in table.tensors.values()) else 0)
    if _opset(m) < need:
        m = onnx.version_converter.convert_version(m, need)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    nodes = {n.name for n in g.node}
    missing = sorted(set(table.float_nodes) - nodes)
    if missing:
        raise ExporterError(f"the table keeps nodes {missing[:5]} in float, but the graph has no such nodes: the table "
                            "belongs to another model.")
    new_nodes: list[onnx.NodeProto] = []
    for name, tq in sorted(table.weights().items()):
        if name not in inits:
            raise ExporterError(f"the table quantizes weight {name!r}, which is not an initializer of the graph.")
        if tq.codes is None:
            raise ExporterError(f"weight {name!r} has no integer codes in the table (loaded without its arrays "
                                "file?): keep quant_table.arrays.npz beside quant_table.json.")
        shape = tuple(inits[name].dims)
        if tuple(tq.codes.shape) != shape:
            raise ExporterError(f"weight {name!r}: table codes {tuple(tq.codes.shape)} vs graph shape {shape}.")
        g.initializer.remove(inits.pop(name))
        per_tensor = tq.axis is None and tq.scale.size == 1
        g.initializer.extend([_codes(f"{name}_quantized", tq), *_param(name, tq, per_tensor)])
        attrs: dict[str, Any] = {} if per_tensor else {"axis": int(tq.axis or 0)}
        if tq.group_size:
            attrs["block_size"] = int(tq.group_size)
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale",
                                                               f"{name}_zero_point"], [name],
                                          name=f"{name}_DequantizeLinear", **attrs))
    float_readers = set(table.float_nodes) if profile.float_nodes_read_float else set()
    for name, tq in sorted(table.activations().items()):
        if name in inits:
            raise ExporterError(f"the table lists {name!r} as an activation, but it is a constant initializer.")
        if tq.scale.size != 1:
            raise ExporterError(f"activation {name!r} has {tq.scale.size} scales: activations are per tensor.")
        g.initializer.extend(_param(name, tq, True))
        q, dq = name + Q_SUFFIX, name + DQ_SUFFIX
        for n in g.node:
            if n.name in float_readers:
                continue
            for i, t in enumerate(n.input):
                if t == name:
                    n.input[i] = dq
        new_nodes += [helper.make_node("QuantizeLinear", [name, f"{name}_scale", f"{name}_zero_point"], [q],
                                       name=f"{name}_QuantizeLinear"),
                      helper.make_node("DequantizeLinear", [q, f"{name}_scale", f"{name}_zero_point"], [dq],
                                       name=f"{name}_DequantizeLinear")]
    _topological_insert(g, new_nodes)
    if profile.float_nodes_read_float:
        unshare_float_nodes(m, table.float_nodes)
    rewritten = apply_rewrites(m, profile.rewrites)
    if rewritten:
        stamp_metadata(m, {"qcal.rewrites": json.dumps(rewritten)})
    if profile.name == "tensorrt":   # qcal never writes a TensorRT model that breaks TensorRT's Q/DQ rules
        from exporters.trt_lint import lint_tensorrt

        res = lint_tensorrt(m)
        if not res.ok:
            raise ExporterError(f"the tensorrt export breaks TensorRT's Q/DQ rules (a qcal bug or an unusual graph; "
                                f"please report it):\n{res.summary(limit=10)}")
    return m


def _topological_insert(g: onnx.GraphProto, extra: list[onnx.NodeProto]) -> None:
    """Put the new Q/DQ nodes among the graph's nodes so every node comes after the producers of its inputs."""
    have = {i.name for i in g.initializer} | {i.name for i in g.input} | {""}
    pending = list(extra) + list(g.node)
    order: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in have for i in n.input):
                order.append(n)
                have.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in have})[:5]
            raise ExporterError(f"the QDQ graph cannot be ordered: {missing} are never produced.")
        pending = rest
    del g.node[:]
    g.node.extend(order)


def table_sha256(table: QuantTable) -> str:
    """A content hash of the whole table (arrays included), stamped into the exported model."""
    arrays: dict[str, np.ndarray] = {}
    h = hashlib.sha256(json.dumps(table.to_dict(arrays), sort_keys=True).encode())
    for k in sorted(arrays):
        h.update(k.encode() + np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def export_qdq(fp32_model: str | Path | onnx.ModelProto, table: QuantTable, profile: QdqProfile,
               out_path: str | Path, *, metadata: Mapping[str, str] | None = None) -> QuantTable:
    """Write `lower_qdq(...)` to out_path (atomically) after checking that the graph holds exactly the table's
    parameters (`table_diff`); returns the table."""
    src = fp32_model if isinstance(fp32_model, onnx.ModelProto) else onnx.load(str(fp32_model))
    model = lower_qdq(src, table, profile)
    diff = table_diff(table, read_quant_table(model))
    if diff:
        raise ExporterError(f"the written graph differs from the table (a qcal bug; please report it): {diff[:5]}")
    stamp_metadata(model, {**(metadata or {}), "qcal.quant_table_sha256": table_sha256(table)})
    atomic_save(model, out_path)
    return table


def table_diff(table: QuantTable, written: QuantTable) -> list[str]:
    """Where the parameters read back from a graph differ from the table's (dtype, scale, zero point, axis, group,
    codes; bit for bit). Empty: the graph is the table."""
    out = [f"{k}: not in the graph" for k in sorted(set(table.tensors) - set(written.tensors))]
    out += [f"{k}: in the graph, not in the table" for k in sorted(set(written.tensors) - set(table.tensors))]
    for k in sorted(set(table.tensors) & set(written.tensors)):
        a, b = table.tensors[k], written.tensors[k]
        for field in ("dtype", "axis", "group_size", "kind"):
            if getattr(a, field) != getattr(b, field) and not (field == "axis" and a.scale.size == 1):
                out.append(f"{k}: {field} {getattr(a, field)!r} vs {getattr(b, field)!r}")
        for field in ("scale", "zero_point", "codes"):
            x, y = getattr(a, field), getattr(b, field)
            if (x is None) != (y is None) or x is not None and (x.shape != y.shape or x.tobytes() != y.tobytes()):
                out.append(f"{k}: {field} differs")
    return out


def apply_rewrites(model: onnx.ModelProto, names: tuple[str, ...]) -> dict[str, list[str]]:
    """Run the profile's exact rewrites in place: {rewrite: [rewritten node names]} for those that matched."""
    from exporters import rewrite

    out: dict[str, list[str]] = {}
    for name in names:
        fn = getattr(rewrite, name, None)
        if fn is None:
            raise ExporterError(f"unknown graph rewrite {name!r}; known: {rewrite.__all__}.")
        hit = fn(model)
        if hit:
            out[name] = hit
    return out


_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_DATA_MOVEMENT = ("MaxPool", "Resize", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split",
                  "AveragePool", "GlobalAveragePool")


def float_readers(model: onnx.ModelProto, float_nodes: tuple[str, ...]) -> set[str]:
    """TensorRT placement: the nodes that read float tensors -- the nodes kept in float, plus data-movement nodes
    (Resize, MaxPool, ...) that feed only such nodes."""
    keep = set(float_nodes)
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n.name)
    grew = True
    while grew:
        grew = False
        for n in model.graph.node:
            users = [u for o in n.output for u in consumers.get(o, [])]
            if n.op_type in _DATA_MOVEMENT and n.name not in keep and users and set(users) <= keep:
                keep.add(n.name)
                grew = True
    return keep


def reads_quantized(model: onnx.ModelProto, node: onnx.NodeProto, tensor: str, keep: set[str],
                    producer_op: str | None) -> bool:
    """TensorRT placement: whether `node` reads `tensor` through its Q/DQ pair. Float readers do not; a weighted
    op's output is read quantized only by weighted, data-movement and Concat nodes (TensorRT fuses the following
    activation or residual Add into the convolution: lint rule TRT009)."""
    if node.name in keep:
        return False
    return producer_op not in _WEIGHTED or node.op_type in (*_WEIGHTED, *_DATA_MOVEMENT, "Concat")


def unshare_float_nodes(model: onnx.ModelProto, float_nodes: tuple[str, ...]) -> int:
    """TensorRT placement: nodes kept in float (and non-fusing readers of a Conv's output) read the float
    tensor itself, not the DQ output ORT shares among all consumers.

    ORT puts one Q/DQ pair on a tensor and gives its DQ output to every consumer, the excluded ones included;
    a float Concat would then mix quantized and float inputs (TensorRT lint TRT011/TRT012). Returns the number
    of rewired inputs. Q/DQ left without consumers are removed.
    """
    keep = set(float_nodes)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in model.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n.name)
    grew = True
    while grew:  # a data-movement node (Resize, MaxPool, ...) that only feeds float nodes stays float too
        grew = False
        for n in model.graph.node:
            users = [u for o in n.output for u in consumers.get(o, [])]
            if n.op_type in _DATA_MOVEMENT and n.name not in keep and users and set(users) <= keep:
                keep.add(n.name)
                grew = True
    rewired = 0
    for node in model.graph.node:
        if node.name not in keep:
            continue
        for i, t in enumerate(node.input):
            dq = producer.get(t)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                rewired += 1
    # A weighted op's output read by anything but a quantized weighted/data-movement op stays float: TensorRT
    # fuses the following activation or residual Add into the convolution (lint rule TRT009).
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", *_WEIGHTED, *_DATA_MOVEMENT, "Concat"):
            continue
        for i, t in enumerate(node.input):
            dq = producer.get(t)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            src = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            if src is not None and src.op_type in _WEIGHTED:
                node.input[i] = q.input[0]  # type: ignore[union-attr]
                rewired += 1
    _drop_unused_qdq(model)
    return rewired


def _drop_unused_qdq(model: onnx.ModelProto) -> None:
    g = model.graph
    while True:
        used = {t for n in g.node for t in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in used]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {t for n in g.node for t in n.input}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)


def read_quant_table(model: onnx.ModelProto | str | Path, *, target: str = "") -> QuantTable:
    """Every quantized tensor of a QDQ graph: activations (a QuantizeLinear of a computed tensor) with their scale and
    zero point, weights and biases (a DequantizeLinear of an integer initializer) with their scales, zero points,
    axis, block size and integer codes."""
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    inits = {i.name: i for i in m.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in m.graph.node if n.op_type == "Constant" and n.attribute}

    def arr(name: str) -> np.ndarray:
        t = inits.get(name) or consts.get(name)
        if t is None:
            raise ExporterError(f"Q/DQ parameter {name!r} is not a constant initializer.")
        return numpy_helper.to_array(t)

    tensors: dict[str, TensorQuant] = {}
    for node in m.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        x = node.input[0]
        if node.op_type == "DequantizeLinear" and x not in inits and x not in consts:
            continue  # an activation's DQ: its Q already recorded it
        zp_t = inits.get(node.input[2]) or consts.get(node.input[2])
        if node.op_type == "QuantizeLinear" and (x in inits or x in consts):
            continue  # a float constant quantized at run time (not written by qcal): not a table entry
        dtype = _DTYPE.get(int(zp_t.data_type) if zp_t is not None else -1, "uint8")  # type: ignore[call-overload]
        at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        scale = arr(node.input[1]).astype(np.float32)
        zp = arr(node.input[2]).astype(np.int64)
        if node.op_type == "QuantizeLinear":
            tensors[x] = TensorQuant(dtype, scale.reshape(-1), zp.reshape(-1), rmin=None, rmax=None)
            continue
        codes = arr(x).astype(np.int64)
        blocked = "block_size" in at
        per_tensor = scale.size == 1 and not blocked
        tensors[node.output[0]] = TensorQuant(
            dtype, scale if blocked else scale.reshape(-1), zp if blocked else zp.reshape(-1),
            axis=None if per_tensor else int(at.get("axis", 1)), kind="bias" if dtype == "int32" else "weight",
            group_size=int(at["block_size"]) if blocked else None, codes=codes)
    return QuantTable(tensors, target=target)


def same_params(table: QuantTable, written: QuantTable, kinds: tuple[str, ...]) -> bool:
    """Whether every tensor of these kinds has bit-identical parameters (and codes) in both tables."""
    sub = QuantTable({k: v for k, v in table.tensors.items() if v.kind in kinds})
    got = QuantTable({k: v for k, v in written.tensors.items() if v.kind in kinds})
    return not table_diff(sub, got)


__all__ = ["DQ_SUFFIX", "Q_SUFFIX", "apply_rewrites", "export_qdq", "lower_qdq", "quantizable_op_types",
           "read_quant_table", "same_params", "table_diff", "table_sha256", "unshare_float_nodes"]
