"""The one INT8 simulator: an ONNX graph run with torch ops on CPU or CUDA, Q/DQ as ONNX defines them.

What it runs is exactly what qcal ships: `TorchRunner(fp32, table=QuantTable, profile=...)` lowers the table with
`exporters.qdq.lower_qdq`, the function `export_qdq` saves, so every pass and search that scores a table here
scores the model that is exported. QuantizeLinear/DequantizeLinear run as qcal.quant.fakequant's quantize_linear /
dequantize_linear (round half to even, saturate, rescale). Against ONNX Runtime running the exported model with
graph optimizations off it agrees up to float rounding (tests/test_sim.py; benchmarks/one_engine.py measures the
integer-code agreement on the real detector).

`run(None, feeds) -> [np.ndarray]` is ONNX Runtime's InferenceSession interface, so the robustness harness uses
either runtime unchanged (`qcal bench --device cuda`); `run_capture` returns named intermediate tensors too (a
QuantizeLinear output holds integer codes). Only the ops of YOLO-style detectors (and small CNNs) are implemented;
another op is an error naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from exporters.profiles import PROFILES, QdqProfile
from exporters.qdq import Q_SUFFIX, lower_qdq
from exporters.quant_table import QuantTable
from qcal.errors import QcalError
from qcal.quant.fakequant import dequantize_linear, quantize_linear

_QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}


class SimulationError(QcalError):
    """The graph has an op or attribute the torch simulation does not implement."""


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class TorchRunner:
    """An ONNX graph executed with torch ops; with `table`, the QDQ graph qcal exports for it (module docstring)."""

    def __init__(self, model: str | Path | onnx.ModelProto, *, table: QuantTable | None = None,
                 profile: QdqProfile | None = None, device: str = "cpu") -> None:
        import torch

        self.torch = torch
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SimulationError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu.")
        self.device = torch.device(device)
        self.model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        self._float: dict[str, Any] = {}   # the FP32 values of the table's weights and biases (`bypass`)
        if table is not None:
            if profile is None and table.target not in PROFILES:
                raise SimulationError(f"the table's target {table.target!r} is not a profile; pass profile=.")
            quantized = set(table.weights())
            self._float = {i.name: torch.from_numpy(np.array(numpy_helper.to_array(i))).to(self.device)
                           for i in self.model.graph.initializer if i.name in quantized}
            self.model = lower_qdq(self.model, table, profile or PROFILES[table.target])
        g = self.model.graph
        unknown = sorted({n.op_type for n in g.node} - set(_OPS))
        if unknown:
            raise SimulationError(f"the torch simulation has no implementation of {unknown}; run this model with "
                                  "ONNX Runtime (--device cpu) instead.")
        self.values: dict[str, Any] = {}
        self._source: dict[str, np.ndarray] = {}   # what each parameter tensor was made from (set_params compares)
        for init in g.initializer:
            self._source[init.name] = np.array(numpy_helper.to_array(init))
            self.values[init.name] = torch.from_numpy(self._source[init.name]).to(self.device)
        self.inputs = [i.name for i in g.input if i.name not in self.values]
        self.nodes = _topological(list(g.node), set(self.values) | set(self.inputs))
        self.outputs = [o.name for o in g.output]
        self._steps = [(n, _OPS[n.op_type], _attrs(n)) for n in self.nodes]
        # Nodes computed from parameters alone (a weight's or bias's DequantizeLinear) run once per parameter set.
        derived: set[str] = set(self.values)
        self._const_steps: list[tuple[onnx.NodeProto, Callable[..., Any], dict[str, Any]]] = []
        for step in self._steps:
            if all(not i or i in derived for i in step[0].input):
                self._const_steps.append(step)
                derived.update(step[0].output)
        folded = {id(st[0]) for st in self._const_steps}
        self._steps = [st for st in self._steps if id(st[0]) not in folded]
        self.constants: dict[str, Any] = {}
        self._fold()

    def _fold(self) -> None:
        env = self._execute(dict(self.values), self._const_steps)
        self.constants = {k: v for k, v in env.items() if k not in self.values}

    def _entries(self, table: QuantTable) -> Iterator[tuple[str, np.ndarray]]:
        for name, tq in table.tensors.items():
            per_tensor = tq.axis is None and tq.scale.size == 1
            for key, arr in ((f"{name}_scale", tq.scale.reshape(()) if per_tensor else tq.scale),
                             (f"{name}_zero_point", tq.zero_point.reshape(()) if per_tensor else tq.zero_point),
                             (f"{name}_quantized", tq.codes)):
                if arr is None:
                    continue
                if key not in self.values:
                    raise SimulationError(f"set_params: {key!r} is not a parameter of this graph; build a new "
                                          "TorchRunner for a table with other entries.")
                yield key, arr

    def diff(self, table: QuantTable) -> set[str]:
        """The parameter tensors `set_params(table)` would change."""
        return {k for k, arr in self._entries(table) if not _same(self._source.get(k), arr)}

    def set_params(self, table: QuantTable) -> set[str]:
        """New parameters for the same placement: every entry's scale and zero point (and a weight's or bias's
        codes) replace the tensors `lower_qdq` named after it. The table must have the same entries as the one
        this runner was built from. Returns the names of the parameter tensors that changed."""
        changed = set()
        for key, arr in self._entries(table):
            if _same(self._source.get(key), arr):
                continue
            self._source[key] = np.array(arr, dtype=self._source[key].dtype, copy=True)
            self.values[key] = self.torch.from_numpy(self._source[key]).to(self.device)
            changed.add(key)
        if any(i in changed for node, _, _ in self._const_steps for i in node.input):
            self._fold()
        return changed

    def downstream(self, params: set[str]) -> tuple[list[int], set[str]]:
        """The steps whose result depends on the named parameter tensors (indices into the run order), and the
        values those steps read that no such step produces: what a partial run (`run_from`) starts from."""
        reached = set(params)
        for node, _, _ in self._const_steps:
            if any(i in reached for i in node.input):
                reached.update(node.output)
        steps: list[int] = []
        produced: set[str] = set()
        frontier: set[str] = set()
        for k, (node, _, _) in enumerate(self._steps):
            if any(i in reached for i in node.input):
                steps.append(k)
                reached.update(node.output)
                produced.update(node.output)
                frontier.update(i for i in node.input if i and i not in produced)
        frontier.update(o for o in self.outputs if o not in produced)
        return steps, {v for v in frontier if v not in self.values and v not in self.constants}

    def run_except(self, feeds: dict[str, np.ndarray], skip: list[int], keep: set[str],
                   bypass: frozenset[str] = frozenset()) -> dict[str, Any]:
        """A run that leaves out the steps `skip`; returns the values `keep` (a frontier from `downstream`).
        `bypass`: table entries computed in float (an activation's Q/DQ pass it through, a weight keeps its FP32
        value), the others quantized."""
        left = set(skip)
        env = self._execute(self._start(feeds, bypass), [st for k, st in enumerate(self._steps) if k not in left],
                            bypass=bypass)
        return {n: env[n] for n in keep}

    def run_from(self, frontier: dict[str, Any], steps: list[int],
                 bypass: frozenset[str] = frozenset()) -> list[np.ndarray]:
        """The outputs when only `steps` run, on the current parameters, from `frontier` (from `run_except`):
        the same values a full run gives when the other steps' inputs are unchanged."""
        env = self._execute({**self._constants(bypass), **frontier}, [self._steps[k] for k in steps], bypass=bypass)
        return [as_numpy(env[o]) for o in self.outputs]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        env = self._forward(feeds)
        return [as_numpy(env[o]) for o in (output_names or self.outputs)]

    def run_capture(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, Any]:
        """The named tensors (graph outputs or intermediates) of one run, as torch tensors on the device."""
        env = self._forward(feeds)
        return {n: env[n] for n in names}

    def run_forced(self, feeds: dict[str, np.ndarray], forced: dict[str, np.ndarray],
                   names: list[str]) -> dict[str, Any]:
        """Each node computed from `forced` values of its inputs where given (another runtime's tensors of the same
        graph): one op's arithmetic at a time, without the drift a free-running comparison accumulates."""
        t = self.torch
        pinned = {k: t.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in forced.items()}
        env = self._forward(feeds, pinned)
        return {n: env[n] for n in names}

    def _constants(self, bypass: frozenset[str]) -> dict[str, Any]:
        return {**self.values, **self.constants, **{k: v for k, v in self._float.items() if k in bypass}}

    def _start(self, feeds: dict[str, np.ndarray], bypass: frozenset[str] = frozenset()) -> dict[str, Any]:
        env = self._constants(bypass)
        for name in self.inputs:
            env[name] = self.torch.from_numpy(np.ascontiguousarray(feeds[name])).to(self.device)
        return env

    def _forward(self, feeds: dict[str, np.ndarray], pinned: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._execute(self._start(feeds), self._steps, pinned)

    def _execute(self, env: dict[str, Any], steps: list[tuple[onnx.NodeProto, Callable[..., Any], dict[str, Any]]],
                 pinned: dict[str, Any] | None = None, bypass: frozenset[str] = frozenset()) -> dict[str, Any]:
        pin = pinned or {}
        with self.torch.no_grad():
            for node, op, at in steps:
                if bypass and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                    src = node.input[0].removesuffix(Q_SUFFIX)
                    if src in bypass:   # a float activation: its DequantizeLinear output is the value itself
                        if node.op_type == "DequantizeLinear":
                            env[node.output[0]] = env[src]
                        continue
                args = [(pin[i] if i in pin else env[i]) if i else None for i in node.input]
                outs = op(self.torch, args, at, node)
                for o, v in zip(node.output, outs if isinstance(outs, list | tuple) else [outs], strict=False):
                    env[o] = v
        return env


def _same(a: np.ndarray | None, b: np.ndarray) -> bool:
    """Whether parameter `b`, stored as `a` is (its dtype), would equal `a`."""
    return a is not None and a.shape == b.shape and bool(np.array_equal(a, b.astype(a.dtype, copy=False)))


def as_numpy(v: Any) -> np.ndarray:
    return v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()


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


def _avgpool(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    pads = at.get("pads", [0, 0, 0, 0])
    half = len(pads) // 2
    if pads[:half] != pads[half:]:
        raise SimulationError(f"AveragePool '{n.name}': asymmetric pads are not supported.")
    return t.nn.functional.avg_pool2d(a[0], at["kernel_shape"], at.get("strides", 1), pads[:half],
                                      ceil_mode=bool(at.get("ceil_mode", 0)),
                                      count_include_pad=bool(at.get("count_include_pad", 0)))


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
    s, z = _bcast(a[1].float(), zp.float(), a[0].dim(), at)
    return quantize_linear(a[0].float(), s, z, qmin, qmax)    # integer values, kept as float32 for DQ


def _dq(t: Any, a: list[Any], at: dict[str, Any], n: onnx.NodeProto) -> Any:
    x = a[0]
    z = a[2].float() if len(a) > 2 and a[2] is not None else t.zeros((), device=x.device)
    s, z = _bcast(a[1].float(), z, x.dim(), at)
    return dequantize_linear(x.float(), s, z)


def _bcast(s: Any, z: Any, ndim: int, at: dict[str, Any]) -> tuple[Any, Any]:
    """Scale and zero point shaped against the data: per tensor, per axis, or blocked (block_size on axis)."""
    if s.numel() == 1 and "block_size" not in at:
        return s.reshape(()), z.reshape(())
    axis = at.get("axis", 1) % ndim
    if "block_size" in at:
        bs = int(at["block_size"])
        return s.repeat_interleave(bs, dim=axis), z.repeat_interleave(bs, dim=axis)
    shape = [1] * ndim
    shape[axis] = -1
    return s.reshape(shape), z.reshape(shape)


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
    "Conv": _conv, "MaxPool": _maxpool, "AveragePool": _avgpool, "Resize": _resize, "Split": _split, "Slice": _slice, "Reshape": _reshape,
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
        from qcal.calibration.calibrate import make_session

        return make_session(Path(path).read_bytes(), threads)
    if runtime == "torch":
        return TorchRunner(path, device=device)   # torch's CPU threads are the caller's choice
    raise SimulationError(f"runtime {runtime!r}: choose 'ort' or 'torch'.")
