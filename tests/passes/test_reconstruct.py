"""Block reconstruction, AdaRound and QDrop inside the one reconstruction pass (qcal.passes.reconstruct)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qcal.config import AdaQuantConfig, Granularity, QuantConfig, Rounding
from qcal.errors import ConfigError
from qcal.passes.adaquant import AdaQuant
from qcal.passes.base import PassContext
from qcal.passes.cache import capture
from qcal.passes.reconstruct import (
    attach_adaround,
    beta_at,
    harden,
    optimise_unit,
    qdrop,
    round_regulariser,
    soft_rounding,
    unit_mse,
    units,
)
from qcal.quant.fakequant import Precision
from qcal.quant.qmodules import QuantModel


class Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.block = Res(6)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.stem(x))))  # type: ignore[no-any-return]


def toy() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Toy().eval(), torch.randn(64, 1, 8, 8)


def toy_pair() -> tuple[torch.Tensor, QuantModel, QuantModel]:
    """The toy's inputs, its W4A4 model calibrated on them, and its FP32 reference."""
    m, x = toy()
    q = QuantModel(m, Precision.W4A4, x[:1])
    q.calibrate(x)
    fp = QuantModel(m, Precision.FP32, x[:1])
    fp.calibrate(x[:1])
    return x, q, fp


def test_units_group_a_residual_blocks_layers_and_leave_the_rest_alone() -> None:
    m, x = toy()
    q = QuantModel(m, Precision.W4A4, x[:1])
    names = list(q.layers)
    assert units(q, names, block=True) == [
        units(q, ["stem"], block=False)[0],
        type(units(q, names, block=False)[0])("block", ("block.conv1", "block.conv2")),
        units(q, ["head.2"], block=False)[0]]   # the head is a bare Sequential: not a block
    assert [u.layers for u in units(q, names, block=False)] == [(n,) for n in names]


def test_soft_rounding_starts_at_the_float_weight_and_the_regulariser_drives_h_to_0_or_1() -> None:
    m, x = toy()
    q = QuantModel(m, Precision.W4A4, x[:1])
    lay = q.layers["block.conv1"]
    w = lay.weight.detach().clone()
    attach_adaround(lay)
    assert torch.allclose(lay.quant_weight(), w, atol=1e-5)   # h(V) = fractional part of w/s at init
    opt = torch.optim.Adam([lay.round_v], lr=0.05)
    h0 = soft_rounding(lay.round_v.detach())
    assert float(((h0 > 0.01) & (h0 < 0.99)).float().mean()) > 0.9
    for _ in range(300):
        opt.zero_grad()
        round_regulariser(lay, 2.0).backward()
        opt.step()
    h = soft_rounding(lay.round_v.detach())
    assert float(((h < 1e-3) | (h > 1 - 1e-3)).float().mean()) > 0.99
    assert float(round_regulariser(lay, 2.0).detach()) < 1e-2 * h.numel()


def test_beta_is_annealed_after_the_warm_up() -> None:
    cfg = AdaQuantConfig(rounding="adaround", round_beta=(20.0, 2.0), round_warmup=0.2)
    assert beta_at(19, 100, cfg) is None
    assert beta_at(20, 100, cfg) == pytest.approx(20.0)
    assert beta_at(60, 100, cfg) == pytest.approx(11.0)
    assert beta_at(100, 100, cfg) == pytest.approx(2.0)


def test_adaround_hardens_the_weights_on_the_grid_and_lowers_the_layer_error() -> None:
    x, q, fp = toy_pair()
    lay, fl = q.layers["block.conv1"], fp.layers["block.conv1"]
    x_in = capture(q, lay, x, what="input", batch=32, max_memory_mb=64)
    y_fp = capture(fp, fl, x, what="output", batch=32, max_memory_mb=64)
    before = unit_mse(lay, x_in, y_fp)
    cfg = AdaQuantConfig(iters=200, batch=32, rounding="adaround", lr_round=1e-2, lr_weight_scale=0.0,
                         lr_act_scale=0.0)
    optimise_unit(lay, [lay], y_fp, x_in, cfg, np.random.default_rng(0))
    assert lay.weight_fn is None and not hasattr(lay, "round_v")
    ints = lay.weight.detach() / lay.w_scale.detach().abs()
    assert torch.allclose(ints, ints.round(), atol=1e-4)
    assert float(ints.round().min()) >= lay.w_grid.qmin and float(ints.round().max()) <= lay.w_grid.qmax
    assert torch.equal(lay.quant_weight(), lay.weight.detach())     # exactly representable
    assert unit_mse(lay, x_in, y_fp) < 0.9 * before


def test_qdrop_zero_equals_no_qdrop_and_half_keeps_about_half_in_float() -> None:
    m, x = toy()
    q = QuantModel(m, Precision.W4A4, x[:1])
    q.calibrate(x)
    lay = q.layers["block.conv1"]
    xin = torch.rand(16, 6, 8, 8) * 3
    with torch.no_grad():
        ref = lay.quant_input(xin)
        with qdrop([lay], 0.0, seed=1):
            assert torch.equal(lay.quant_input(xin), ref)
        with qdrop([lay], 0.5, seed=1):
            mixed = lay.quant_input(xin)
            again = lay.quant_input(xin)
        with qdrop([lay], 0.5, seed=1):
            assert torch.equal(lay.quant_input(xin), mixed)           # seeded
    assert lay.drop is None
    differs = ref != xin
    kept = (mixed == xin) & differs
    assert 0.4 < float(kept.sum() / differs.sum()) < 0.6
    assert not torch.equal(mixed, again)


