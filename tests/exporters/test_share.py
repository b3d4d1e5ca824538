from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from exporters import PROFILES, QuantTable, TensorQuant
from exporters.errors import ExporterError
from exporters.qdq import quantizable_op_types
from exporters.share import concat_groups, share_concat_ranges


def c2f_model(p: Path) -> Path:
    """A YOLOv8-like C2f block and neck: Conv-SiLU -> Split -> bottleneck -> Concat(halves, bottleneck) -> Conv,
    then nearest Resize x2 of a strided branch -> Concat with the block's output -> Conv."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.cv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.m = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.cv2 = torch.nn.Conv2d(12, 8, 1)
            self.down = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.out = torch.nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = torch.nn.functional.silu(self.cv1(x)).split((4, 4), 1)
            y = torch.nn.functional.silu(self.cv2(torch.cat([a, b, 3.0 * torch.nn.functional.silu(self.m(b))], 1)))
            up = torch.nn.functional.interpolate(torch.nn.functional.silu(self.down(y)), scale_factor=2.0)
            return self.out(torch.cat([up, y], 1))

    torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 32, 32),), str(p), opset_version=17, input_names=["input"],
                      output_names=["out"], dynamo=False)
    return p


@pytest.fixture(scope="module")
def c2f_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return c2f_model(tmp_path_factory.mktemp("c2f") / "c2f.onnx")


def feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)} for _ in range(n)]


def _table(model_path: Path, float_nodes: tuple[str, ...] = ()) -> QuantTable:
    """Min-max ranges (through ONNX Runtime) of the float activations entering or leaving a quantizable node:
    the tensors share.py groups. Only the ranges matter here (scale 1, zero point 0)."""
    m = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    g = m.graph
    floats = {v.name for v in [*g.value_info, *g.input, *g.output] if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    inits = {i.name for i in g.initializer}
    ops = set(quantizable_op_types(PROFILES["ort-cpu"]))
    names = list(dict.fromkeys(t for n in g.node if n.op_type in ops for t in [*n.input, *n.output]
                               if t in floats and t not in inits))
    have = {o.name for o in g.output}
    g.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in names if t not in have)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    lo = {t: np.inf for t in names}
    hi = {t: -np.inf for t in names}
    for feed in feeds(4, 0):
        for t, v in zip(outs, sess.run(None, feed), strict=True):
            if t in lo:
                lo[t], hi[t] = min(lo[t], float(v.min())), max(hi[t], float(v.max()))
    return QuantTable({t: TensorQuant("uint8", (1.0,), (0,), rmin=lo[t], rmax=hi[t]) for t in names}, float_nodes)


def test_groups_join_concat_inputs_and_same_as_input_ops(c2f_onnx: Path) -> None:
    table = _table(c2f_onnx)
    m = onnx.load(str(c2f_onnx))
    groups = concat_groups(m, table.activations())
    by_op = {n.name: n for n in m.graph.node}
    split = next(n for n in by_op.values() if n.op_type == "Split")
    resize = next(n for n in by_op.values() if n.op_type == "Resize")
    c1, c2 = (n for n in m.graph.node if n.op_type == "Concat")
    # the Split's input and outputs, the bottleneck and the first Concat's output are one group ...
    g1 = next(g for g in groups if c1.output[0] in g)
    assert {split.input[0], *split.output, *c1.input, c1.output[0]} <= set(g1)
    # ... the Resize joins its input to the second Concat, whose other input (the C2f's output) is in it too
    g2 = next(g for g in groups if c2.output[0] in g)
    assert {resize.input[0], resize.output[0], *c2.input} <= set(g2)
    assert not set(g1) & set(g2)
    # a Concat kept in float joins nothing
    assert all(c2.output[0] not in g for g in concat_groups(m, table.activations(), [c2.name]))


@pytest.mark.parametrize("rule", ["union", "concat_output"])
def test_shared_range_per_rule(c2f_onnx: Path, rule: str) -> None:
    table = _table(c2f_onnx)
    m = onnx.load(str(c2f_onnx))
    ranges = {t: (float(q.rmin), float(q.rmax)) for t, q in table.activations().items()}  # type: ignore[arg-type]
    shared, groups = share_concat_ranges(m, ranges, rule=rule)
    concat_outs = {n.output[0] for n in m.graph.node if n.op_type == "Concat"}
    for g in groups:
        src = g if rule == "union" else [t for t in g if t in concat_outs]
        assert src and len(src) <= len(g)
        lo, hi = min(ranges[t][0] for t in src), max(ranges[t][1] for t in src)
        assert all(shared[t] == (lo, hi) for t in g)
        assert len({ranges[t] for t in g}) > 1   # the calibrated ranges did differ
    grouped = {t for g in groups for t in g}
    assert all(shared[t] == ranges[t] for t in ranges if t not in grouped)
    with pytest.raises(ExporterError, match="choose 'union' or 'concat_output'"):
        share_concat_ranges(m, ranges, rule="mean")
