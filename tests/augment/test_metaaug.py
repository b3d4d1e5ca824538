"""MetaAug: the bi-level step (gradient reaches T, matches finite differences, caller untouched), the losses,
T at initialisation, the file format and trust, and the option inside the reconstruction pass."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from calib_sets.learned import read_t
from qcal.augment import Augmenter, TNetSpec, TransformNet
from qcal.augment.metaaug import INNER_PARAMS, hinge, inner_step, layer_input, meta_loss
from qcal.config import AdaQuantConfig, MetaAugConfig, QuantConfig
from qcal.errors import CheckpointError, ConfigError, UntrustedCheckpointError
from qcal.passes.adaquant import AdaQuant
from qcal.passes.base import PassContext
from qcal.passes.reconstruct import Unit
from qcal.quant.fakequant import Precision
from qcal.quant.qmodules import QuantModel
from tests.passes.conftest import trained_bn_net


def tiny_models(precision: Precision, dtype: torch.dtype) -> tuple[QuantModel, QuantModel, torch.Tensor]:
    """conv-ReLU-conv-ReLU-pool-fc and its quantized twin; at FP32 the twin's middle conv is perturbed so the
    inner reconstruction loss (and so the second-order path to T) is not zero."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).to(dtype)
    x = torch.randn(12, 1, 6, 6, dtype=dtype)
    q = QuantModel(m, precision, x[:1])
    q.calibrate(x)
    fp = QuantModel(m, Precision.FP32, x[:1])
    fp.calibrate(x[:1])
    if precision is Precision.FP32:
        with torch.no_grad():
            q.layers["2"].weight.add_(0.3 * torch.randn_like(q.layers["2"].weight))
    for p in fp.parameters():
        p.requires_grad_(False)
    return q, fp, x


def outer_of(net: TransformNet, q: QuantModel, fp: QuantModel, x: torch.Tensor, cfg: MetaAugConfig) -> torch.Tensor:
    lay, fl = q.layers["2"], fp.layers["2"]
    tx = net(x[:6])
    params = {k: v.detach() for k, v in lay.named_parameters() if k in INNER_PARAMS}
    target = fl.forward_float(layer_input(fp, fl, tx))
    stepped = inner_step(lay, params, layer_input(q, lay, tx), target, cfg.inner_lr)
    return meta_loss(q, fp, "2", stepped, x[6:], x[:6], tx, cfg)[0]


def test_outer_gradient_reaches_t_and_matches_finite_differences() -> None:
    q, fp, x = tiny_models(Precision.FP32, torch.float64)
    # KL term only: T reaches it solely through the differentiable inner step (the second-order path).
    cfg = MetaAugConfig(alpha=1.0, beta=0.0, gamma=0.0, inner_lr=0.5)
    net = TransformNet(TNetSpec(channels=1, width=2, init_scale=0.3)).double()
    g = torch.autograd.grad(outer_of(net, q, fp, x, cfg), list(net.parameters()))
    assert float(torch.cat([t.flatten() for t in g]).norm()) > 0
    p, gp = net.head.weight, dict(zip([n for n, _ in net.named_parameters()], g, strict=True))["head.weight"]
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (0, 1, 0, 0)]:
        with torch.no_grad():
            p[idx] += eps
            up = float(outer_of(net, q, fp, x, cfg))
            p[idx] -= 2 * eps
            down = float(outer_of(net, q, fp, x, cfg))
            p[idx] += eps
        fd = (up - down) / (2 * eps)
        assert abs(fd) > 1e-9
        assert float(gp[idx]) == pytest.approx(fd, rel=1e-4, abs=1e-10)


def test_outer_gradient_is_nonzero_through_a_4bit_layer() -> None:
    q, fp, x = tiny_models(Precision.W4A4, torch.float32)
    net = TransformNet(TNetSpec(channels=1, width=4, init_scale=0.1))
    loss = outer_of(net, q, fp, x, MetaAugConfig(beta=0.0, gamma=0.0))
    g = torch.autograd.grad(loss, list(net.parameters()))
    assert float(torch.cat([t.flatten() for t in g]).norm()) > 0


def test_inner_step_leaves_the_callers_parameters_untouched() -> None:
    q, fp, x = tiny_models(Precision.W4A4, torch.float32)
    lay, fl = q.layers["2"], fp.layers["2"]
    before = copy.deepcopy(lay.state_dict())
    params = {k: v.detach() for k, v in lay.named_parameters() if k in INNER_PARAMS}
    stepped = inner_step(lay, params, layer_input(q, lay, x), fl.forward_float(layer_input(fp, fl, x)), 0.1)
    for k, v in lay.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in lay.parameters())
    assert not torch.equal(stepped["float_layer.weight"], params["float_layer.weight"])


