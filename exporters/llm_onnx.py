"""Write an LLM's QuantTable into its FP32 decoder ONNX graph, and read the table back from the result.

The engine exports its simulation model with each quantized Linear's dequantized weight, so every such MatMul
reads a float initializer W^T (K, N). A table weight entry `<layer>.weight` is found by the SHA-1 of its own
dequantization (`TensorQuant.dequantized()`, arranged as W^T): the graph must hold exactly the weight the table
describes, or the layer is not found. Each such MatMul becomes:

- int8 codes (K, N), per-channel scale (N,) on axis 1, and meta activations "per-token" (W8A8 dynamic):
  s = max(|x|, last axis) / 127; q = int8(clip(round(x / s), -127, 127)); MatMulInteger(q, codes) -> int32 ->
  float * s * scale. Integer GEMM in ONNX Runtime on CPU.
- int8 codes with an activation entry `<layer>.input` (W8A8 static, per tensor): QuantizeLinear/DequantizeLinear
  with the entry's scale and zero point on x and a per-channel DequantizeLinear (axis 1) of the codes: the QDQ
  form ONNX Runtime fuses into integer kernels.
- int8 codes without either (weight-only int8): DequantizeLinear (axis 1) of the codes, then MatMul.
- uint4 codes (N, K), scale and zero point (N, ceil(K / group)) on axis 1 with group_size (W4A16): com.microsoft
  MatMulNBits, codes packed two per byte (low nibble first) and padded with the group's zero point to whole
  blocks, one float scale and one packed uint4 zero point per block.

Every initializer the rewrite adds is named `qcal/<layer>/...`; `read_llm_quant_table` reads the weight codes,
scales and zero points (unpacking MatMulNBits) and the static activation parameters back from those, so
table -> ONNX -> table is checked bit for bit. Imports nothing of qcal.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from exporters.errors import ExporterError
from exporters.onnx_io import atomic_save
from exporters.quant_table import QuantTable, TensorQuant

Kind = Literal["int8-dynamic", "int8-static", "int8-weight-only", "int4"]
WEIGHT, INPUT, PREFIX = ".weight", ".input", "qcal/"
_ZP_DTYPE = {"int8": np.int8, "uint8": np.uint8}


def weight_sha1(w_t: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(w_t, dtype=np.float32).tobytes()).hexdigest()


def pack_uint4(codes: np.ndarray) -> np.ndarray:
    """(..., 2m) values 0..15 -> (..., m) bytes, element 2i in the low nibble."""
    c = codes.astype(np.uint8)
    if c.shape[-1] % 2:
        c = np.concatenate([c, np.zeros((*c.shape[:-1], 1), np.uint8)], axis=-1)
    return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


def unpack_uint4(packed: np.ndarray, n: int) -> np.ndarray:
    """The inverse of pack_uint4: (..., m) bytes -> (..., n) values 0..15 (n <= 2m)."""
    p = packed.astype(np.uint8)
    out = np.stack([p & 0x0F, p >> 4], axis=-1).reshape(*p.shape[:-1], -1)
    return out[..., :n]


def layer_kind(table: QuantTable, layer: str) -> Kind:
    """How the table's entry for `layer` is written (see the module docstring)."""
    w = table.tensors[layer + WEIGHT]
    if w.codes is None:
        raise ExporterError(f"{layer}: the table's weight entry has no codes; load the table with its .arrays.npz.")
    if w.dtype == "uint4" and w.group_size is not None and w.axis == 1 and w.codes.ndim == 2:
        return "int4"
    if w.dtype == "int8" and w.axis == 1 and w.group_size is None and w.codes.ndim == 2:
        if layer + INPUT in table.tensors:
            return "int8-static"
        return "int8-dynamic" if table.meta.get("activations") == "per-token" else "int8-weight-only"
    raise ExporterError(f"{layer}: a {w.dtype} weight on axis {w.axis} (group {w.group_size}) has no LLM ONNX form; "
                        "write int8 codes (K, N) per channel on axis 1, or uint4 codes (N, K) in groups on axis 1.")


def _weight_t(w: TensorQuant, kind: Kind) -> np.ndarray:
    """The float W^T (K, N) the simulation graph holds for this entry: its dequantization."""
    deq = w.dequantized()
    return deq.T if kind == "int4" else deq


