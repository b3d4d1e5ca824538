"""nodes_to_fp16: chosen nodes of an FP32 or QDQ graph compute in float16, Casts at their boundary only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from exporters.errors import ExporterError
from exporters.float16 import convert_nodes_fp16, nodes_to_fp16


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = torch.nn.Conv2d(8, 4, 1)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))   # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def fp32_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fp16") / "net.onnx"
    torch.onnx.export(_Net().eval(), (torch.randn(2, 3, 16, 16),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    return path


def _run(path: Path | str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def _x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)


def test_named_nodes_become_fp16_with_casts_only_at_their_boundary(fp32_path: Path, tmp_path: Path) -> None:
    src = onnx.load(str(fp32_path))
    conv2 = next(n for n in src.graph.node if n.op_type == "Conv" and "c2" in n.name)
    relu2 = next(n for n in src.graph.node if n.input[0] == conv2.output[0])
    out = convert_nodes_fp16(fp32_path, [conv2.name, relu2.name], tmp_path / "mixed.onnx")
    m = onnx.load(str(out))
    inits = {i.name: i.data_type for i in m.graph.initializer}
    nodes = {n.name: n for n in m.graph.node}
    casts = [n for n in m.graph.node if n.op_type == "Cast"]
    # one Cast in (before conv2), one out (after relu2); none between the adjacent FP16 nodes
    assert sorted(c.attribute[0].i for c in casts) == [TensorProto.FLOAT, TensorProto.FLOAT16]
    assert nodes[relu2.name].input[0] == nodes[conv2.name].output[0]
    assert [inits[i] for i in nodes[conv2.name].input[1:]] == [TensorProto.FLOAT16] * 2
    others = [n for n in m.graph.node if n.op_type == "Conv" and n.name != conv2.name]
    assert all(inits[i] == TensorProto.FLOAT for n in others for i in n.input[1:])
    assert [i.type.tensor_type.elem_type for i in [*m.graph.input, *m.graph.output]] == [TensorProto.FLOAT] * 2
    assert len(m.graph.node) == len(src.graph.node) + 2
    x = _x()
    ref, got = _run(fp32_path, x), _run(out, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-3 * np.abs(ref).max())
    assert not np.array_equal(got, ref)   # it really computed in half precision


def test_qdq_model_keeps_its_float_layer_in_fp16(fp32_path: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": _x()[i:i + 2]} for i in (0, 2)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    conv2 = next(n.name for n in onnx.load(str(fp32_path)).graph.node if n.op_type == "Conv" and "c2" in n.name)
    qdq = tmp_path / "qdq.onnx"
    quantize_static(str(fp32_path), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=[conv2])
    out = convert_nodes_fp16(qdq, [conv2], tmp_path / "mixed.onnx", metadata={"qcal.fp16_nodes": conv2})
    m = onnx.load(str(out))
    node = next(n for n in m.graph.node if n.name == conv2)
    producer = {o: n for n in m.graph.node for o in n.output}
    assert producer[node.input[0]].op_type == "Cast"
    assert producer[producer[node.input[0]].input[0]].op_type == "DequantizeLinear"   # Cast after the DQ
    assert {i.name: i.data_type for i in m.graph.initializer}[node.input[1]] == TensorProto.FLOAT16
    assert sum(n.op_type == "QuantizeLinear" for n in m.graph.node) == \
        sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(qdq)).graph.node)
    assert {p.key: p.value for p in m.metadata_props}["qcal.fp16_nodes"] == conv2
    x = _x()
    ref = _run(qdq, x)
    np.testing.assert_allclose(_run(out, x), ref, rtol=0, atol=0.05 * np.abs(ref).max())


def test_unknown_node_is_an_error_naming_it(fp32_path: Path) -> None:
    with pytest.raises(ExporterError, match="not_a_node"):
        nodes_to_fp16(onnx.load(str(fp32_path)), ["not_a_node"])