def test_hinge_is_zero_beyond_the_margin() -> None:
    x = torch.randn(4, 3, 8, 8)
    assert float(hinge(x + 0.5, x, margin=0.1)) == 0.0            # mean squared difference 0.25 > 0.1
    assert float(hinge(x, x, margin=0.1)) == pytest.approx(0.1)
    assert float(hinge(x + 0.2, x, margin=0.1)) == pytest.approx(0.06, abs=1e-6)


def test_t_is_the_identity_at_initialisation() -> None:
    x = torch.rand(2, 3, 31, 17)                                  # odd sizes: the output keeps the input size
    y = TransformNet(TNetSpec(channels=3, width=8))(x)
    assert y.shape == x.shape
    assert float((y - x).detach().abs().max()) < 1e-2


def test_save_load_round_trip_with_hash(tmp_path) -> None:
    aug = Augmenter(TransformNet(TNetSpec(channels=1, width=4, init_scale=0.5, seed=3)), {"note": "test"})
    path = tmp_path / "metaaug.pt"
    digest = aug.save(path)
    back = Augmenter.load(path)                                   # safetensors: no trust needed
    assert back.hash == digest == aug.hash and len(digest) == 64
    x = torch.randn(3, 1, 9, 9)
    assert torch.equal(back(x), aug(x))
    net, meta, stored = read_t(path)                              # what calib_sets.Learned reads
    assert stored == digest and meta == aug.meta and torch.equal(net(x), aug.net(x))
    data = bytearray(path.read_bytes())
    data[-1] ^= 1                                                 # flip one weight bit
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hash"):
        Augmenter.load(path)


def test_an_untrusted_pickled_t_is_refused(tmp_path) -> None:
    aug = Augmenter(TransformNet(TNetSpec(channels=1, width=4)), {})
    path = tmp_path / "t.pt"
    torch.save(aug, path)
    with pytest.raises(UntrustedCheckpointError, match="trust=True"):
        Augmenter.load(path)
    assert Augmenter.load(path, trust=True).hash == aug.hash


def metaaug_run(**kw: object) -> tuple[dict, str]:
    m, x = trained_bn_net()
    ctx = PassContext.build(m, x[:48], Precision.W4A4, progress=False)
    cfg = AdaQuantConfig(iters=5, augment=MetaAugConfig(iters=3, batch=8, width=4, **kw))  # type: ignore[arg-type]
    r = AdaQuant(cfg).run(ctx)
    assert ctx.augment is None                                    # the hook is restored after the pass
    return r.changed["metaaug"], r.augmenter.hash


def test_metaaug_inside_the_reconstruction_pass_is_deterministic() -> None:
    s1, h1 = metaaug_run()
    s2, h2 = metaaug_run()
    assert h1 == h2 and s1["per_layer"] == s2["per_layer"]
    assert list(s1["per_layer"]) == ["3"]                         # first and last layer skipped, as the paper
    assert s1["per_layer"]["3"]["meta_iters"] == 3 and not s1["stopped_early"]
    assert s1["train_n"] + s1["val_n"] == 48


def test_time_budget_stops_meta_iterations() -> None:
    s, _ = metaaug_run(time_budget_s=1e-9)
    assert s["stopped_early"] and s["per_layer"]["3"]["meta_iters"] == 1


def test_metaaug_config_round_trip_and_errors() -> None:
    cfg = QuantConfig(adaquant=AdaQuantConfig(augment=MetaAugConfig(iters=7, alpha=2.0)))
    assert QuantConfig.from_toml(cfg.to_toml()) == cfg
    with pytest.raises(ConfigError, match="val_fraction"):
        MetaAugConfig(val_fraction=1.0)
    with pytest.raises(ConfigError, match="unknown key"):
        QuantConfig.from_dict({"adaquant": {"augment": {"iters": 1, "gama": 1.0}}})


def test_cli_augment_option_sets_metaaug() -> None:
    import argparse

    from qcal.cli import add_common_args, config_from_args

    p = argparse.ArgumentParser()
    add_common_args(p)
    cfg = config_from_args(p.parse_args(["--passes", "adaquant", "--augment", "metaaug"]))
    assert cfg.passes == ("adaquant",) and cfg.adaquant.augment == MetaAugConfig()
    assert config_from_args(p.parse_args(["--passes", "adaquant"])).adaquant.augment is None


