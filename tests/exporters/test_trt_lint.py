from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from exporters.errors import ExporterError
from exporters.trt_lint import RULES, lint_tensorrt
from tests.exporters.qdq_graphs import conforming

# one mutation per rule: (rule id, mutation, offending node)
CASES = [
    ("TRT001", {"integer_op": True}, "dynq"),
    ("TRT002", {"act_zp_dtype": np.uint8, "act_zp": 0}, "r1_Q"),
    ("TRT003", {"act_zp": 3}, "r1_Q"),
    ("TRT004", {"act_scale": 0.0}, "r1_Q"),
    ("TRT004", {"act_scale": float("nan")}, "r1_DQ"),
    ("TRT005", {"scale_from_node": True}, "r1_Q"),
    ("TRT006", {"w_per_tensor": True}, "W1_DQ"),
    ("TRT006", {"w_axis": 1}, "W2_DQ"),
    ("TRT007", {"opset": 12}, "opset_import"),
    ("TRT008", {"conv2_float_act": True}, "conv2"),
    ("TRT009", {"q_on_conv_output": True}, "c1_Q"),
    ("TRT010", {"add_float_input": True}, "add"),
    ("TRT011", {"concat_float_input": True}, "concat"),
    ("TRT012", {"q_feeds_relu": True}, "r1_Q"),
    ("TRT013", {"dq_scale_mismatch": True}, "r1_DQ"),
]


def test_conforming_graph_is_silent_and_runs() -> None:
    m = conforming()
    onnx.checker.check_model(m)
    res = lint_tensorrt(m)
    assert res.ok, res.summary()
    assert res.counts["QuantizeLinear"] == 5 and res.counts["quantized_inputs_by_op"]["Conv"] == 4
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)
    (y,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert y.shape == (1, 8, 8, 8)


@pytest.mark.parametrize(("rule", "mutation", "node"), CASES, ids=[f"{r}-{next(iter(m))}" for r, m, _ in CASES])
def test_each_rule_fires_on_its_violation(rule: str, mutation: dict, node: str) -> None:
    res = lint_tensorrt(conforming(**mutation))
    hits = [v for v in res.violations if v.rule == rule]
    assert hits, f"{rule} did not fire: {res.summary()}"
    assert any(v.node == node for v in hits), [v.node for v in hits]
    d = hits[0].to_dict()
    assert d["fix"] == RULES[rule].fix and d["source"].startswith("[")
    assert rule in res.summary() and not res.ok


def test_every_rule_has_a_case_and_a_source() -> None:
    assert {r for r, _, _ in CASES} == set(RULES)
    for r in RULES.values():
        assert r.source.startswith("[") and r.fix


def test_missing_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ExporterError, match="does not exist"):
        lint_tensorrt(tmp_path / "nope.onnx")


def test_rule_kinds_split_required_from_placement() -> None:
    assert {r.id for r in RULES.values() if r.kind == "placement"} == {"TRT008", "TRT009", "TRT010", "TRT011"}
    res = lint_tensorrt(conforming(act_zp=3, concat_float_input=True))
    assert res.by_kind() == {"required": 2, "placement": 1}  # r1_Q and r1_DQ zero points; the Concat
    assert "(2 required, 1 placement)" in res.summary()
