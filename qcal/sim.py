"""INT8 simulation in PyTorch: run an ONNX graph with torch ops on CPU or CUDA, Q/DQ as fake quantization.

Two ways to get the simulation of a QuantTable:
  * `TorchRunner(qdq_onnx)`: the QDQ model qcal wrote (the table as written: same tensors, same scales, same
    per-edge placement); QuantizeLinear/DequantizeLinear run as round-half-to-even + saturate + rescale. On CPU
    it agrees with ONNX Runtime up to float rounding (tests/test_sim.py, benchmarks/tensorrt_profile.py).
  * `TorchRunner(fp32_onnx, table=QuantTable)`: the FP32 graph with the table's fake-quant applied at tensor
    level: weights per channel once, every activation in the table where it is produced; nodes in
    table.float_nodes read the float tensor. This is the table alone, without the exporter's per-edge choices.

`run(None, feeds) -> [np.ndarray]` is ONNX Runtime's InferenceSession interface, so the robustness harness uses
either runtime unchanged (`qcal bench --device cuda`). Only the ops of YOLO-style detectors (and small CNNs) are
implemented; another op is an error naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from exporters.quant_table import QuantTable, TensorQuant
from qcal.errors import QcalError

_QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}
_ZP_DTYPE = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT32: "int32"}


class SimulationError(QcalError):
    """The graph has an op or attribute the torch simulation does not implement."""


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def fake_quant(torch: Any, x: Any, scale: Any, zp: Any, qmin: int, qmax: int, axis: int | None) -> Any:
    """(clamp(round(x / s) + z, qmin, qmax) - z) * s, per tensor or per channel on `axis` (round half to even,
    as ONNX QuantizeLinear)."""
    if axis is not None and scale.numel() > 1:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    q = torch.clamp(torch.round(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale


class TorchRunner:
    """An ONNX graph executed with torch ops; see the module docstring."""

    def __init__(self, model: str | Path | onnx.ModelProto, *, table: QuantTable | None = None,
                 device: str = "cpu") -> None:
        import torch

        self.torch = torch
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SimulationError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu.")
        self.device = torch.device(device)
        self.model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        g = self.model.graph
        unknown = sorted({n.op_type for n in g.node} - set(_OPS))
        if unknown:
            raise SimulationError(f"the torch simulation has no implementation of {unknown}; run this model with "
                                  "ONNX Runtime (--device cpu) instead.")
        self.values: dict[str, Any] = {}
        for init in g.initializer:
            arr = numpy_helper.to_array(init)
            self.values[init.name] = torch.from_numpy(np.array(arr)).to(self.device)
        self.inputs = [i.name for i in g.input if i.name not in self.values]
        self.nodes = _topological(list(g.node), set(self.values) | set(self.inputs))
        self.outputs = [o.name for o in g.output]
        self.table = table
        self._act: dict[str, TensorQuant] = {}
        self._float_readers = set(table.float_nodes) if table is not None else set()
        if table is not None:
            for name, tq in table.tensors.items():
                if name in self.values and tq.kind == "weight":
                    self.values[name] = self._fq(self.values[name], tq)
                elif tq.kind == "activation":
                    self._act[name] = tq

    def _fq(self, x: Any, tq: TensorQuant) -> Any:
        t = self.torch
        qmin, qmax = _QRANGE.get(tq.dtype, (-128, 127))
        s = t.tensor(tq.scale, dtype=t.float32, device=self.device)
        z = t.tensor(tq.zero_point, dtype=t.float32, device=self.device)
        return fake_quant(t, x.float(), s, z, qmin, qmax, tq.axis).to(x.dtype)

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        t = self.torch
        env = dict(self.values)
        quantized: dict[str, Any] = {}
        for name in self.inputs:
            env[name] = t.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device)
        with t.no_grad():
            for name in self.inputs:
                if name in self._act:
                    quantized[name] = self._fq(env[name], self._act[name])
            for node in self.nodes:
                float_reader = node.name in self._float_readers
                args = [None if not i else (env[i] if float_reader or i not in quantized else quantized[i])
                        for i in node.input]
                outs = _OPS[node.op_type](t, args, _attrs(node), node)
                for o, v in zip(node.output, outs if isinstance(outs, list | tuple) else [outs], strict=False):
                    env[o] = v
                    if o in self._act:
                        quantized[o] = self._fq(v, self._act[o])
        return [env[o].float().cpu().numpy() if env[o].is_floating_point() else env[o].cpu().numpy()
                for o in (output_names or self.outputs)]


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where every input exists before use (some converters append nodes out of order)."""
    have, order, pending = set(available) | {""}, [], list(nodes)
    while pending:
        ready = [n for n in pending if all(i in have for i in n.input)]
        if not ready:
            missing = sorted({i for n in pending for i in n.input if i not in have})[:5]
            raise SimulationError(f"the graph cannot be ordered: inputs {missing} are never produced.")
        for n in ready:
            order.append(n)
            have.update(n.output)
        pending = [n for n in pending if n not in ready]
    return order