def quantize_linears(src: str | Path, dst: str | Path, table: QuantTable) -> dict[str, int]:
    """Rewrite src into dst with every weight entry of `table`; each must be found exactly once.
    Returns counts per kind."""
    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    named = [k for k, v in sorted(table.tensors.items()) if v.kind == "weight"]
    if any(not k.endswith(WEIGHT) for k in named):
        raise ExporterError(f"weight entries {[k for k in named if not k.endswith(WEIGHT)][:3]} are not named "
                            "'<layer>.weight'.")
    layers = [k.removesuffix(WEIGHT) for k in named]
    if not layers:
        raise ExporterError("the table has no weight entries: nothing to write.")
    kinds = {layer: layer_kind(table, layer) for layer in layers}
    by_sha = {weight_sha1(_weight_t(table.tensors[layer + WEIGHT], kinds[layer])): layer for layer in layers}
    if len(by_sha) != len(layers):
        raise ExporterError("two quantized layers have identical weights; they cannot be told apart in the graph.")
    found: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    replaced: set[str] = set()
    for node in g.node:
        w_name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        layer = None
        if w_name in inits:
            layer = by_sha.get(weight_sha1(numpy_helper.to_array(inits[w_name])))
        if layer is None:
            new_nodes.append(node)
            continue
        if layer in found:
            raise ExporterError(f"layer {layer} matches two MatMuls ({found[layer]}, {node.name}).")
        found[layer] = node.name
        replaced.add(str(w_name))
        nodes, tensors = _rewrite(node.input[0], node.output[0], table, layer, kinds[layer], f"{PREFIX}{layer}")
        new_nodes += nodes
        new_inits += tensors
    missing = sorted(set(layers) - set(found))
    if missing:
        raise ExporterError(f"{len(missing)} quantized layer(s) not found in {src} (e.g. {missing[:3]}); export the "
                            "simulation model with the table's dequantized weights as plain MatMul initializers.")
    still_used = {i for n in new_nodes for i in n.input}
    keep = [i for i in g.initializer if i.name not in replaced or i.name in still_used]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    del g.node[:]
    g.node.extend(new_nodes)
    if "int4" in kinds.values() and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    atomic_save(model, dst)
    counts: dict[str, int] = {}
    for k in kinds.values():
        counts[k] = counts.get(k, 0) + 1
    return counts


