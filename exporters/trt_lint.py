"""TensorRT explicit-quantization lint: does a Q/DQ ONNX model follow TensorRT's documented rules?

Pure onnx: no TensorRT needed. Each rule has a stable id, the section of NVIDIA's TensorRT documentation it
comes from, and the fix. `lint_tensorrt(model)` returns every violation with the offending node.

Sources (NVIDIA TensorRT documentation, "Working with Quantized Types" chapter of the developer guide and the
operator reference; section titles as published for TensorRT 8.6-10.x):
  [EQ-ONNX]  Explicit Quantization > ONNX Support
  [EQ-W]     Explicit Quantization > Quantized Weights
  [EQ-PROC]  Explicit Quantization > TensorRT Processing of Q/DQ Networks
  [EQ-PLACE] Explicit Quantization > Q/DQ Layer-Placement Recommendations
  [QT]       Working with Quantized Types > Introduction (signed, symmetric INT8)
  [OP-Q]     Operators > Quantize / Dequantize (scale and zero point: build-time constants, zero point all zero)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from exporters.errors import ExporterError

Q, DQ = "QuantizeLinear", "DequantizeLinear"
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Layers TensorRT moves a DQ across (it quantizes their input instead): a float tensor that such a layer makes
# from a DQ output is still quantized for fusion purposes ([EQ-PROC], "commuting layers").
COMMUTING = ("MaxPool", "Resize", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split",
             "Identity", "Pad", "GlobalMaxPool")
INTEGER_OPS = ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QGemm", "QAttention",
               "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearConv", "QLinearMatMul")


@dataclass(frozen=True)
class Rule:
    """kind "required": TensorRT rejects the model or computes something else; "placement": it builds, but the
    Q/DQ layout keeps TensorRT from fusing (slower, or an extra float round trip)."""

    id: str
    title: str
    source: str
    fix: str
    kind: str = "required"


RULES = {r.id: r for r in (
    Rule("TRT001", "only QuantizeLinear/DequantizeLinear express quantization", "[EQ-ONNX] TensorRT imports "
         "ONNX QuantizeLinear/DequantizeLinear as IQuantizeLayer/IDequantizeLayer; QLinear*/ConvInteger/"
         "MatMulInteger/DynamicQuantizeLinear have no TensorRT importer",
         "export in QDQ format (onnxruntime quant_format=QuantFormat.QDQ; qcal --target tensorrt)"),
    Rule("TRT002", "quantized type is signed INT8", "[QT] TensorRT quantizes to signed INT8 (symmetric); "
         "a QuantizeLinear without zero point, or with a uint8 one, produces uint8",
         "quantize with activation_type=QInt8 and weight_type=QInt8 and give every Q/DQ an int8 zero point"),
    Rule("TRT003", "zero point is 0", "[OP-Q] the zero_point must only contain zero-valued coefficients",
         "use symmetric quantization (ActivationSymmetric=True, WeightSymmetric=True)"),
    Rule("TRT004", "scale is finite, positive float32", "[OP-Q] scale of type float; a zero, negative or "
         "non-finite scale cannot be inverted", "recalibrate: a tensor that is constant 0 needs a tiny "
         "positive range, not scale 0; store scales as float32"),
    Rule("TRT005", "scale and zero point are build-time constants", "[OP-Q] the scale tensor must be a "
         "build-time constant", "store scale/zero point as initializers (or Constant nodes), not computed tensors"),
    Rule("TRT006", "weights per-channel on the output-channel axis", "[EQ-W][EQ-PLACE] weights of "
         "Convolution/Deconvolution/GEMM are quantized per output channel (Conv K = axis 0, ConvTranspose "
         "axis 1, MatMul/Gemm the N axis)", "quantize weights with per_channel=True on the output-channel axis"),
    Rule("TRT007", "opset >= 13", "[EQ-ONNX] the quantization-axis attribute (per-channel) was added in "
         "opset 13", "export or convert the model to opset 13 or later (onnx.version_converter)"),
    Rule("TRT008", "all inputs of a weighted op are quantized", "[EQ-PLACE] quantize all inputs of weighted "
         "operations (Convolution, Transposed Convolution, GEMM); a half-quantized one runs in float",
         "put Q/DQ on both the activation and the weight input of the op, or on neither", kind="placement"),
    Rule("TRT009", "outputs of weighted ops are not quantized", "[EQ-PLACE] by default, do not quantize the "
         "outputs of weighted operations (TensorRT fuses the following activation or residual add in higher "
         "precision); a Q there is only needed when the next op is itself a quantized weighted or data-movement op",
         "quantize op inputs only (onnxruntime extra_options OpTypesToExcludeOutputQuantization)", kind="placement"),
    Rule("TRT010", "residual Add: both inputs quantized", "[EQ-PLACE] quantize the residual input of an "
         "element-wise addition so TensorRT fuses it into the preceding convolution in INT8",
         "put Q/DQ on every activation input of the Add (an input straight from a Conv may stay float: "
         "TensorRT fuses it), or on none", kind="placement"),
    Rule("TRT011", "Concat: all inputs quantized or none", "[EQ-PROC] TensorRT propagates Q/DQ through "
         "Concat only when every input is quantized; a mixed Concat forces a reformat to float",
         "quantize every input of the Concat (with one scale where possible), or keep it in float", kind="placement"),
    Rule("TRT012", "no dangling Q/DQ", "[EQ-PROC] TensorRT fuses a QuantizeLinear with the DequantizeLinear "
         "that follows; a Q feeding anything else, a DQ of a non-quantized tensor or an unused Q/DQ is left over",
         "every Q must feed only DQ nodes, every DQ must read a Q or an int8 initializer; remove leftovers"),
    Rule("TRT013", "a Q/DQ pair uses one scale", "[EQ-PROC] a Q->DQ pair is the fake quantization of one "
         "tensor; different scale/axis in Q and DQ rescales the tensor", "give the Q and its DQ the same "
         "scale, zero point and axis"),
)}


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str
    op_type: str
    message: str

    @property
    def fix(self) -> str:
        return RULES[self.rule].fix

    def to_dict(self) -> dict[str, str]:
        r = RULES[self.rule]
        return {**asdict(self), "title": r.title, "kind": r.kind, "source": r.source, "fix": r.fix}


@dataclass
class LintResult:
    violations: list[Violation]
    counts: dict[str, int] = field(default_factory=dict)   # Q/DQ counts per consumer op type, etc.

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_rule(self) -> dict[str, int]:
        return dict(sorted(Counter(v.rule for v in self.violations).items()))

    def by_kind(self) -> dict[str, int]:
        c = Counter(RULES[v.rule].kind for v in self.violations)
        return {"required": c.get("required", 0), "placement": c.get("placement", 0)}

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": len(self.violations), "by_rule": self.by_rule(),
                "by_kind": self.by_kind(),
                "counts": self.counts, "details": [v.to_dict() for v in self.violations]}

    def summary(self, *, limit: int = 50) -> str:
        if self.ok:
            return f"TensorRT lint: 0 violations ({self.counts.get('QuantizeLinear', 0)} Q, " \
                   f"{self.counts.get('DequantizeLinear', 0)} DQ checked against {len(RULES)} rules)"
        kinds = self.by_kind()
        lines = [f"TensorRT lint: {len(self.violations)} violation(s) ({kinds['required']} required, "
                 f"{kinds['placement']} placement): " + ", ".join(f"{k} x{n}" for k, n in self.by_rule().items())]
        for v in self.violations[:limit]:
            lines.append(f"  {v.rule} {RULES[v.rule].title}: {v.op_type} '{v.node}': {v.message}")
        if len(self.violations) > limit:
            lines.append(f"  ... {len(self.violations) - limit} more")
        lines.append("fixes:")
        for rid in self.by_rule():
            lines.append(f"  {rid}: {RULES[rid].fix}  (source: {RULES[rid].source.split(']')[0]}])")
        return "\n".join(lines)


class _Graph:
    """Producers, consumers and constants of one ONNX graph (main graph only)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.consts = {n.output[0]: next((a.t for a in n.attribute if a.name == "value"), None)
                       for n in g.node if n.op_type == "Constant" and n.output}
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in g.node:
            for t in n.input:
                if t:
                    self.consumers[t].append(n)
        self.outputs = {o.name for o in g.output}

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        if t is None:
            t = self.consts.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def const_type(self, name: str) -> int | None:
        t = self.inits.get(name) or self.consts.get(name)
        return None if t is None else int(t.data_type)

    def is_const(self, name: str) -> bool:
        return name in self.inits or name in self.consts

    def op(self, tensor: str) -> str:
        p = self.producer.get(tensor)
        return p.op_type if p is not None else ("initializer" if tensor in self.inits else "input")

    def quantized(self, tensor: str, depth: int = 0) -> bool:
        """Produced by a DQ, directly or through commuting layers."""
        p = self.producer.get(tensor)
        if p is None or depth > 16:
            return False
        if p.op_type == DQ:
            return True
        return p.op_type in COMMUTING and bool(p.input) and self.quantized(p.input[0], depth + 1)

    def dq_of_weight(self, tensor: str) -> onnx.NodeProto | None:
        """The DQ producing `tensor` when it is a quantized constant (int8 initializer, or Q of a float one)."""
        p = self.producer.get(tensor)
        if p is None or p.op_type != DQ:
            return None
        src = p.input[0]
        if self.is_const(src):
            return p
        q = self.producer.get(src)
        return p if q is not None and q.op_type == Q and self.is_const(q.input[0]) else None


