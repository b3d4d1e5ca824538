"""One shared activation range for the tensors a quantized Concat joins, so ONNX Runtime CPU copies them.

ONNX Runtime fuses DQ -> Concat -> Q into QLinearConcat. Its CPU kernel copies an input with memcpy when that
input's scale and zero point equal the output's, and otherwise requantizes it element by element through a
lookup table (onnxruntime/contrib_ops/cpu/quantization/qlinear_concat.cc). On the fall-detection YOLOv8s at
640 (AVX-512 VNNI, 2 threads) its 13 QLinearConcats took 3.99 ms a run requantizing and 0.88 ms as copies, and
the model 39.5 ms against 35.4 (benchmarks/results/concat_share.md).

For the Concat itself, an input quantized at the output's scale is what the Concat would have produced by
requantizing it. The price falls on the input's other readers (a C2f's split half also feeds the next
bottleneck), which now see the group's range instead of the input's own.

Tensors are grouped with a union-find: a Concat joins its inputs and its output; an op that ONNX Runtime's QDQ
quantizer quantizes "same as input" (Split, MaxPool, Resize, Reshape, ...) joins its output to its input, since
the quantizer ignores any range given for that output. Every tensor of a group gets one range: by default
("concat_output") the union of the group's Concat outputs' ranges. The observer chose those on the values of all
inputs together, and the Concat clipped any input value outside them anyway. The other rule, "union" of every
member's range, clips nothing more than before but costs resolution. On the fall-detection YOLOv8s it measured
worse: output SQNR 28.2 dB against 30.2 for "concat_output" and 28.7 unshared, on 17 held-out frames
(benchmarks/results/robustness_validation.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import onnx

from exporters.errors import ExporterError

# ops whose outputs onnxruntime.quantization gives the input's scale and zero point (QDQDirect8BitOp, QDQSplit,
# QDQMaxPool, QDQResize, QDQGather): a range given for their outputs is not used
SAME_AS_INPUT = ("Split", "MaxPool", "Resize", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
                 "AveragePool", "Slice", "Gather", "TopK")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def concat_groups(model: onnx.ModelProto, quantized: Iterable[str], float_nodes: Iterable[str] = ()) -> list[list[str]]:
    """Groups of quantized tensors that must share one range for every quantized Concat to run as a copy.

    `quantized`: the tensors that carry Q/DQ (the activation ranges); Concats in `float_nodes` are skipped.
    Only groups with a Concat in them are returned, each sorted, largest first."""
    q, skip = set(quantized), set(float_nodes)
    uf = _UnionFind()
    joined: set[str] = set()
    for n in model.graph.node:
        if n.name in skip:
            continue
        if n.op_type in SAME_AS_INPUT and n.input and n.input[0] in q:
            for o in n.output:
                if o in q:
                    uf.union(o, n.input[0])
        elif n.op_type == "Concat" and n.output[0] in q:
            ins = [t for t in n.input if t in q]
            if len(ins) != len(n.input):
                continue   # an input stays float (or is a constant): ORT will not fuse a QLinearConcat here
            for t in ins:
                uf.union(t, n.output[0])
            joined.add(n.output[0])
    roots = {uf.find(t) for t in joined}
    groups: dict[str, list[str]] = {r: [] for r in roots}
    for t in sorted(q):
        r = uf.find(t)
        if r in groups:
            groups[r].append(t)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))


def share_concat_ranges(model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]],
                        float_nodes: Iterable[str] = (), rule: str = "concat_output",
                        ) -> tuple[dict[str, tuple[float, float]], list[list[str]]]:
    """`ranges` with every tensor of a Concat group set to one range, and the groups.

    rule "union": the union of the members' ranges (nothing is clipped more than before);
    "concat_output": the union of the group's Concat outputs' ranges only (the observer chose those on the
    values of every input together; an input's values outside it were clipped by the Concat anyway)."""
    if rule not in ("union", "concat_output"):
        raise ExporterError(f"share_concat_ranges rule {rule!r}: choose 'union' or 'concat_output'.")
    groups = concat_groups(model, ranges, float_nodes)
    outputs = {n.output[0] for n in model.graph.node if n.op_type == "Concat"}
    out = dict(ranges)
    for g in groups:
        src = [t for t in g if t in outputs] if rule == "concat_output" else g
        lo, hi = min(ranges[t][0] for t in src), max(ranges[t][1] for t in src)
        for t in g:
            out[t] = (lo, hi)
    return out, groups


def tie_same_as_input(model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]],
                      float_nodes: Iterable[str] = ()) -> dict[str, tuple[float, float]]:
    """`ranges` with the output of every quantized data-movement op (SAME_AS_INPUT) given its input's range, in
    graph order: ONNX Runtime drops the DQ -> MaxPool/Reshape/... -> Q pair only when both sides share one scale
    and zero point, and these ops produce no value outside their input's range."""
    skip, out = set(float_nodes), dict(ranges)
    for n in model.graph.node:
        if n.op_type in SAME_AS_INPUT and n.name not in skip and n.input and n.input[0] in out:
            for o in n.output:
                if o in out:
                    out[o] = out[n.input[0]]
    return out


def copyable_concat_inputs(model: onnx.ModelProto) -> list[tuple[bool, ...]]:
    """Per quantized Concat of a QDQ model (graph order): for each input, whether its DequantizeLinear has the
    scale and zero point of the Concat's output QuantizeLinear, i.e. whether QLinearConcat copies it."""
    from onnx import numpy_helper

    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    q_of = {n.input[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    out = []
    for n in model.graph.node:
        if n.op_type != "Concat" or n.output[0] not in q_of:
            continue
        q = q_of[n.output[0]]
        dqs = [producer.get(t) for t in n.input]
        out.append(tuple(dq is not None and dq.op_type == "DequantizeLinear"
                         and all(init[dq.input[i]].item() == init[q.input[i]].item() for i in (1, 2)) for dq in dqs))
    return out


__all__ = ["SAME_AS_INPUT", "concat_groups", "copyable_concat_inputs", "share_concat_ranges", "tie_same_as_input"]
