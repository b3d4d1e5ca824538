"""Sensitivity measured on the deployed QDQ model in ONNX Runtime, one layer kept float (fp16/fp32) at a time."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import calib_sets
import qcal
from qcal.passes.onnx_sensitivity import onnx_sensitivity, output_error
from qcal.placement.alloc import AllocationError, Budget
from qcal.quant.precision import Precision
from tests.passes.test_apply import Net

CFG = qcal.QuantConfig(calib_size=8, keep_float=qcal.KeepFloatConfig(sensitivity_samples=0))
X = torch.zeros(1, 3, 32, 32)
CALIB = "bundled:vtest[0:24]"


def test_each_value_is_the_measured_change_of_that_one_layer(tmp_path: Path) -> None:
    net = Net().eval()
    r = qcal.quantize(net, calib=CALIB, example_input=X, config=CFG, progress=False)
    feeds = [r.adapter.prepare(s.image).feeds for s in calib_sets.load("bundled:vtest[0:3]")]
    convs = [n.name for n in onnx.load(str(r.out.fp32_path)).graph.node if n.op_type in ("Conv", "Gemm")]
    layers = {"c1": convs[0], "c2": convs[1]}
    sens = onnx_sensitivity(r.out, layers, feeds, [Precision.INT8, Precision.FP16, Precision.FP32],
                            workdir=tmp_path, progress=False)
    assert set(sens) == {"c1", "c2"} and all(row["int8"] == 0.0 for row in sens.values())
    base = output_error(r.out.fp32_path, r.out.int8_path, feeds)
    assert base > 0
    # the same layer in fp16 through the whole quantize path gives the same number
    half = CFG.replace(keep_float=qcal.KeepFloatConfig(sensitivity_samples=0, fp16_nodes=(convs[1],)))
    r2 = qcal.quantize(net, calib=CALIB, example_input=X, config=half, progress=False)
    expected = output_error(r.out.fp32_path, r2.out.int8_path, feeds) - base
    assert sens["c2"]["fp16"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    # float16 rounding is far below 8-bit quantization noise: fp16 and fp32 measure almost alike
    assert abs(sens["c2"]["fp16"] - sens["c2"]["fp32"]) < 0.05 * base
    with pytest.raises(AllocationError, match="torch simulation"):
        onnx_sensitivity(r.out, layers, feeds, [Precision.INT8, Precision.W4A4], workdir=tmp_path, progress=False)


def test_allocate_bits_on_onnx_measurements() -> None:
    plan = qcal.allocate_bits(Net().eval(), CALIB, budget=Budget(size=0.4), choices=["int8", "fp16"],
                              example_input=X, config=CFG, measure_on="onnx", onnx_samples=2, progress=False)
    assert plan.measured["sensitivity_measured_on"] == "onnx"
    assert set(plan.sensitivity) == {"c1", "c2", "fc"}
    assert all(row["int8"] == 0.0 and row["fp16"] != 0.0 for row in plan.sensitivity.values())
    assert plan.cost_ratio <= 0.4
    with pytest.raises(AllocationError, match="'torch' or 'onnx'"):
        qcal.allocate_bits(Net().eval(), CALIB, budget=Budget(size=0.4), example_input=X, config=CFG,
                           measure_on="tensorrt", progress=False)