def _rewrite(x: str, y: str, table: QuantTable, layer: str, kind: Kind,
             p: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    w = table.tensors[layer + WEIGHT]
    if kind == "int4":
        n_out, k = w.codes.shape
        group, n_blocks = int(w.group_size or 0), w.scale.shape[1]
        if w.scale.shape != (n_out, -(-k // group)):
            raise ExporterError(f"{layer}: int4 scale {w.scale.shape} is not (N, ceil(K / group)) = "
                                f"({n_out}, {-(-k // group)}).")
        # pad K to whole blocks with each row's last zero point: the padded codes dequantize to 0
        pad = np.repeat(w.zero_point[:, -1:], n_blocks * group - k, axis=1)
        codes = np.concatenate([w.codes.astype(np.int64), pad], axis=1)
        t = [numpy_helper.from_array(pack_uint4(codes.reshape(n_out, n_blocks, group)), f"{p}/b_uint4"),
             numpy_helper.from_array(w.scale.astype(np.float32).reshape(-1), f"{p}/scales"),
             numpy_helper.from_array(pack_uint4(w.zero_point).reshape(-1), f"{p}/zero_points")]
        n = [helper.make_node("MatMulNBits", [x, f"{p}/b_uint4", f"{p}/scales", f"{p}/zero_points"], [y],
                              domain="com.microsoft", K=k, N=n_out, bits=4, block_size=group)]
        return n, t
    n_out = w.codes.shape[1]
    if w.scale.shape != (n_out,):
        raise ExporterError(f"{layer}: int8 weight scale {w.scale.shape} is not per output channel ({n_out},).")
    codes = numpy_helper.from_array(w.codes.astype(np.int8), f"{p}/w_int8")
    w_scale = numpy_helper.from_array(w.scale.astype(np.float32), f"{p}/w_scale")
    w_zero = numpy_helper.from_array(w.zero_point.astype(np.int8), f"{p}/w_zero")
    if kind == "int8-dynamic":
        zp = [f"{p}/x_zero", f"{p}/w_zero"] if np.any(w.zero_point) else []
        t = [codes, w_scale, numpy_helper.from_array(np.array(1 / 127.0, np.float32), f"{p}/inv127"),
             numpy_helper.from_array(np.array(1e-12, np.float32), f"{p}/eps"),
             numpy_helper.from_array(np.array(-127.0, np.float32), f"{p}/qmin"),
             numpy_helper.from_array(np.array(127.0, np.float32), f"{p}/qmax")]
        if zp:
            t += [w_zero, numpy_helper.from_array(np.array(0, np.int8), f"{p}/x_zero")]
        n = [helper.make_node("Abs", [x], [f"{p}/abs"]),
             helper.make_node("ReduceMax", [f"{p}/abs"], [f"{p}/amax"], axes=[-1], keepdims=1),
             helper.make_node("Mul", [f"{p}/amax", f"{p}/inv127"], [f"{p}/s0"]),
             helper.make_node("Max", [f"{p}/s0", f"{p}/eps"], [f"{p}/s"]),
             helper.make_node("Div", [x, f"{p}/s"], [f"{p}/xs"]),
             helper.make_node("Round", [f"{p}/xs"], [f"{p}/xr"]),
             helper.make_node("Clip", [f"{p}/xr", f"{p}/qmin", f"{p}/qmax"], [f"{p}/xc"]),
             helper.make_node("Cast", [f"{p}/xc"], [f"{p}/xq"], to=TensorProto.INT8),
             helper.make_node("MatMulInteger", [f"{p}/xq", f"{p}/w_int8", *zp], [f"{p}/acc"]),
             helper.make_node("Cast", [f"{p}/acc"], [f"{p}/accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", [f"{p}/accf", f"{p}/s"], [f"{p}/ya"]),
             helper.make_node("Mul", [f"{p}/ya", f"{p}/w_scale"], [y])]
        return n, t
    t = [codes, w_scale, w_zero]
    n = [helper.make_node("DequantizeLinear", [f"{p}/w_int8", f"{p}/w_scale", f"{p}/w_zero"], [f"{p}/wdq"], axis=1)]
    if kind == "int8-weight-only":
        return [*n, helper.make_node("MatMul", [x, f"{p}/wdq"], [y])], t
    a = table.tensors[layer + INPUT]
    if a.dtype not in _ZP_DTYPE or a.scale.size != 1:
        raise ExporterError(f"{layer}: static activations need one int8/uint8 scale and zero point, got {a.dtype} "
                            f"with {a.scale.size} scales.")
    t += [numpy_helper.from_array(a.scale.reshape(()).astype(np.float32), f"{p}/x_scale"),
          numpy_helper.from_array(a.zero_point.reshape(()).astype(_ZP_DTYPE[a.dtype]), f"{p}/x_zero")]
    n = [helper.make_node("QuantizeLinear", [x, f"{p}/x_scale", f"{p}/x_zero"], [f"{p}/xq"]),
         helper.make_node("DequantizeLinear", [f"{p}/xq", f"{p}/x_scale", f"{p}/x_zero"], [f"{p}/xdq"]), *n,
         helper.make_node("MatMul", [f"{p}/xdq", f"{p}/wdq"], [y])]
    return n, t


def read_llm_quant_table(model: onnx.ModelProto | str | Path) -> QuantTable:
    """The table an LLM export holds: per rewritten layer its weight entry (codes, scales, zero points, axis,
    group; MatMulNBits unpacked) and, for static activations, its `<layer>.input` entry. The graph carries no
    calibrated ranges (rmin/rmax are None) nor the table's float nodes or meta."""
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer if i.name.startswith(PREFIX)}

    def arr(name: str) -> np.ndarray:
        if name not in inits:
            raise ExporterError(f"initializer {name!r} is missing: not a graph written by quantize_linears.")
        return inits[name]

    tensors: dict[str, TensorQuant] = {}
    for node in m.graph.node:
        # the initializer that names the layer: the codes (DequantizeLinear's input 0, the MatMuls' input 1) or x_scale
        b = node.input[0] if node.op_type == "DequantizeLinear" else node.input[1] if len(node.input) > 1 else ""
        if not b.startswith(PREFIX):
            continue
        p = b.rsplit("/", 1)[0]
        layer = p.removeprefix(PREFIX)
        if node.op_type == "MatMulNBits":
            at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            k, n_out, group = int(at["K"]), int(at["N"]), int(at["block_size"])
            if int(at.get("bits", 4)) != 4:
                raise ExporterError(f"{layer}: MatMulNBits with bits={at['bits']}; only 4 is read.")
            n_blocks = -(-k // group)
            codes = unpack_uint4(arr(f"{p}/b_uint4").reshape(n_out, -1), n_blocks * group)[:, :k]
            zero = unpack_uint4(arr(f"{p}/zero_points").reshape(n_out, -1), n_blocks)
            tensors[layer + WEIGHT] = TensorQuant("uint4", arr(f"{p}/scales").reshape(n_out, n_blocks), zero,
                                                  axis=1, kind="weight", bits=4, group_size=group, codes=codes)
        elif node.op_type in ("MatMulInteger", "DequantizeLinear") and b == f"{p}/w_int8":
            codes = arr(b)
            zero = arr(f"{p}/w_zero") if f"{p}/w_zero" in inits else np.zeros(codes.shape[1], np.int64)
            tensors[layer + WEIGHT] = TensorQuant("int8", arr(f"{p}/w_scale"), zero, axis=1, kind="weight", bits=8,
                                                  codes=codes)
        elif node.op_type == "QuantizeLinear" and b == f"{p}/x_scale":
            zp = arr(f"{p}/x_zero")
            tensors[layer + INPUT] = TensorQuant(str(zp.dtype), arr(b).reshape(1), zp.reshape(1).astype(np.int64),
                                                 kind="activation")
    return QuantTable(tensors)


def shipped(table: QuantTable) -> QuantTable:
    """What an exported graph can hold of `table`: its entries without calibrated ranges, no float nodes or meta
    (compare `read_llm_quant_table(onnx) == shipped(table)`)."""
    return QuantTable({k: v.replace(rmin=None, rmax=None) for k, v in table.tensors.items()})
