from __future__ import annotations

import pytest
import torch
from torch import nn

from qcal.config import AdaQuantConfig, AdaQuantMode, QuantConfig
from qcal.errors import ConfigError
from qcal.passes import PassContext, make_pass, run_passes
from qcal.passes.adaquant import AdaQuant
from qcal.passes.base import channel_stats
from qcal.passes.cache import capture
from qcal.quant.fakequant import Precision


def _outputs(model: nn.Module, layer: nn.Module, x: torch.Tensor, what: str = "output") -> torch.Tensor:
    got: list[torch.Tensor] = []
    h = (layer.register_forward_pre_hook(lambda m, a: got.append(a[0])) if what == "input"
         else layer.register_forward_hook(lambda m, a, o: got.append(o)))
    with torch.no_grad():
        model(x)
    h.remove()
    return got[0]


def test_adaquant_reduces_layer_mse_on_a_toy_layer() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 16))
    # Correlated, non-negative inputs (like post-ReLU activations). On isotropic inputs round-to-nearest is
    # already the weight-MSE optimum and there is nothing for AdaQuant to find.
    x = torch.relu(torch.randn(400, 32) @ (torch.randn(32, 32) * torch.linspace(0.05, 1, 32)))
    ctx = PassContext.build(m, x, Precision.W4A4, progress=False)
    with torch.no_grad():
        before = float(((ctx.qmodel(x) - m(x)) ** 2).mean())
    [r] = run_passes(ctx, ["adaquant"], {"adaquant": AdaQuantConfig(iters=300)})
    with torch.no_grad():
        after = float(((ctx.qmodel(x) - m(x)) ** 2).mean())
    assert r.per_layer["0"]["mse_before"] == pytest.approx(before, rel=1e-4)
    assert r.per_layer["0"]["mse_after"] == pytest.approx(after, rel=1e-4)
    assert after < 0.9 * before
    assert r.per_layer["0"]["reverted"] == 0.0 and r.per_layer["0"]["weight_rel_change"] > 0


def test_sequential_mode_uses_quantized_inputs_for_every_batch(bn_net: tuple[nn.Module, torch.Tensor]) -> None:
    m, x = bn_net
    ctx = PassContext.build(m, x, Precision.W4A4, batch=10, progress=False)   # 12 capture batches
    x_in, x_fp = AdaQuant(AdaQuantConfig(mode=AdaQuantMode.SEQUENTIAL)).layer_inputs(ctx, "3")
    q_ref = _outputs(ctx.qmodel, ctx.qmodel.layers["3"], x, "input")
    fp_ref = _outputs(ctx.fp_model, ctx.fp_model.layers["3"], x, "input")
    torch.testing.assert_close(x_in.get(slice(None)), q_ref)
    torch.testing.assert_close(x_fp.get(slice(None)), fp_ref)
    for i in range(0, 120, 10):   # every batch, not only the first, comes from the quantized model
        assert not torch.allclose(x_in.get(slice(i, i + 10)), fp_ref[i:i + 10])
    p_in, _ = AdaQuant(AdaQuantConfig(mode=AdaQuantMode.PARALLEL)).layer_inputs(ctx, "3")
    torch.testing.assert_close(p_in.get(slice(None)), fp_ref)


def test_sequential_adaquant_on_a_bn_net(bn_net: tuple[nn.Module, torch.Tensor]) -> None:
    m, x = bn_net
    ctx = PassContext.build(m, x, Precision.W4A4, progress=False)
    with torch.no_grad():
        before = float(((ctx.qmodel(x) - m(x)) ** 2).mean())
    [r] = run_passes(ctx, ["adaquant"], {"adaquant": AdaQuantConfig(iters=100)})
    with torch.no_grad():
        after = float(((ctx.qmodel(x) - m(x)) ** 2).mean())
    assert list(r.per_layer) == ["0", "3", "8"]
    assert all(v["mse_after"] <= v["mse_before"] for v in r.per_layer.values())   # reverted layers: equal
    assert any(v["mse_after"] < 0.9 * v["mse_before"] for v in r.per_layer.values())
    assert after < before


