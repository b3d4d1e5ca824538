"""Weight and bias entries of a QuantTable: the exact integer codes the exported model will hold (pure numpy).

Round to nearest (half to even, as ONNX QuantizeLinear) on a symmetric per-channel grid: scale = max|w_c| / qmax,
zero point 0, codes = clip(rint(w / scale), -qmax, qmax). A pass that learns its own step sizes or rounding
(AdaRound) hands in `scale` and/or `codes` instead; the table then holds those, and the exporter writes them.

Biases (ONNX Runtime CPU's integer kernels): int32 codes rint(b / (s_x * s_w[c])) with that scale, computed in
float32 as ONNX Runtime's QLinearConv expects; the simulator dequantizes the same codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from exporters.quant_table import TensorQuant
from qcal.quant.qparams import qrange

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class WeightSite:
    """One weighted node whose weight is a constant initializer: what quantizing it touches."""

    node: str
    op_type: str
    activation: str        # the activation input (its scale sets the bias scale)
    weight: str
    bias: str | None
    axis: int              # the weight's output-channel axis


def weight_sites(model: onnx.ModelProto) -> list[WeightSite]:
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type not in WEIGHTED or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = inits[n.input[1]]
        if n.op_type == "Conv":
            axis = 0
        elif n.op_type == "ConvTranspose":
            axis = 1
        elif n.op_type == "Gemm":
            axis = 0 if any(a.name == "transB" and a.i for a in n.attribute) else 1
        else:
            axis = len(w.dims) - 1
        bias = n.input[2] if len(n.input) > 2 and n.input[2] in inits and n.op_type != "MatMul" else None
        out.append(WeightSite(n.name, n.op_type, n.input[0], n.input[1], bias, axis))
    return out


def quantize_weight(w: np.ndarray, axis: int | None, *, bits: int = 8, scale: np.ndarray | None = None,
                    codes: np.ndarray | None = None) -> TensorQuant:
    """A weight entry: symmetric int8 (bits <= 8: 7 for reduce_range) per channel on `axis` (None: per tensor)."""
    qmin, qmax = qrange(bits, signed=True, symmetric=True)
    w = np.asarray(w, np.float32)
    red = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else tuple(range(w.ndim))
    if scale is None:
        absmax = np.abs(w).max(axis=red).astype(np.float64) if w.size else np.zeros(1)
        scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32).reshape(-1)
    scale = np.asarray(scale, np.float32).reshape(-1)
    view = [1] * w.ndim
    if axis is not None:
        view[axis] = -1
    if codes is None:
        codes = np.clip(np.rint(w.astype(np.float64) / scale.reshape(view).astype(np.float64)), qmin, qmax)
    return TensorQuant("int8", scale, np.zeros(scale.shape, np.int64), axis=axis, kind="weight", bits=bits,
                       codes=np.asarray(codes).astype(np.int64))


def quantize_bias(b: np.ndarray, input_scale: float, weight: TensorQuant) -> TensorQuant:
    """An int32 bias entry with scale s_x * s_w (per output channel, axis 0)."""
    s = (np.float32(input_scale) * weight.scale.astype(np.float32)).astype(np.float32)
    s = np.where(s > 0, s, np.float32(1.0)).astype(np.float32)
    b = np.asarray(b, np.float64).reshape(-1)
    if s.size == 1 and b.size > 1:
        s = np.full(b.shape, s[0], np.float32)
    lo, hi = -(2**31), 2**31 - 1
    codes = np.clip(np.rint(b / s.astype(np.float64)), lo, hi).astype(np.int64)
    return TensorQuant("int32", s, np.zeros(s.shape, np.int64), axis=0, kind="bias", bits=32, codes=codes)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for i in model.graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    raise KeyError(name)


__all__ = ["WEIGHTED", "WeightSite", "initializer", "quantize_bias", "quantize_weight", "weight_sites"]
