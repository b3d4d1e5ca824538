"""Exact graph rewrites: the rewritten graph computes the same outputs in ONNX Runtime, with the intended layout,
and chains that do not match are left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.rewrite import softmax_weighted_sum

N = 840


def dfl_model(out_channels: int = 1, bias: bool = True, extra_reader: bool = False, opset: int = 17) -> onnx.ModelProto:
    """YOLOv8's DFL decode: (1, 64, N) -> Reshape(1,4,16,N) -> Transpose(0,2,1,3) -> Softmax(1) -> 1x1 Conv."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(out_channels, 16, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array([1, 4, 16, N], np.int64), "s1"), numpy_helper.from_array(w, "w")]
    conv_in = ["sm", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=out_channels).astype(np.float32), "b"))
        conv_in.append("b")
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r"], name="reshape"),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3], name="transpose"),
             helper.make_node("Softmax", ["t"], ["sm"], axis=1, name="softmax"),
             helper.make_node("Conv", conv_in, ["y"], kernel_shape=[1, 1], name="conv")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, 4, N])]
    if extra_reader:
        nodes.append(helper.make_node("Identity", ["sm"], ["sm_copy"], name="reader"))
        outputs.append(helper.make_tensor_value_info("sm_copy", TensorProto.FLOAT, [1, 16, 4, N]))
    g = helper.make_graph(nodes, "dfl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, N])],
                          outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(["y"], {"x": x})[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("bias", [True, False])
def test_dfl_chain_is_rewritten_exactly(bias: bool) -> None:
    x = (np.random.default_rng(1).normal(size=(1, 64, N)) * 4).astype(np.float32)
    m = dfl_model(bias=bias)
    ref = run(m, x)
    assert softmax_weighted_sum(m) == ["conv"]
    onnx.checker.check_model(m, full_check=True)
    ops = [n.op_type for n in m.graph.node]
    assert ops == ["Reshape", "Transpose", "Softmax", "MatMul", *(["Add"] if bias else []), "Transpose"]
    assert next(n for n in m.graph.node if n.op_type == "Softmax").attribute[0].i == -1
    assert next(n for n in m.graph.node if n.op_type == "Transpose").attribute[0].ints == [0, 1, 3, 2]
    assert "w" not in {i.name for i in m.graph.initializer}          # the 4-D conv weight is gone
    out = run(m, x)
    assert out.shape == ref.shape == (1, 1, 4, N)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw", [{"out_channels": 2}, {"extra_reader": True}, {"opset": 12}])
def test_non_matching_chains_are_left_alone(kw: dict[str, object]) -> None:
    m = dfl_model(**kw)  # type: ignore[arg-type]
    before = m.SerializeToString()
    assert softmax_weighted_sum(m) == []
    assert m.SerializeToString() == before
