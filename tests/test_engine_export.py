"""qcal's tables through the exporters: the engine builds a QuantTable (qcal.simulation.graph, qcal.calibration.calibrate,
qcal.calibration.pipeline.build_table) and exporters write it. These live here, not under tests/exporters, because exporters'
tests import nothing of qcal (tests/test_import_graph.py checks it)."""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exporters import PROFILES, QdqProfile, QuantTable, TensorQuant, export_qdq, read_metadata
from exporters.qdq import quantizable_op_types
from exporters.share import copyable_concat_inputs
from exporters.tensorrt import EngineOptions, trt_version
from exporters.trt_lint import lint_tensorrt
from qcal.simulation.graph import analyse, tensors_to_calibrate
from tests.exporters.test_share import c2f_model, feeds


def engine_table(model_path: Path, profile_name: str, float_nodes: tuple[str, ...] = ()) -> QuantTable:
    """The engine's whole table (activations from min-max ranges of a few random inputs through the real FP32
    model, round-to-nearest weights, int32 biases where the profile has them)."""
    from qcal.calibration.calibrate import calibrate
    from qcal.calibration.pipeline import build_table
    from qcal.placement.keep_float import FloatDecision

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


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_ort_cpu_profile_structure_and_numerics(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    table = engine_table(tiny_conv_onnx, "ort-cpu", ("/Concat",))
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
    ref, q = run_ort(tiny_conv_onnx, x), run_ort(out, x)
    rel = np.abs(q[:, 4:] - ref[:, 4:]).mean() / np.abs(ref[:, 4:]).mean()
    assert rel < 0.05
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves nothing behind


def test_tensorrt_profile_is_symmetric_int8(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    table = engine_table(tiny_conv_onnx, "tensorrt")
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


@pytest.mark.skipif(trt_version() is None, reason="TensorRT is not installed (its wheels are not on PyPI here); "
                    "engine build/run is checked on a machine with TensorRT and a GPU")
def test_build_and_run_engine_matches_ort(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    import onnxruntime as ort
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA GPU is visible")
    from exporters import PROFILES, export_qdq
    from exporters.tensorrt import TrtRunner, build_engine

    qdq = tmp_path / "m.int8.onnx"
    export_qdq(tiny_conv_onnx, engine_table(tiny_conv_onnx, "tensorrt", ("/Concat",)), PROFILES["tensorrt"], qdq)
    res = build_engine(qdq, tmp_path / "m.engine", EngineOptions(fp16=True))
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
    got = TrtRunner(res.engine).run(None, {"input": x})[0]
    ref = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.abs(got - ref).mean() < 0.05 * np.abs(ref).mean()


def test_qcal_tensorrt_export_passes_lint(tiny_conv_onnx: Path, tmp_path: Path) -> None:
    """qcal's own tensorrt-profile export (with a Concat kept in float) has zero violations; the ort-cpu
    profile, which is not meant for TensorRT, does not pass (uint8, outputs quantized)."""
    table = engine_table(tiny_conv_onnx, "tensorrt", ("/Concat",))
    out = tmp_path / "trt.onnx"
    export_qdq(tiny_conv_onnx, table, PROFILES["tensorrt"], out)
    res = lint_tensorrt(out)
    assert res.ok, res.summary()
    assert res.counts["quantized_inputs_by_op"]["Conv"] == 6  # activation + weight of all three convs
    concat = next(n for n in onnx.load(str(out)).graph.node if n.op_type == "Concat")
    producers = {o: n.op_type for n in onnx.load(str(out)).graph.node for o in n.output}
    assert all(producers.get(t) != "DequantizeLinear" for t in concat.input)  # the float Concat reads float
    cpu = export_qdq(tiny_conv_onnx, engine_table(tiny_conv_onnx, "ort-cpu"), PROFILES["ort-cpu"], tmp_path / "cpu.onnx")
    assert isinstance(cpu, QuantTable)
    assert {"TRT002", "TRT009"} <= set(lint_tensorrt(tmp_path / "cpu.onnx").by_rule())
    assert TensorQuant  # the table contract is what export_qdq consumed


@pytest.fixture(scope="module")
def c2f_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = c2f_model(tmp_path_factory.mktemp("c2f") / "c2f.onnx")
    onnx.save(analyse(onnx.load(str(p))).model, str(p))
    return p


def share_engine_table(model_path: Path, profile: QdqProfile) -> QuantTable:
    """The engine's table (the ranges are shared when the table is built, so the simulator sees them too)."""
    from qcal.calibration.calibrate import calibrate
    from qcal.calibration.pipeline import build_table

    info = analyse(onnx.load(str(model_path)))
    tensors = tensors_to_calibrate(info, quantizable_op_types(profile))
    st = calibrate(info, tensors, feeds(4, 0), observer="minmax", symmetric=False, qmin=0, qmax=255,
                   percentile=99.99, progress=False)
    return build_table(info, st, profile, [], {})


def test_ort_cpu_export_lets_every_concat_copy(c2f_onnx: Path, tmp_path: Path) -> None:
    shared, plain = tmp_path / "shared.onnx", tmp_path / "plain.onnx"
    unshared = PROFILES["ort-cpu"].replace(share_concat_ranges="")
    export_qdq(c2f_onnx, share_engine_table(c2f_onnx, PROFILES["ort-cpu"]), PROFILES["ort-cpu"], shared)
    export_qdq(c2f_onnx, share_engine_table(c2f_onnx, unshared), unshared, plain)
    assert copyable_concat_inputs(onnx.load(str(shared))) == [(True, True, True), (True, True)]
    assert not all(all(c) for c in copyable_concat_inputs(onnx.load(str(plain))))
    sess = {k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            for k, p in (("fp32", c2f_onnx), ("shared", shared), ("plain", plain))}
    for feed in feeds(3, 1):
        ref = sess["fp32"].run(None, feed)[0]
        for k in ("shared", "plain"):
            err = np.abs(sess[k].run(None, feed)[0] - ref).mean() / np.abs(ref).mean()
            assert err < 0.05, (k, err)