# --- ops (torch module t, inputs, attributes, node) -> output or list of outputs ------------------------------
def _conv(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    pads = at.get("pads", [0, 0, 0, 0])
    if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise SimulationError(f"Conv '{n.name}': auto_pad is not supported; export with explicit pads.")
    half = len(pads) // 2
    x = a[0]
    if pads[:half] != pads[half:]:
        x = t.nn.functional.pad(x, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
        pads = [0] * len(pads)
    return t.nn.functional.conv2d(x, a[1], a[2] if len(a) > 2 else None, stride=at.get("strides", 1),
                                  padding=pads[:half], dilation=at.get("dilations", 1), groups=at.get("group", 1))


def _maxpool(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    pads = at.get("pads", [0, 0, 0, 0])
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        raise SimulationError(f"MaxPool '{n.name}': asymmetric pads are not supported.")
    return t.nn.functional.max_pool2d(a[0], at["kernel_shape"], at.get("strides", 1), pads[:half],
                                      at.get("dilations", 1), ceil_mode=bool(at.get("ceil_mode", 0)))


def _resize(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    mode = at.get("mode", b"nearest")
    ctm = at.get("coordinate_transformation_mode", b"half_pixel")
    if mode != b"nearest" or ctm != b"asymmetric" or at.get("nearest_mode", b"round_prefer_floor") != b"floor":
        raise SimulationError(f"Resize '{n.name}': only nearest/asymmetric/floor (YOLO's upsample) is supported.")
    sizes = a[3] if len(a) > 3 and a[3] is not None and a[3].numel() else None
    if sizes is not None:
        return t.nn.functional.interpolate(a[0], size=[int(s) for s in sizes.tolist()[2:]], mode="nearest")
    scales = [float(s) for s in a[2].tolist()[2:]]
    return t.nn.functional.interpolate(a[0], scale_factor=scales, mode="nearest")


def _split(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    axis = at.get("axis", 0)
    sizes = a[1].tolist() if len(a) > 1 and a[1] is not None else at.get("split")
    if sizes is None:
        k = len(n.output)
        sizes = [a[0].shape[axis] // k] * k
    return list(t.split(a[0], [int(s) for s in sizes], dim=axis))


def _slice(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    x = a[0]
    starts, ends = a[1].tolist(), a[2].tolist()
    axes = a[3].tolist() if len(a) > 3 and a[3] is not None else list(range(len(starts)))
    steps = a[4].tolist() if len(a) > 4 and a[4] is not None else [1] * len(starts)
    idx: list[Any] = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        if st != 1:
            raise SimulationError(f"Slice '{n.name}': steps other than 1 are not supported.")
        dim = x.shape[ax]
        idx[ax] = slice(max(min(s, dim), -dim), max(min(e, dim), -dim - 1))
    return x[tuple(idx)]


def _reshape(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    shape = [int(s) for s in a[1].tolist()]
    shape = [a[0].shape[i] if s == 0 and not at.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return a[0].reshape(shape)


def _q(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    zp = a[2] if len(a) > 2 and a[2] is not None else t.zeros((), dtype=t.uint8, device=a[0].device)
    qmin, qmax = _QRANGE[_torch_qtype(t, zp, n)]
    x, s, z = a[0].float(), a[1].float(), zp.float()
    if s.numel() > 1:
        shape = [1] * x.dim()
        shape[at.get("axis", 1)] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return t.clamp(t.round(x / s) + z, qmin, qmax)    # integer values, kept as float32 for DQ


def _dq(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    x, s = a[0].float(), a[1].float()
    z = a[2].float() if len(a) > 2 and a[2] is not None else t.zeros((), device=x.device)
    if s.numel() > 1:
        shape = [1] * x.dim()
        shape[at.get("axis", 1)] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return (x - z) * s


def _torch_qtype(t: Any, zp: Any, n: onnx.NodeProto) -> str:
    names = {t.int8: "int8", t.uint8: "uint8", t.int32: "int32"}
    if zp.dtype not in names:
        raise SimulationError(f"{n.op_type} '{n.name}': zero point dtype {zp.dtype} is not int8/uint8/int32.")
    return names[zp.dtype]


def _cast(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    to = {onnx.TensorProto.FLOAT: t.float32, onnx.TensorProto.FLOAT16: t.float16, onnx.TensorProto.INT64: t.int64,
          onnx.TensorProto.INT32: t.int32, onnx.TensorProto.BOOL: t.bool}.get(at["to"])
    if to is None:
        raise SimulationError(f"Cast '{n.name}': target type {at['to']} is not supported.")
    return a[0].to(to)


def _const(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    if "value" not in at:
        raise SimulationError(f"Constant '{n.name}': only the 'value' attribute is supported.")
    return t.from_numpy(np.array(numpy_helper.to_array(at["value"])))


def _gather(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    axis = at.get("axis", 0)
    idx = a[1].to(a[0].device)
    return t.index_select(a[0], axis, idx.reshape(-1)).reshape(tuple(idx.shape) + tuple(a[0].shape[axis + 1:]))


def _gemm(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    x = a[0].T if at.get("transA", 0) else a[0]
    w = a[1].T if at.get("transB", 0) else a[1]
    y = at.get("alpha", 1.0) * (x @ w)
    return y + at.get("beta", 1.0) * a[2] if len(a) > 2 and a[2] is not None else y


_OPS: dict[str, Callable[..., Any]] = {
    "Conv": _conv, "MaxPool": _maxpool, "Resize": _resize, "Split": _split, "Slice": _slice, "Reshape": _reshape,
    "QuantizeLinear": _q, "DequantizeLinear": _dq, "Cast": _cast, "Constant": _const, "Gemm": _gemm,
    "Sigmoid": lambda t, a, at, n: t.sigmoid(a[0]),
    "Relu": lambda t, a, at, n: t.relu(a[0]),
    "Mul": lambda t, a, at, n: a[0] * a[1].to(a[0].device),
    "Add": lambda t, a, at, n: a[0] + a[1].to(a[0].device),
    "Sub": lambda t, a, at, n: a[0] - a[1].to(a[0].device),
    "Div": lambda t, a, at, n: (t.div(a[0], a[1].to(a[0].device), rounding_mode="trunc")
                                if not a[0].is_floating_point() else a[0] / a[1].to(a[0].device)),
    "Concat": lambda t, a, at, n: t.cat([x for x in a if x is not None], dim=at["axis"]),
    "Transpose": lambda t, a, at, n: a[0].permute(*at["perm"]),
    "Softmax": lambda t, a, at, n: t.softmax(a[0], dim=at.get("axis", -1)),
    "Identity": lambda t, a, at, n: a[0],
    "Shape": lambda t, a, at, n: t.tensor(list(a[0].shape), dtype=t.int64),
    "Gather": _gather,
    "Flatten": lambda t, a, at, n: t.flatten(a[0], at.get("axis", 1)),
    "MatMul": lambda t, a, at, n: a[0] @ a[1],
    "GlobalAveragePool": lambda t, a, at, n: a[0].mean(dim=(2, 3), keepdim=True),
}


def open_runner(path: str | Path, *, runtime: str = "ort", device: str = "cpu", threads: int = 2) -> Any:
    """A `run(None, feeds)` runner for an ONNX file: ONNX Runtime (CPU) or the torch simulation (cpu/cuda)."""
    if runtime == "ort":
        if device != "cpu":
            raise SimulationError(f"runtime 'ort' runs on cpu here, not {device!r}; use runtime 'torch'.")
        from qcal.calibrate import make_session

        return make_session(Path(path).read_bytes(), threads)
    if runtime == "torch":
        return TorchRunner(path, device=device)   # torch's CPU threads are the caller's choice
    raise SimulationError(f"runtime {runtime!r}: choose 'ort' or 'torch'.")
