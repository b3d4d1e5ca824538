from __future__ import annotations

import torch
from torch import nn

from qcal.passes.base import PassContext
from qcal.passes.sensitivity import compose, evaluate_loss, measure
from qcal.quant.fakequant import Precision


def test_sensitivity_one_layer_at_a_time(bn_net: tuple[nn.Module, torch.Tensor]) -> None:
    m, x = bn_net
    bank = {p: PassContext.build(m, x, p, progress=False).qmodel for p in (Precision.W4A4, Precision.INT8)}
    mixed = compose(bank, {"3": Precision.W4A4}, Precision.INT8)
    assert mixed.layers["3"].precision is Precision.W4A4 and mixed.layers["0"].precision is Precision.INT8
    assert mixed.model.get_submodule("3") is mixed.layers["3"]
    assert bank[Precision.INT8].layers["3"].precision is Precision.INT8       # the bank is not modified
    labels = m(x).argmax(-1)
    sens = measure(bank, x, [Precision.W4A4, Precision.INT8], Precision.INT8, labels=labels, progress=False)
    assert set(sens) == {"0", "3", "8"}
    assert all(v["int8"] == 0.0 for v in sens.values())
    base = evaluate_loss(bank[Precision.INT8], x, labels=labels, reference=None)
    for n in sens:   # the number is exactly the loss of the one-layer-changed model minus the base loss
        one = evaluate_loss(compose(bank, {n: Precision.W4A4}, Precision.INT8), x, labels=labels, reference=None)
        assert abs(sens[n]["w4a4"] - (one - base)) < 1e-9
    assert any(v["w4a4"] != 0 for v in sens.values())
    unlabelled = measure(bank, x, [Precision.W4A4, Precision.INT8], Precision.INT8, fp_model=m, progress=False)
    assert all(v["w4a4"] > 0 for v in unlabelled.values())   # output error vs FP32 grows with 4 bits
