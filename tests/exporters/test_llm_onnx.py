"""The integer MatMul rewrites run in ONNX Runtime and compute what the numpy reference computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.errors import ExporterError
from exporters.llm_onnx import LinearQuant, pack_uint4, quantize_linears, weight_sha1

K, N = 80, 24


def _graph(path: Path, w_t: np.ndarray) -> None:
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, N])],
                          [numpy_helper.from_array(w_t, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, {"x": x})[0])


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, K)).astype(np.float32)
    x[..., 3] *= 40.0                                   # an outlier channel
    return x, rng.normal(size=(N, K)).astype(np.float32)


def test_int8_dynamic_per_token_matches_reference(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, w = data
    w_scale = (np.abs(w).max(1) / 127).astype(np.float32)
    codes = np.clip(np.rint(w / w_scale[:, None]), -127, 127).astype(np.int8)
    w_deq = codes.astype(np.float32) * w_scale[:, None]
    _graph(tmp_path / "f.onnx", w_deq.T.copy())
    quantize_linears(tmp_path / "f.onnx", tmp_path / "q.onnx",
                     [LinearQuant("l", weight_sha1(w_deq.T), "int8-dynamic", codes, w_scale)])
    s = np.abs(x).max(-1, keepdims=True) / 127
    ref = (np.clip(np.rint(x / s), -127, 127) * s) @ w_deq.T
    out = _run(tmp_path / "q.onnx", x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert "MatMulInteger" in ops and "MatMul" not in ops


def test_int4_matmulnbits_matches_dequantized(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, w = data
    group = 32                                          # K=80: 3 blocks, the last one zero-padded
    rng = np.random.default_rng(1)
    n_blocks = -(-K // group)
    codes = rng.integers(0, 16, size=(N, n_blocks * group)).astype(np.uint8)
    zero = rng.integers(0, 16, size=(N, n_blocks)).astype(np.uint8)
    scale = rng.uniform(0.01, 0.1, size=(N, n_blocks)).astype(np.float32)
    deq = ((codes.reshape(N, n_blocks, group).astype(np.float32) - zero[..., None]) * scale[..., None])
    deq = deq.reshape(N, -1)[:, :K]
    _graph(tmp_path / "f.onnx", deq.T.copy())
    quantize_linears(tmp_path / "f.onnx", tmp_path / "q.onnx",
                     [LinearQuant("l", weight_sha1(deq.T), "int4", codes, scale, zero, group=group, k=K)])
    np.testing.assert_allclose(_run(tmp_path / "q.onnx", x), x @ deq.T, rtol=1e-4, atol=1e-3)


def test_int8_static_qdq(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, w = data
    x = np.abs(x[..., :]) / 10                           # a modest range so u8 x s8 stays exact without VNNI
    w_scale = (np.abs(w).max(1) / 127).astype(np.float32)
    codes = np.clip(np.rint(w / w_scale[:, None]), -127, 127).astype(np.int8)
    w_deq = codes.astype(np.float32) * w_scale[:, None]
    _graph(tmp_path / "f.onnx", w_deq.T.copy())
    sx, zx = float(x.max() / 255), 0
    quantize_linears(tmp_path / "f.onnx", tmp_path / "q.onnx",
                     [LinearQuant("l", weight_sha1(w_deq.T), "int8-static", codes, w_scale, act_scale=sx, act_zero=zx)])
    ref = (np.clip(np.rint(x / sx) + zx, 0, 255) - zx) * sx @ w_deq.T
    np.testing.assert_allclose(_run(tmp_path / "q.onnx", x), ref, rtol=2e-2, atol=2e-2)


def test_pack_uint4_low_nibble_first() -> None:
    assert pack_uint4(np.array([1, 2, 15, 0])).tolist() == [0x21, 0x0F]


def test_missing_layer_is_an_error(tmp_path: Path, data: tuple[np.ndarray, np.ndarray]) -> None:
    _, w = data
    _graph(tmp_path / "f.onnx", w.T.copy())
    with pytest.raises(ExporterError, match="not found"):
        quantize_linears(tmp_path / "f.onnx", tmp_path / "q.onnx",
                         [LinearQuant("other", "0" * 40, "int8-dynamic", np.zeros((N, K), np.int8), np.ones(N))])