def _attr(node: onnx.NodeProto, name: str, default: int | None = None) -> int | None:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _weight_axis(node: onnx.NodeProto, weight_rank: int) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if _attr(node, "transB", 0) else 1
    return weight_rank - 1  # MatMul: (K, N) -> N


def lint_tensorrt(model: onnx.ModelProto | str | Path) -> LintResult:
    """Check a Q/DQ model against TensorRT's explicit-quantization rules (RULES); every violation names its node."""
    if not isinstance(model, onnx.ModelProto):
        p = Path(model)
        if not p.is_file():
            raise ExporterError(f"model {p} does not exist: pass the QDQ ONNX file to lint.")
        model = onnx.load(str(p), load_external_data=False)
    g = _Graph(model)
    out: list[Violation] = []

    def add(rule: str, node: onnx.NodeProto | None, msg: str, *, name: str = "") -> None:
        out.append(Violation(rule, name or (node.name if node is not None else ""),
                             node.op_type if node is not None else "model", msg))

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        add("TRT007", None, f"default-domain opset is {opset}", name="opset_import")
    for n in g.nodes:
        if n.op_type in INTEGER_OPS or n.op_type.startswith("QLinear"):
            add("TRT001", n, f"{n.op_type} is an integer-arithmetic op, not a Q/DQ pair")
        elif n.op_type in (Q, DQ) and n.domain not in ("", "ai.onnx"):
            add("TRT001", n, f"{n.op_type} from domain {n.domain!r}: TensorRT reads only the standard ONNX op")
        if n.op_type in (Q, DQ) and n.domain in ("", "ai.onnx"):
            _check_params(g, n, add)
    for n in g.nodes:
        if n.op_type in WEIGHTED:
            _check_weighted(g, n, add)
        elif n.op_type == "Add":
            _check_add(g, n, add)
        elif n.op_type == "Concat":
            _check_concat(g, n, add)
        elif n.op_type == Q:
            _check_q(g, n, add)
        elif n.op_type == DQ:
            _check_dq(g, n, add)
    return LintResult(out, qdq_counts(model))


