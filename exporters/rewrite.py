"""Exact graph rewrites for the runtime a QDQ model is written for (the math is unchanged; only the op layout).

`softmax_weighted_sum`: a Softmax over a non-last axis read by a 1x1 Conv with one output channel is a weighted
sum of a distribution along that axis: YOLOv8's DFL box decode (Reshape -> Transpose(0,2,1,3) -> Softmax(axis=1)
-> Conv(1x16x1x1, weights 0..15)). ONNX Runtime's CPU Softmax transposes internally whenever the axis is not the
last one, and the Conv then reads a 16-channel NCHW tensor with a 4 x 8400 "image": on the fall-detection YOLOv8s
these three nodes cost about as much as several backbone convolutions. The rewrite

    Transpose(P) -> Softmax(axis=1) -> Conv(W: 1 x C x 1 x 1, bias b)
    ==> Transpose(Q) -> Softmax(axis=-1) -> MatMul(W as C x 1) [-> Add(b)] -> Transpose(0, 3, 1, 2)

with Q = P[0], P[2], P[3], P[1] moves the softmax axis last (the channel axis the Conv sums over) and gives the
Conv's own output layout N x 1 x H x W back. It applies only when each intermediate tensor has a single reader,
the Transpose and Conv are 4-D, the Conv is 1x1, stride 1, no padding, no dilation, group 1, its weight a constant
initializer and the model's opset >= 13 (where Softmax's axis means one axis, not a flattening).
Nothing here imports qcal.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _all(node: onnx.NodeProto, name: str, value: int) -> bool:
    """An int-list attribute is absent or every entry equals `value`."""
    v = _attr(node, name)
    return v is None or all(int(x) == value for x in v)  # type: ignore[attr-defined]


def _is_plain_1x1(conv: onnx.NodeProto, weight: np.ndarray) -> bool:
    return (weight.ndim == 4 and weight.shape[0] == 1 and weight.shape[2:] == (1, 1)
            and _attr(conv, "group", 1) == 1 and _all(conv, "strides", 1) and _all(conv, "dilations", 1)
            and _all(conv, "pads", 0) and _attr(conv, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))


def softmax_weighted_sum(model: onnx.ModelProto) -> list[str]:
    """Rewrite every matching Transpose -> Softmax -> 1x1 Conv chain in place; returns the rewritten Conv names."""
    if _opset(model) < 13:
        return []
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for t in n.input:
            readers[t] = readers.get(t, 0) + 1
    for o in g.output:
        readers[o.name] = readers.get(o.name, 0) + 1
    done: list[str] = []
    replace: dict[str, list[onnx.NodeProto]] = {}
    drop: set[str] = set()
    for conv in g.node:
        if conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in inits:
            continue
        sm = producer.get(conv.input[0])
        if sm is None or sm.op_type != "Softmax" or readers.get(sm.output[0]) != 1:
            continue
        tr = producer.get(sm.input[0])
        if tr is None or tr.op_type != "Transpose" or readers.get(tr.output[0]) != 1:
            continue
        perm = _attr(tr, "perm")
        w = numpy_helper.to_array(inits[conv.input[1]])
        if perm is None or len(perm) != 4 or int(_attr(sm, "axis", -1)) not in (1, -3) or not _is_plain_1x1(conv, w):  # type: ignore[arg-type, call-overload]
            continue
        bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
        if bias is not None and bias not in inits:
            continue
        p = [int(x) for x in perm]  # type: ignore[attr-defined]
        tag = f"qcal_sws_{len(done)}"
        wmat = numpy_helper.from_array(w.reshape(w.shape[1], 1).astype(w.dtype), f"{tag}_w")
        g.initializer.append(wmat)
        nodes = [helper.make_node("Transpose", [tr.input[0]], [f"{tag}_t"], perm=[p[0], p[2], p[3], p[1]],
                                  name=f"{tag}/Transpose"),
                 helper.make_node("Softmax", [f"{tag}_t"], [f"{tag}_sm"], axis=-1, name=f"{tag}/Softmax"),
                 helper.make_node("MatMul", [f"{tag}_sm", wmat.name], [f"{tag}_mm"], name=f"{tag}/MatMul")]
        last = f"{tag}_mm"
        if bias is not None:
            nodes.append(helper.make_node("Add", [last, bias], [f"{tag}_b"], name=f"{tag}/Add"))
            last = f"{tag}_b"
        nodes.append(helper.make_node("Transpose", [last], [conv.output[0]], perm=[0, 3, 1, 2], name=f"{tag}/Back"))
        replace[conv.name or conv.output[0]] = nodes
        drop.update({tr.output[0], sm.output[0]})
        done.append(conv.name or conv.output[0])
    if not done:
        return []
    out: list[onnx.NodeProto] = []
    for n in g.node:
        key = n.name or (n.output[0] if n.output else "")
        if n.op_type == "Conv" and key in replace:
            out.extend(replace[key])       # the new chain sits where the Conv was: inputs are all defined above
        elif not any(o in drop for o in n.output):
            out.append(n)
    del g.node[:]
    g.node.extend(out)
    stale = [v for v in g.value_info if v.name in drop]
    for v in stale:
        g.value_info.remove(v)
    used = {t for n in g.node for t in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return done


__all__ = ["softmax_weighted_sum"]
