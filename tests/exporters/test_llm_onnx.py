"""The LLM MatMul rewrites write exactly a QuantTable's weights, run in ONNX Runtime as the numpy reference
computes, and give the table back (read_llm_quant_table) bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.errors import ExporterError
from exporters.llm_onnx import pack_uint4, quantize_linears, read_llm_quant_table, shipped, unpack_uint4
from exporters.quant_table import QuantTable, TensorQuant

K, N = 80, 24


def _graph(path: Path, w_t: np.ndarray) -> None:
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, N])],
                          [numpy_helper.from_array(w_t, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _run(path: Path, x: np.ndarray, *, as_written: bool = False) -> np.ndarray:
    so = ort.SessionOptions()
    if as_written:    # graph optimizations off: the arithmetic as written, no fused kernel
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, {"x": x})[0])


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, K)).astype(np.float32)
    x[..., 3] *= 40.0                                   # an outlier channel
    return x, rng.normal(size=(N, K)).astype(np.float32)


def _int8(w: np.ndarray) -> TensorQuant:
    """Symmetric per-output-channel int8, codes in the table's (K, N) layout."""
    w_scale = (np.abs(w).max(1) / 127).astype(np.float32)
    codes = np.clip(np.rint(w / w_scale[:, None]), -127, 127).astype(np.int8)
    return TensorQuant("int8", w_scale, np.zeros(N, np.int64), axis=1, kind="weight", bits=8, codes=codes.T)


def _int4(group: int, seed: int = 1) -> TensorQuant:
    rng = np.random.default_rng(seed)
    g = -(-K // group)
    return TensorQuant("uint4", rng.uniform(0.01, 0.1, size=(N, g)).astype(np.float32),
                       rng.integers(0, 16, size=(N, g)), axis=1, kind="weight", group_size=group,
                       codes=rng.integers(0, 16, size=(N, K)).astype(np.uint8))


def _export(tmp_path: Path, table: QuantTable) -> Path:
    w = table.tensors["l.weight"].dequantized()
    _graph(tmp_path / "f.onnx", w.T.copy() if w.shape == (N, K) else w)
    quantize_linears(tmp_path / "f.onnx", tmp_path / "q.onnx", table)
    return tmp_path / "q.onnx"


def test_int8_dynamic_per_token_matches_reference(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, w = data
    table = QuantTable({"l.weight": _int8(w)}, meta={"activations": "per-token"})
    q = _export(tmp_path, table)
    w_deq = table.tensors["l.weight"].dequantized()            # (K, N)
    s = np.abs(x).max(-1, keepdims=True) / 127
    ref = (np.clip(np.rint(x / s), -127, 127) * s) @ w_deq
    np.testing.assert_allclose(_run(q, x), ref, rtol=1e-4, atol=1e-3)
    ops = [n.op_type for n in onnx.load(str(q)).graph.node]
    assert "MatMulInteger" in ops and "MatMul" not in ops
    assert read_llm_quant_table(q) == table.replace(meta={})


def test_int4_matmulnbits_matches_dequantized_and_reads_back(tmp_path: Path,
                                                             data: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = data
    table = QuantTable({"l.weight": _int4(32)})              # K=80: 3 blocks, the last one padded
    q = _export(tmp_path, table)
    deq = table.tensors["l.weight"].dequantized()              # (N, K)
    np.testing.assert_allclose(_run(q, x), x @ deq.T, rtol=1e-4, atol=1e-3)
    node = next(n for n in onnx.load(str(q)).graph.node if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in node.attribute if a.name in ("K", "N", "block_size")} == \
        {"K": K, "N": N, "block_size": 32}
    back = read_llm_quant_table(q)
    assert back == table and back.tensors["l.weight"].codes.shape == (N, K)
    other = _int4(32, seed=2)                                  # a different table does not compare equal
    assert back != QuantTable({"l.weight": other})


def test_int8_static_qdq_and_weight_only(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, w = data
    x = np.abs(x) / 10                                         # a modest range so u8 x s8 stays exact without VNNI
    sx = np.float32(x.max() / 255)
    act = TensorQuant("uint8", sx, 0, kind="activation", rmin=0.0, rmax=float(x.max()))
    table = QuantTable({"l.weight": _int8(w), "l.input": act}, meta={"activations": "per-tensor"})
    q = _export(tmp_path, table)
    w_deq = table.tensors["l.weight"].dequantized()
    ref = (np.clip(np.rint(x / sx), 0, 255) * sx) @ w_deq
    np.testing.assert_allclose(_run(q, x), ref, rtol=2e-2, atol=2e-2)
    back = read_llm_quant_table(q)
    assert back == shipped(table) and back.tensors["l.input"].rmax is None   # the graph carries no ranges
    assert back != table.replace(meta={})
    wo = QuantTable({"l.weight": _int8(w)}, meta={"activations": "none"})
    q = _export(tmp_path, wo)
    assert [n.op_type for n in onnx.load(str(q)).graph.node] == ["DequantizeLinear", "MatMul"]
    # as written it is exact; ORT's full optimization fuses DQ(int8) + MatMul into an 8-bit MatMulNBits that
    # quantizes x on the fly (its error here is ~0.2): weight-only int8 is not a scheme the LLM path ships
    np.testing.assert_allclose(_run(q, x, as_written=True), x @ w_deq, rtol=1e-5, atol=1e-4)
    assert read_llm_quant_table(q) == wo.replace(meta={})


def test_pack_uint4_low_nibble_first_and_unpack() -> None:
    assert pack_uint4(np.array([1, 2, 15, 0])).tolist() == [0x21, 0x0F]
    c = np.random.default_rng(0).integers(0, 16, size=(3, 7))
    assert np.array_equal(unpack_uint4(pack_uint4(c), 7), c)


def test_weight_not_on_the_table_grid_is_not_found(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    """The graph's float weight must be the table's dequantization, bit for bit: the raw weight is refused."""
    _, w = data
    _graph(tmp_path / "f.onnx", w.T.copy())
    with pytest.raises(ExporterError, match="not found"):
        quantize_linears(tmp_path / "f.onnx", tmp_path / "q.onnx",
                         QuantTable({"l.weight": _int8(w)}, meta={"activations": "per-token"}))
    with pytest.raises(ExporterError, match="has no LLM ONNX form"):
        sym4 = TensorQuant("int4", np.ones(N), np.zeros(N), axis=0, kind="weight", codes=np.zeros((N, K), np.int8))
        quantize_linears(tmp_path / "f.onnx", tmp_path / "q.onnx", QuantTable({"l.weight": sym4}))