def _check_params(g: _Graph, n: onnx.NodeProto, add: Any) -> None:
    scale_name = n.input[1] if len(n.input) > 1 else ""
    zp_name = n.input[2] if len(n.input) > 2 else ""
    if not g.is_const(scale_name) or (zp_name and not g.is_const(zp_name)):
        add("TRT005", n, f"scale {scale_name!r} / zero point {zp_name!r} is computed at run time")
        return
    out_dtype = _attr(n, "output_dtype", 0) if n.op_type == Q else 0
    zp_type = g.const_type(zp_name) if zp_name else None
    qtype = zp_type or out_dtype or TensorProto.UINT8
    is_weight_dq = n.op_type == DQ and g.is_const(n.input[0])
    if is_weight_dq:
        qtype = g.const_type(n.input[0]) or qtype
    if qtype != TensorProto.INT8:
        add("TRT002", n, f"quantized type is {TensorProto.DataType.Name(qtype)}"
            + (" (no zero point: ONNX defaults to uint8)" if not zp_name and not out_dtype else ""))
    if zp_name:
        zp = g.const(zp_name)
        if zp is not None and np.any(zp.astype(np.int64) != 0):
            add("TRT003", n, f"zero point(s) {np.unique(zp)[:4].tolist()} are not 0")
    st = g.const_type(scale_name)
    scale = g.const(scale_name)
    if st != TensorProto.FLOAT:
        add("TRT004", n, f"scale dtype is {TensorProto.DataType.Name(st or 0)}, not FLOAT")
    if scale is not None:
        s = scale.astype(np.float64).reshape(-1)
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            bad = s[~(np.isfinite(s) & (s > 0))][:3].tolist() if s.size else []
            add("TRT004", n, f"scale has non-finite or non-positive values {bad}")


