"""allocate_bits on a small torch model: measured sensitivities, costs, and the mixed-precision QDQ export."""

from __future__ import annotations

import onnx
import pytest
import torch

import qcal
from qcal.cli import main
from qcal.placement.alloc import AllocationError, Budget
from tests.passes.test_apply import Net

CFG = qcal.QuantConfig(calib_size=8, keep_float=qcal.KeepFloatConfig(sensitivity_samples=0))
X = torch.zeros(1, 3, 32, 32)


def test_size_budget_keeps_float_layers_float_in_the_qdq_model() -> None:
    net = Net().eval()
    plan = qcal.allocate_bits(net, "bundled:vtest[0:24]", budget=Budget(size=0.4), choices=["int8", "fp16"],
                              example_input=X, config=CFG, progress=False)
    d = plan.to_dict()
    assert [row["layer"] for row in d["layers"]] == ["c1", "c2", "fc"]
    assert all(set(row["sensitivity"]) == {"int8", "fp16"} for row in d["layers"])
    assert all(row["sensitivity"]["int8"] == 0.0 for row in d["layers"])     # int8 is the base
    assert plan.cost_ratio <= 0.4
    rows = plan.measured["refinement"]     # the IP's best plans (and uniform int8) measured jointly; best kept
    assert rows[0]["candidate"] == "ip#1" and {"c1": "int8", "c2": "int8", "fc": "int8"} in [r["choices"] for r in rows]
    assert plan.measured["measured_loss_increase"] == min(r["measured_loss_increase"] for r in rows)
    assert all(r["cost_ratio"] <= 0.4 for r in rows)
    # all-int8 is 0.25 and all-fp16 0.5 of FP32 bits: 0.4 leaves room for the largest layers in float
    assert 1 <= len(d["float_layers"]) < 3
    assert plan.measured["unmatched_layers"] == []
    nodes = plan.measured["float_nodes"]
    assert plan.export_config.keep_float.nodes == tuple(sorted(nodes))
    r = qcal.quantize(net, calib="bundled:vtest[0:24]", example_input=X, config=plan.export_config, progress=False)
    g = onnx.load(str(r.out.int8_path)).graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {i.name: i.data_type for i in g.initializer}
    for n in g.node:
        if n.op_type in ("Conv", "Gemm"):
            w_from_dq = n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"
            assert w_from_dq == (n.name not in nodes), n.name
            if n.name in nodes:   # the "fp16" choice is float16 in the graph: fp16 weights, a Cast on its input
                assert inits[n.input[1]] == onnx.TensorProto.FLOAT16, n.name
                assert producers[n.input[0]].op_type == "Cast", n.name
    assert plan.measured["fp16_nodes"] == sorted(nodes)
    assert {d.node: d.rule for d in r.out.decisions if d.node in nodes} == {n: "fp16" for n in nodes}
    assert [o.type.tensor_type.elem_type for o in g.output] == [onnx.TensorProto.FLOAT] * len(g.output)
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 32, 32)).astype(np.float32)
    ys = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {g.input[0].name: x})[0]
          for p in (r.out.fp32_path, r.out.int8_path)]
    assert np.abs(ys[1] - ys[0]).max() <= 0.1 * np.abs(ys[0]).max() + 1e-6   # mixed INT8/FP16 close to FP32


def test_latency_budget_uses_profiled_layer_times() -> None:
    plan = qcal.allocate_bits(Net().eval(), "bundled:vtest[0:24]", budget=Budget(latency=5.0),
                              choices=["int8", "fp16"], example_input=X, config=CFG, latency_runs=5, progress=False)
    lat = plan.measured["layer_costs"]
    assert set(lat) == {"c1", "c2", "fc"}
    assert all(v["latency_ms"]["int8"] > 0 and v["latency_ms"]["fp16"] > 0 for v in lat.values())
    assert plan.choices and plan.budget.kind == "latency"


def test_infeasible_budget_and_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AllocationError, match="smallest feasible budget is 0.25"):
        qcal.allocate_bits(Net().eval(), "bundled:vtest[0:24]", budget=Budget(size=0.1), example_input=X,
                           config=CFG, progress=False)
    assert main(["quantize", "x.pt", "--calib", "bundled:vtest", "--allocate", "speed=2"]) == 2
    assert "KIND=RATIO" in capsys.readouterr().err