def test_block_mode_lowers_the_blocks_output_error_and_reports_units() -> None:
    m, x = toy()
    ctx = PassContext.build(m, x, Precision.W4A4, progress=False)
    fp_block, q_block = ctx.fp_model.model.block, ctx.qmodel.model.block
    cfg = AdaQuantConfig(iters=150, batch=32, granularity="block", rounding="adaround", qdrop=0.5, lr_round=1e-2,
                         lr_weight_scale=1e-4, lr_act_scale=1e-3)
    report = AdaQuant(cfg).run(ctx)
    assert report.changed["units"]["block"] == ["block.conv1", "block.conv2"]
    r = report.per_layer["block"]
    assert r["mse_after"] < 0.9 * r["mse_before"]
    with torch.no_grad():   # measured independently on the captured block input of the final quantized model
        xb = capture(ctx.qmodel, q_block, x, what="input", batch=64, max_memory_mb=64).get(slice(None))
        yf = capture(ctx.fp_model, fp_block, x, what="output", batch=64, max_memory_mb=64).get(slice(None))
        assert float(((q_block(xb) - yf) ** 2).mean()) == pytest.approx(r["mse_after"], rel=1e-4)
    for name in ("block.conv1", "block.conv2"):
        lay = ctx.qmodel.layers[name]
        assert lay.drop is None and lay.weight_fn is None


def test_defaults_are_plain_adaquant_and_free_block_mode_runs() -> None:
    assert AdaQuant(AdaQuantConfig()).plain
    assert not AdaQuant(AdaQuantConfig(qdrop=0.5)).plain
    m, x = toy()
    ctx = PassContext.build(m, x, Precision.W4A4, progress=False)
    r = AdaQuant(AdaQuantConfig(iters=50, batch=32, granularity="block", lr_weight=1e-3)).run(ctx)
    assert set(r.per_layer) == {"stem", "block", "head.2"}
    assert all(v["mse_after"] <= v["mse_before"] for v in r.per_layer.values())


def test_config_round_trips_and_rejects_bad_values() -> None:
    cfg = QuantConfig(passes=("adaquant",), adaquant=AdaQuantConfig(granularity="block", rounding="adaround",
                                                                   qdrop=0.5, round_beta=(16.0, 2.0)))
    assert cfg.adaquant.granularity is Granularity.BLOCK and cfg.adaquant.rounding is Rounding.ADAROUND
    back = QuantConfig.from_toml(cfg.to_toml())
    assert back == cfg and back.adaquant.round_beta == (16.0, 2.0)
    with pytest.raises(ConfigError, match="granularity='stage'.*layer"):
        AdaQuantConfig(granularity="stage")
    with pytest.raises(ConfigError, match="qdrop=1.5"):
        AdaQuantConfig(qdrop=1.5)
    with pytest.raises(ConfigError, match="unknown key"):
        QuantConfig.from_dict({"adaquant": {"qdorp": 0.5}})


def test_harden_rounds_up_exactly_where_v_is_non_negative() -> None:
    m, x = toy()
    q = QuantModel(m, Precision.W4A4, x[:1])
    lay = q.layers["stem"]
    s = lay.w_scale.detach().abs()
    floor = torch.floor(lay.weight.detach() / s)
    attach_adaround(lay)
    with torch.no_grad():
        lay.round_v.copy_(torch.randn_like(lay.round_v))
    up = (lay.round_v.detach() >= 0).float()
    harden(lay)
    g = lay.w_grid
    assert torch.allclose(lay.weight.detach() / s, torch.clamp(floor + up, g.qmin, g.qmax), atol=1e-5)


def test_cli_sets_block_adaround_qdrop() -> None:
    import argparse

    from qcal.cli import add_common_args, config_from_args

    p = argparse.ArgumentParser()
    add_common_args(p)
    cfg = config_from_args(p.parse_args(["--passes", "adaquant", "--granularity", "block", "--rounding", "adaround",
                                "--qdrop", "0.5", "--augment", "metaaug"]))
    a = cfg.adaquant
    assert (a.granularity, a.rounding, a.qdrop) == (Granularity.BLOCK, Rounding.ADAROUND, 0.5)
    assert a.augment is not None
    assert config_from_args(p.parse_args(["--passes", "adaquant"])).adaquant == AdaQuantConfig()


def test_yolo_blocks_are_whole_c2f_modules_and_head_layers_alone() -> None:
    from qcal.models.yolo import YoloAdapter

    m = YoloAdapter.from_yaml("yolov8n.yaml", nc=3, imgsz=64).float_module()
    q = QuantModel(m, Precision.INT8, torch.zeros(1, 3, 64, 64))
    plan = units(q, list(q.layers), block=True)
    by = {u.name: u.layers for u in plan}
    assert len(by) == len(plan)                                  # no unit name twice
    assert by["model.2"] == ("model.2.cv1.conv", "model.2.m.0.cv1.conv", "model.2.m.0.cv2.conv", "model.2.cv2.conv")
    assert len(by["model.4"]) == 6 and by["model.9"] == ("model.9.cv1.conv", "model.9.cv2.conv")
    head = [u for u in plan if u.name.startswith("model.22")]
    assert len(head) == 18 and all(len(u.layers) == 1 for u in head)   # Detect takes a list: never one unit
    assert [n for u in plan for n in u.layers] == list(q.layers)       # every layer once, in execution order