def _check_weighted(g: _Graph, n: onnx.NodeProto, add: Any) -> None:
    if len(n.input) < 2:
        return
    act, w = n.input[0], n.input[1]
    w_dq = g.dq_of_weight(w)
    act_q = g.op(act) == DQ
    w_const = g.is_const(w) or w_dq is not None
    if not w_const:
        return  # activation x activation MatMul: not a weighted op for TensorRT's rules
    if w_dq is not None and not act_q:
        add("TRT008", n, f"weight {w!r} is quantized but activation input {act!r} comes from {g.op(act)}")
    elif w_dq is None and act_q:
        add("TRT008", n, f"activation input {act!r} is quantized but weight {w!r} is float")
    if w_dq is not None:
        src = w_dq.input[0]
        qsrc = g.producer.get(src)
        wname = qsrc.input[0] if qsrc is not None and qsrc.op_type == Q else src
        arr = g.const(wname)
        rank = arr.ndim if arr is not None else 2
        scale = g.const(w_dq.input[1])
        n_out = arr.shape[_weight_axis(n, rank)] if arr is not None and arr.ndim > 0 else 0
        if (scale is None or scale.size <= 1) and n_out == 1:
            pass  # one output channel: per-tensor is per-channel
        elif scale is None or scale.size <= 1:
            add("TRT006", w_dq, f"weight {wname!r} of {n.op_type} '{n.name}' is quantized per tensor")
        else:
            axis = _attr(w_dq, "axis", 1)
            axis = axis + rank if axis is not None and axis < 0 else axis
            want = _weight_axis(n, rank)
            if axis != want:
                add("TRT006", w_dq, f"weight {wname!r} of {n.op_type} '{n.name}' is per-channel on axis {axis}; "
                    f"the output-channel axis is {want}")


def _act_inputs(g: _Graph, n: onnx.NodeProto) -> list[str]:
    return [t for t in n.input if t and not g.is_const(t) and g.dq_of_weight(t) is None]


def _check_add(g: _Graph, n: onnx.NodeProto, add: Any) -> None:
    ins = _act_inputs(g, n)
    if len(ins) < 2:
        return
    quant = [g.quantized(t) for t in ins]
    if any(quant) and not all(quant):
        float_in = [t for t, q in zip(ins, quant, strict=True) if not q]
        if all(g.op(t) in WEIGHTED for t in float_in):
            return  # Conv -> Add(residual DQ): TensorRT fuses the add into the convolution
        add("TRT010", n, f"input(s) {float_in} are float ({', '.join(g.op(t) for t in float_in)}) while the "
            "other input is quantized")


