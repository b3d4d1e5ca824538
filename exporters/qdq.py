"""QuantTable -> QDQ ONNX, through onnxruntime.quantization's QDQ quantizer (its public quantize_static).

The table's activation ranges go to ORT as a calibration cache (ORT then runs no calibration of its own);
ORT places Q/DQ per the profile, leaves the table's float nodes alone and quantizes weights per channel.
What ORT actually wrote is read back from the graph (`read_quant_table`), so the returned table is the
exact record of the artifact.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from exporters.errors import ExporterError
from exporters.onnx_io import atomic_save, stamp_metadata
from exporters.profiles import QdqProfile
from exporters.quant_table import QuantTable, TensorQuant
from exporters.share import share_concat_ranges

_QTYPE = {"uint8": "QUInt8", "int8": "QInt8"}
_ONNX_DTYPE = {onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT4: "int4",
               onnx.TensorProto.UINT4: "uint4",
               onnx.TensorProto.INT32: "int32"}
_QRANGE = {("uint8", False): (0, 255), ("int8", False): (-128, 127), ("int8", True): (-127, 127),
           ("uint8", True): (0, 255)}


def quantizable_op_types(profile: QdqProfile) -> list[str]:
    """The op types whose inputs/outputs get Q/DQ under this profile (ORT's registry when unrestricted)."""
    if profile.op_types is not None:
        return list(profile.op_types)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def _range_of(tq: TensorQuant, symmetric: bool) -> tuple[float, float]:
    if tq.rmin is not None and tq.rmax is not None:
        return float(tq.rmin), float(tq.rmax)
    # A table from elsewhere (e.g. a TensorRT cache) carries only scale/zero point: recover the range
    # that maps back to exactly these parameters.
    qmin, qmax = _QRANGE[(tq.dtype, symmetric)]
    s, z = float(tq.scale[0]), int(tq.zero_point[0])
    return (qmin - z) * s, (qmax - z) * s


def export_qdq(fp32_model: str | Path, table: QuantTable, profile: QdqProfile, out_path: str | Path,
               *, metadata: Mapping[str, str] | None = None, opset: int | None = None) -> QuantTable:
    """Write the QDQ model for `profile` to out_path (atomically) and return the table as written."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    if profile.activation_dtype not in _QTYPE or profile.weight_dtype not in _QTYPE:
        raise ExporterError(f"profile {profile.name}: only int8/uint8 QDQ is supported by this exporter.")
    src = onnx.load(str(fp32_model))
    if opset is not None or src.opset_import[0].version < profile.min_opset:
        target = max(opset or 0, profile.min_opset)
        src = onnx.version_converter.convert_version(src, target)
    spans = {name: _range_of(tq, profile.activation_symmetric) for name, tq in table.activations().items()}
    if not spans:
        raise ExporterError("the quant table has no activation ranges: calibrate first.")
    if profile.share_concat_ranges:
        spans, _ = share_concat_ranges(src, spans, table.float_nodes, profile.share_concat_ranges)
    ranges = {name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in spans.items()}
    with tempfile.TemporaryDirectory(prefix="qcal-qdq-") as tmp:
        src_path, cache, out_tmp = Path(tmp) / "fp32.onnx", Path(tmp) / "ranges.json", Path(tmp) / "qdq.onnx"
        onnx.save(src, str(src_path))
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)
        extra: dict[str, object] = {"ActivationSymmetric": profile.activation_symmetric, "WeightSymmetric": profile.weight_symmetric,
                 "AddQDQPairToWeight": profile.weights_as_qdq_pair, "DedicatedQDQPair": False,
                 "QuantizeBias": profile.quantize_bias}
        if not profile.quantize_outputs:   # TensorRT: Q/DQ on op inputs only (lint rule TRT009)
            extra["OpTypesToExcludeOutputQuantization"] = quantizable_op_types(profile)
        ort_log = logging.getLogger()
        level = ort_log.level
        ort_log.setLevel(logging.ERROR)  # ORT warns about pre-processing on every call; restored below
        try:
            quantize_static(str(src_path), str(out_tmp), calibration_data_reader=None,
                            calibration_cache_path=str(cache), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=quantizable_op_types(profile), per_channel=profile.per_channel,
                            reduce_range=profile.reduce_range,
                            activation_type=getattr(QuantType, _QTYPE[profile.activation_dtype]),
                            weight_type=getattr(QuantType, _QTYPE[profile.weight_dtype]),
                            nodes_to_exclude=list(table.float_nodes), calibrate_method=CalibrationMethod.MinMax,
                            extra_options=extra)
        except Exception as e:  # ORT raises bare ValueError/RuntimeError/AssertionError on bad graphs
            raise ExporterError(f"ONNX Runtime's QDQ quantizer failed on {fp32_model}: {e!r}") from e
        finally:
            ort_log.setLevel(level)
        model = onnx.load(str(out_tmp))
    if profile.float_nodes_read_float:
        unshare_float_nodes(model, table.float_nodes)
    rewritten = apply_rewrites(model, profile.rewrites)
    if profile.name == "tensorrt":   # qcal never writes a TensorRT model that breaks TensorRT's Q/DQ rules
        from exporters.trt_lint import lint_tensorrt

        res = lint_tensorrt(model)
        if not res.ok:
            raise ExporterError(f"the tensorrt export of {fp32_model} breaks TensorRT's Q/DQ rules (a qcal bug "
                                f"or an unusual graph; please report it):\n{res.summary(limit=10)}")
    written = read_quant_table(model, target=profile.name)
    written = QuantTable(written.tensors, table.float_nodes, table.float_reasons, profile.name, table.meta)
    if metadata or rewritten:
        stamp_metadata(model, {**(metadata or {}), **({"qcal.rewrites": json.dumps(rewritten)} if rewritten else {})})
    atomic_save(model, out_path)
    return written


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
    """Every quantized tensor of a QDQ graph with its dtype, scale(s), zero point(s) and axis."""
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    inits = {i.name: i for i in m.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in m.graph.node if n.op_type == "Constant" and n.attribute}
    tensors: dict[str, TensorQuant] = {}

    def arr(name: str) -> np.ndarray:
        t = inits.get(name) or consts.get(name)
        if t is None:
            raise ExporterError(f"Q/DQ parameter {name!r} is not a constant initializer.")
        return numpy_helper.to_array(t)

    for node in m.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        x = node.input[0]
        name = x if node.op_type == "QuantizeLinear" else x.removesuffix("_quantized")
        if node.op_type == "DequantizeLinear" and x not in inits:
            continue  # an activation's DQ: its Q already recorded it
        zp_t = inits.get(node.input[2]) or consts.get(node.input[2])
        dtype = _ONNX_DTYPE.get(int(zp_t.data_type) if zp_t is not None else -1, "int8")  # type: ignore[call-overload]
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        scale = arr(node.input[1]).astype(np.float32).reshape(-1)
        zp = arr(node.input[2]).astype(np.int64).reshape(-1)
        is_weight = x in inits or node.op_type == "DequantizeLinear"
        tensors[name] = TensorQuant(dtype=dtype, scale=tuple(float(s) for s in scale),
                                    zero_point=tuple(int(z) for z in zp), axis=axis if scale.size > 1 else None,
                                    kind="weight" if is_weight else "activation")
    return QuantTable(tensors, target=target)
