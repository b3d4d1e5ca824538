import onnx
from onnx import TensorProto, helper

from qcal.placement.keep_float import no_compute_downstream, range_mismatch, sensitivity_decisions
from qcal.simulation.graph import analyse


def _graph() -> onnx.ModelProto:
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], [0.1] * 108)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"], name="sig"),
             helper.make_node("Mul", ["c", "k"], ["big"], name="scale"),
             helper.make_node("Concat", ["big", "s"], ["y"], name="cat", axis=1)]
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [640.0])
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], [w, k])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_range_mismatch_flags_mixed_concat() -> None:
    info = analyse(_graph())
    d = range_mismatch(info, {"big": (0.0, 640.0), "s": (0.0, 1.0)}, 16.0)
    assert [x.node for x in d] == ["cat"] and "ratio 640" in d[0].reason
    assert range_mismatch(info, {"big": (0.0, 8.0), "s": (0.0, 1.0)}, 16.0) == []


def test_no_compute_downstream_marks_tail_only() -> None:
    info = analyse(_graph())
    marked = {d.node for d in no_compute_downstream(info)}
    assert marked == {"sig", "scale", "cat"}


def test_sensitivity_ranks_by_sqnr_drop() -> None:
    info = analyse(_graph())
    sq = {"x": 60.0, "c": 40.0, "s": 39.0, "big": 20.0, "y": 19.0}
    chosen, drops = sensitivity_decisions(info, sq, max_nodes=1, min_drop_db=0.5, exclude=set())
    assert drops["scale"] == 20.0 and [d.node for d in chosen] == ["scale"]
    chosen, _ = sensitivity_decisions(info, sq, max_nodes=5, min_drop_db=30.0, exclude=set())
    assert chosen == []