def _check_concat(g: _Graph, n: onnx.NodeProto, add: Any) -> None:
    ins = _act_inputs(g, n)
    quant = [g.quantized(t) for t in ins]
    if any(quant) and not all(quant):
        float_in = [t for t, q in zip(ins, quant, strict=True) if not q]
        add("TRT011", n, f"{len(float_in)} of {len(ins)} inputs are float (e.g. {float_in[0]!r} from "
            f"{g.op(float_in[0])})")


def _check_q(g: _Graph, n: onnx.NodeProto, add: Any) -> None:
    y = n.output[0]
    users = g.consumers.get(y, [])
    if not users and y not in g.outputs:
        add("TRT012", n, "its output is never used")
    others = [u for u in users if u.op_type != DQ]
    if others or y in g.outputs:
        add("TRT012", n, "feeds " + (", ".join(f"{u.op_type} '{u.name}'" for u in others[:3]) or "a graph output")
            + " instead of a DequantizeLinear")
    if g.op(n.input[0]) in WEIGHTED and not g.is_const(n.input[0]):
        # allowed only where the next op needs a quantized input itself (Conv -> Conv, Conv -> MaxPool ...)
        readers = [r for d in users if d.op_type == DQ for r in g.consumers.get(d.output[0], [])]
        bad = [r for r in readers if r.op_type not in WEIGHTED + COMMUTING + ("Concat",)]
        if bad:
            add("TRT009", n, f"quantizes the output of {g.op(n.input[0])} '{g.producer[n.input[0]].name}' for "
                f"{bad[0].op_type} '{bad[0].name}'")
    for d in users:
        if d.op_type == DQ and not _same_params(g, n, d):
            add("TRT013", d, f"scale/zero point/axis differ from its QuantizeLinear '{n.name}'")


def _check_dq(g: _Graph, n: onnx.NodeProto, add: Any) -> None:
    x = n.input[0]
    if not g.is_const(x) and g.op(x) != Q:
        add("TRT012", n, f"dequantizes {x!r} from {g.op(x)}, which is not a QuantizeLinear or an int8 constant")
    if not g.consumers.get(n.output[0]) and n.output[0] not in g.outputs:
        add("TRT012", n, "its output is never used")


def _same_params(g: _Graph, q: onnx.NodeProto, d: onnx.NodeProto) -> bool:
    def params(n: onnx.NodeProto) -> tuple[Any, ...]:
        s = g.const(n.input[1]) if len(n.input) > 1 else None
        z = g.const(n.input[2]) if len(n.input) > 2 else None
        return (None if s is None else s.astype(np.float32).tobytes(),
                None if z is None else z.astype(np.int64).tobytes(), _attr(n, "axis", 1) if s is not None and
                s.size > 1 else None)

    return params(q) == params(d)


def qdq_counts(model: onnx.ModelProto) -> dict[str, Any]:
    """Q/DQ layout in numbers: Q and DQ nodes; per consumer op type, how many of its inputs come from a DQ;
    and the ops left entirely in float (no input from a DQ)."""
    g = _Graph(model)
    ops = Counter(n.op_type for n in g.nodes)
    quantized_inputs: Counter[str] = Counter()
    float_nodes: Counter[str] = Counter()
    for n in g.nodes:
        if n.op_type in (Q, DQ, "Constant"):
            continue
        k = sum(1 for t in n.input if t and g.op(t) == DQ)
        if k:
            quantized_inputs[n.op_type] += k
        else:
            float_nodes[n.op_type] += 1
    return {"QuantizeLinear": ops.get(Q, 0), "DequantizeLinear": ops.get(DQ, 0),
            "quantized_inputs_by_op": dict(sorted(quantized_inputs.items())),
            "float_nodes_by_op": dict(sorted(float_nodes.items())),
            "nodes": sum(v for k, v in ops.items() if k not in (Q, DQ, "Constant"))}

