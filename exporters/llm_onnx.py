"""Rewrite the MatMuls of an FP32 decoder ONNX graph into integer ones, from plain per-layer data.

The engine exports its simulation model with each quantized Linear's dequantized weight, so every such
MatMul reads a float initializer W^T (K, N). Layers are found by the SHA-1 of that initializer's bytes
(names are not kept by the exporter), and each MatMul becomes:

- int8-dynamic (per-token activations): s = max(|x|, last axis) / 127; q = int8(clip(round(x / s)));
  MatMulInteger(q, W_int8) -> int32 -> float * s * w_scale. Integer GEMM in ONNX Runtime on CPU.
- int8-static (per-tensor activations): QuantizeLinear/DequantizeLinear (uint8) on x and a per-channel
  DequantizeLinear (int8, axis 1) on the weight: the QDQ form ONNX Runtime fuses into integer kernels.
- int4 (weight-only): com.microsoft MatMulNBits with uint4 codes packed two per byte (low nibble first),
  one float scale and one uint4 zero point per block of `group` input channels.

Imports nothing of qcal.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporters.errors import ExporterError
from exporters.onnx_io import atomic_save

Kind = Literal["int8-dynamic", "int8-static", "int4"]


@dataclass(frozen=True)
class LinearQuant:
    name: str
    weight_sha1: str            # of the float32 (K, N) initializer the MatMul reads
    kind: Kind
    codes: np.ndarray           # int8 (N, K) for int8; uint8 (N, K_padded) values 0..15 for int4
    scale: np.ndarray           # float32 (N,) for int8; (N, G) for int4
    zero: np.ndarray | None = None      # uint8 (N, G) for int4
    act_scale: float = 1.0              # int8-static
    act_zero: int = 0                   # int8-static (uint8)
    group: int = 128                    # int4
    k: int = 0                          # int4: real K before padding


def weight_sha1(w_t: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(w_t, dtype=np.float32).tobytes()).hexdigest()


def pack_uint4(codes: np.ndarray) -> np.ndarray:
    """(..., 2m) values 0..15 -> (..., m) bytes, element 2i in the low nibble."""
    c = codes.astype(np.uint8)
    if c.shape[-1] % 2:
        c = np.concatenate([c, np.zeros((*c.shape[:-1], 1), np.uint8)], axis=-1)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


def quantize_linears(src: str | Path, dst: str | Path, layers: list[LinearQuant]) -> dict[str, int]:
    """Rewrite src into dst; every layer must be found exactly once. Returns counts per kind."""
    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    by_sha = {q.weight_sha1: q for q in layers}
    if len(by_sha) != len(layers):
        raise ExporterError("two quantized layers have identical weights; they cannot be told apart in the graph.")
    found: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    replaced: set[str] = set()
    for node in g.node:
        w_name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        q = None
        if w_name in inits:
            q = by_sha.get(weight_sha1(numpy_helper.to_array(inits[w_name])))
        if q is None:
            new_nodes.append(node)
            continue
        if q.name in found:
            raise ExporterError(f"layer {q.name} matches two MatMuls ({found[q.name]}, {node.name}).")
        found[q.name] = node.name
        replaced.add(str(w_name))
        nodes, tensors = _rewrite(node.input[0], node.output[0], q, f"qcal/{q.name}")
        new_nodes += nodes
        new_inits += tensors
    missing = sorted({q.name for q in layers} - set(found))
    if missing:
        raise ExporterError(f"{len(missing)} quantized layer(s) not found in {src} (e.g. {missing[:3]}); export the "
                          "simulation model with its dequantized weights as plain MatMul initializers.")
    still_used = {i for n in new_nodes for i in n.input}
    keep = [i for i in g.initializer if i.name not in replaced or i.name in still_used]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    del g.node[:]
    g.node.extend(new_nodes)
    if any(q.kind == "int4" for q in layers) and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    atomic_save(model, dst)
    counts: dict[str, int] = {}
    for q in layers:
        counts[q.kind] = counts.get(q.kind, 0) + 1
    return counts


def _rewrite(x: str, y: str, q: LinearQuant, p: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    n_out = q.codes.shape[0]
    if q.kind == "int8-dynamic":
        t = [numpy_helper.from_array(q.codes.T.astype(np.int8).copy(), f"{p}/w_int8"),
             numpy_helper.from_array(q.scale.astype(np.float32), f"{p}/w_scale"),
             numpy_helper.from_array(np.array(1 / 127.0, np.float32), f"{p}/inv127"),
             numpy_helper.from_array(np.array(1e-12, np.float32), f"{p}/eps"),
             numpy_helper.from_array(np.array(-127.0, np.float32), f"{p}/qmin"),
             numpy_helper.from_array(np.array(127.0, np.float32), f"{p}/qmax")]
        n = [helper.make_node("Abs", [x], [f"{p}/abs"]),
             helper.make_node("ReduceMax", [f"{p}/abs"], [f"{p}/amax"], axes=[-1], keepdims=1),
             helper.make_node("Mul", [f"{p}/amax", f"{p}/inv127"], [f"{p}/s0"]),
             helper.make_node("Max", [f"{p}/s0", f"{p}/eps"], [f"{p}/s"]),
             helper.make_node("Div", [x, f"{p}/s"], [f"{p}/xs"]),
             helper.make_node("Round", [f"{p}/xs"], [f"{p}/xr"]),
             helper.make_node("Clip", [f"{p}/xr", f"{p}/qmin", f"{p}/qmax"], [f"{p}/xc"]),
             helper.make_node("Cast", [f"{p}/xc"], [f"{p}/xq"], to=TensorProto.INT8),
             helper.make_node("MatMulInteger", [f"{p}/xq", f"{p}/w_int8"], [f"{p}/acc"]),
             helper.make_node("Cast", [f"{p}/acc"], [f"{p}/accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", [f"{p}/accf", f"{p}/s"], [f"{p}/ya"]),
             helper.make_node("Mul", [f"{p}/ya", f"{p}/w_scale"], [y])]
        return n, t
    if q.kind == "int8-static":
        t = [numpy_helper.from_array(q.codes.T.astype(np.int8).copy(), f"{p}/w_int8"),
             numpy_helper.from_array(q.scale.astype(np.float32), f"{p}/w_scale"),
             numpy_helper.from_array(np.zeros(n_out, np.int8), f"{p}/w_zero"),
             numpy_helper.from_array(np.array(q.act_scale, np.float32), f"{p}/x_scale"),
             numpy_helper.from_array(np.array(q.act_zero, np.uint8), f"{p}/x_zero")]
        n = [helper.make_node("QuantizeLinear", [x, f"{p}/x_scale", f"{p}/x_zero"], [f"{p}/xq"]),
             helper.make_node("DequantizeLinear", [f"{p}/xq", f"{p}/x_scale", f"{p}/x_zero"], [f"{p}/xdq"]),
             helper.make_node("DequantizeLinear", [f"{p}/w_int8", f"{p}/w_scale", f"{p}/w_zero"], [f"{p}/wdq"],
                              axis=1),
             helper.make_node("MatMul", [f"{p}/xdq", f"{p}/wdq"], [y])]
        return n, t
    if q.kind == "int4":
        if q.zero is None:
            raise ExporterError(f"{q.name}: int4 needs zero points.")
        n_blocks = q.scale.shape[1]
        blob = pack_uint4(q.codes.reshape(n_out, n_blocks, q.group))
        t = [numpy_helper.from_array(blob, f"{p}/b_uint4"),
             numpy_helper.from_array(q.scale.astype(np.float32).reshape(-1), f"{p}/scales"),
             numpy_helper.from_array(pack_uint4(q.zero).reshape(-1), f"{p}/zero_points")]
        n = [helper.make_node("MatMulNBits", [x, f"{p}/b_uint4", f"{p}/scales", f"{p}/zero_points"], [y],
                              domain="com.microsoft", K=q.k, N=n_out, bits=4, block_size=q.group)]
        return n, t
    raise ExporterError(f"{q.name}: unknown kind {q.kind!r}; choose int8-dynamic, int8-static or int4.")