def test_max_delta_bounds_the_change() -> None:
    x = torch.rand(2, 1, 12, 12)
    net = TransformNet(TNetSpec(channels=1, width=4, init_scale=100.0, max_delta=0.1))
    d = (net(x) - x).detach().abs()
    assert float(d.max()) <= 0.1 + 1e-6 and float(d.max()) > 0.05


def test_block_inner_step_moves_adaround_v_and_leaves_the_caller_untouched() -> None:
    from qcal.augment.metaaug import inner_params, module_io
    from qcal.config import Rounding
    from qcal.passes.reconstruct import attach_adaround
    from tests.passes.test_reconstruct import toy_pair

    x, q, fp = toy_pair()
    unit = Unit("block", ("block.conv1", "block.conv2"))
    for n in unit.layers:
        attach_adaround(q.layers[n])
    params = inner_params(q, unit)
    assert set(params) == {f"conv{i}.{k}" for i in (1, 2) for k in ("round_v", "w_scale", "a_scale")}
    assert set(inner_params(q, unit, frozenset({"w_scale", "a_scale"}))) == {"conv1.round_v", "conv2.round_v"}
    assert AdaQuant(AdaQuantConfig(lr_weight_scale=0.0)).frozen == {"w_scale"}   # the step moves what recon moves
    assert AdaQuant(AdaQuantConfig(lr_weight_scale=0.0, lr_act_scale=0.0)).frozen == {"w_scale", "a_scale"}
    before = copy.deepcopy(q.model.block.state_dict())
    net = TransformNet(TNetSpec(channels=1, width=4, init_scale=0.1))
    tx = net(x[:16])
    stepped = inner_step(q.model.block, params, module_io(q, q.model.block, tx),
                         module_io(fp, fp.model.block, tx, "output"), 0.1, Rounding.ADAROUND)
    for k, v in q.model.block.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(stepped["conv1.round_v"], params["conv1.round_v"])
    loss = meta_loss(q, fp, "block", stepped, x[16:32], x[:16], tx, MetaAugConfig(beta=0.0, gamma=0.0))[0]
    g = torch.autograd.grad(loss, list(net.parameters()))
    assert float(torch.cat([t.flatten() for t in g]).norm()) > 0   # the second-order path reaches T


def test_later_layers_run_in_float_during_the_meta_phase_only() -> None:
    from qcal.augment.metaaug import later_layers_float

    q, _, _ = tiny_models(Precision.W4A4, torch.float32)
    names = list(q.layers)
    with later_layers_float(q, Unit(names[1], (names[1],))):
        assert [q.layers[n].precision for n in names] == [Precision.W4A4, Precision.W4A4, Precision.FP32]
    assert all(q.layers[n].precision is Precision.W4A4 for n in names)


def test_metaaug_on_block_adaround_qdrop_is_deterministic_and_bounded() -> None:
    from tests.passes.test_reconstruct import toy

    def run() -> tuple[dict, str]:
        m, x = toy()
        ctx = PassContext.build(m, x, Precision.W4A4, progress=False)
        meta = MetaAugConfig(iters=3, batch=8, width=4, max_delta=0.5, skip_first_last=False)
        cfg = AdaQuantConfig(iters=10, batch=16, granularity="block", rounding="adaround", qdrop=0.5, augment=meta)
        r = AdaQuant(cfg).run(ctx)
        return r.changed["metaaug"], r.augmenter.hash

    (s1, h1), (s2, h2) = run(), run()
    assert h1 == h2 and s1["per_unit"] == s2["per_unit"]
    assert list(s1["per_unit"]) == ["stem", "block", "head.2"]
    assert all(0 < v["change_rms_over_std"] <= 0.5 for v in s1["per_unit"].values())


def test_inner_clip_bounds_the_step_and_zero_changes_nothing() -> None:
    q, fp, x = tiny_models(Precision.W4A4, torch.float32)
    lay, fl = q.layers["2"], fp.layers["2"]
    params = {k: v.detach() for k, v in lay.named_parameters() if k in INNER_PARAMS}
    x_in, target = layer_input(q, lay, x), fl.forward_float(layer_input(fp, fl, x)) + 1.0
    free = inner_step(lay, params, x_in, target, 0.1)
    assert inner_step(lay, params, x_in, target, 0.1, clip=0.0).keys() == free.keys()
    clipped = inner_step(lay, params, x_in, target, 0.1, clip=1e-3)

    def step(s: dict[str, torch.Tensor]) -> float:
        return float(torch.sqrt(sum(((s[k] - params[k]) ** 2).sum() for k in params)))

    assert step(free) > 1e-3 * 0.1 * 10
    assert step(clipped) == pytest.approx(1e-3 * 0.1, rel=1e-3)