def test_cache_spills_to_disk_with_equal_content(bn_net: tuple[nn.Module, torch.Tensor], tmp_path) -> None:
    m, x = bn_net
    ctx = PassContext.build(m, x, Precision.INT8, progress=False)
    ram = capture(ctx.fp_model, ctx.fp_model.layers["3"], x, what="input", batch=32, max_memory_mb=100)
    disk = capture(ctx.fp_model, ctx.fp_model.layers["3"], x, what="input", batch=32, max_memory_mb=0.01,
                   folder=tmp_path)
    assert not ram.on_disk and disk.on_disk and disk.path is not None and disk.path.parent == tmp_path
    torch.testing.assert_close(ram.get(slice(None)), disk.get(slice(None)))
    disk.close()
    assert not list(tmp_path.iterdir())


def test_bn_reestimate_restores_bn_statistics(bn_net: tuple[nn.Module, torch.Tensor]) -> None:
    m, x = bn_net
    ctx = PassContext.build(m, x, Precision.W4A4, progress=False)
    [r] = run_passes(ctx, ["bn_reestimate"])
    assert r.changed["layers_refit"] == 2 and r.changed["skipped_no_bn"] == ["8"]
    for name in ("0", "3"):
        mean, std = channel_stats(ctx.capture("q", name, "output"))
        t = ctx.qmodel.bn_targets[name]
        torch.testing.assert_close(mean, t.mean, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(std, t.std, atol=1e-4, rtol=1e-4)


def test_bias_correction_matches_fp32_channel_means(bn_net: tuple[nn.Module, torch.Tensor]) -> None:
    m, x = bn_net
    ctx = PassContext.build(m, x, Precision.W4A4, progress=False)
    [r] = run_passes(ctx, ["bias_correction"])
    for name in ("0", "3", "8"):
        mq, _ = channel_stats(ctx.capture("q", name, "output"))
        mf, _ = channel_stats(ctx.capture("fp", name, "output"))
        torch.testing.assert_close(mq, mf, atol=1e-5, rtol=1e-4)
        assert r.per_layer[name]["mse_after"] <= r.per_layer[name]["mse_before"]


def test_augment_hook_feeds_the_reconstruction(bn_net: tuple[nn.Module, torch.Tensor]) -> None:
    m, x = bn_net
    seen: list[int] = []

    def augment(batch: torch.Tensor) -> torch.Tensor:
        seen.append(len(batch))
        return batch.flip(-1)

    ctx = PassContext.build(m, x, Precision.W4A4, augment=augment, progress=False)
    x_in, _ = AdaQuant(AdaQuantConfig(mode=AdaQuantMode.PARALLEL)).layer_inputs(ctx, "0")
    assert seen == [120]
    torch.testing.assert_close(x_in.get(slice(None)), x.flip(-1))


def test_unknown_pass_names() -> None:
    with pytest.raises(ConfigError, match="choose from"):
        make_pass("adaround")
    with pytest.raises(ConfigError, match="unknown pass"):
        QuantConfig(passes=("adaquant", "qdrop"))


def test_smoothquant_refused_on_vision_models() -> None:
    from qcal.passes.apply import refine

    with pytest.raises(ConfigError, match="smoothquant pass is for LLMs"):
        refine(object(), [], QuantConfig(passes=("smoothquant",)))


def test_adaquant_config_round_trip() -> None:
    cfg = QuantConfig(passes=("adaquant",), adaquant=AdaQuantConfig(iters=10, mode=AdaQuantMode.PARALLEL))
    assert QuantConfig.from_toml(cfg.to_toml()) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        QuantConfig.from_dict({"adaquant": {"iterations": 5}})
