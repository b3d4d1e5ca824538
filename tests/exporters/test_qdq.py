from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exporters import PROFILES, QuantTable, TensorQuant, export_qdq, read_metadata
from exporters.errors import ExporterError
from exporters.qdq import quantizable_op_types
from qcal.graph import analyse, tensors_to_calibrate


def _table(model_path: Path, profile_name: str, float_nodes: tuple[str, ...] = ()) -> QuantTable:
    """The engine's whole table (activations from min-max ranges of a few random inputs through the real FP32
    model, round-to-nearest weights, int32 biases where the profile has them)."""
    from qcal.calibrate import calibrate
    from qcal.pipeline import build_table
    from qcal.placement import FloatDecision

    info = analyse(onnx.load(str(model_path)))
    onnx.save(info.model, str(model_path))
    prof = PROFILES[profile_name]
    tensors = tensors_to_calibrate(info, quantizable_op_types(prof))
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    st = calibrate(info, tensors, feeds, observer="minmax", symmetric=prof.activation_symmetric, qmin=0, qmax=255,
                   percentile=99.99, progress=False)
    decisions = [FloatDecision(n, info.nodes[n].op_type, "user", "test") for n in float_nodes]
    return build_table(info, st, prof, decisions, {})


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_ort_cpu_profile_structure_and_numerics(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    table = _table(tiny_conv_onnx, "ort-cpu", ("/Concat",))
    out = tmp_path / "m.int8.onnx"
    written = export_qdq(tiny_conv_onnx, table, PROFILES["ort-cpu"], out, metadata={"qcal.calib_hash": "abc"})
    m = onnx.load(str(out))
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops["QuantizeLinear"] >= 3 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    acts = written.activations()
    assert acts and all(t.dtype == "uint8" for t in acts.values())
    weights = [t for t in written.tensors.values() if t.kind == "weight" and t.dtype == "int8"]
    biases = [t for t in written.tensors.values() if t.dtype == "int32"]
    assert len(biases) == 3  # biases are int32 with scale = input scale x weight scale
    assert len(weights) == 3 and all(w.axis == 0 and set(w.zero_point) == {0} and w.dtype == "int8" for w in weights)
    # the float node stays float: the Concat consumes no DequantizeLinear output directly as a quantized op
    concat = next(n for n in m.graph.node if n.op_type == "Concat")
    assert not any(o.endswith("_QuantizeLinear_Input") for o in concat.output)
    assert read_metadata(out)["qcal.calib_hash"] == "abc"
    x = np.random.default_rng(1).uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
    ref, q = _run(tiny_conv_onnx, x), _run(out, x)
    rel = np.abs(q[:, 4:] - ref[:, 4:]).mean() / np.abs(ref[:, 4:]).mean()
    assert rel < 0.05
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves nothing behind


def test_tensorrt_profile_is_symmetric_int8(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    table = _table(tiny_conv_onnx, "tensorrt")
    out = tmp_path / "trt.onnx"
    written = export_qdq(tiny_conv_onnx, table, PROFILES["tensorrt"], out)
    m = onnx.load(str(out))
    assert m.opset_import[0].version >= 13
    assert written.tensors
    for t in written.tensors.values():
        assert t.dtype == "int8" and set(t.zero_point) == {0}  # biases stay float for TensorRT
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops["QuantizeLinear"] > 0
    # weights are kept float with a Q->DQ pair (what TensorRT's explicit quantization reads)
    inits = {i.name for i in m.graph.initializer}
    conv_w = [n.input[1] for n in m.graph.node if n.op_type == "Conv"]
    producers = {o: n for n in m.graph.node for o in n.output}
    assert all(producers[w].op_type == "DequantizeLinear" for w in conv_w if w not in inits)


def test_quant_table_roundtrip_and_errors(tmp_path: Path) -> None:
    t = QuantTable({"a": TensorQuant("uint8", (0.0123456789,), (3,), rmin=-0.04, rmax=3.1),
                    "w": TensorQuant("int8", (0.1, 0.2), (0, 0), axis=0, kind="weight")}, ("n1",), {"n1": "why"},
                   "ort-cpu", {"k": "v"})
    p = tmp_path / "t.json"
    t.save(p)
    assert QuantTable.load(p) == t
    with pytest.raises(ExporterError, match="finite and > 0"):
        TensorQuant("int8", (0.0,), (0,))
    with pytest.raises(ExporterError, match="dtype"):
        TensorQuant("int7", (1.0,), (0,))
    p.write_text("{not json")
    with pytest.raises(ExporterError, match="not valid JSON"):
        QuantTable.load(p)
