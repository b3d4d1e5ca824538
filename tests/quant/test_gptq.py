"""GPTQ solver: lower output error than round-to-nearest on the same grid, exact on on-grid weights, the
exported group layout, and typed errors."""

from __future__ import annotations

import pytest
import torch

from qcal.errors import CalibrationError, ConfigError
from qcal.quant.gptq import Hessian, gptq, rtn_like
from qcal.quant.llm_schemes import ActQuant, QuantLinear, int4_groupwise, int8_per_channel


def _layer(n: int = 48, k: int = 160, t: int = 1024, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight (n, k) and correlated inputs (t, k) with one large channel, as LLM activations have."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5
    x = torch.randn(t, k, generator=g) @ mix + 0.1 * torch.randn(t, k, generator=g)
    x[:, 7] *= 20.0
    return torch.randn(n, k, generator=g), x


def _out_err(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    return float((x @ (wq - w).T).pow(2).mean())


def _hessian(x: torch.Tensor) -> torch.Tensor:
    h = Hessian(x.shape[1])
    for chunk in x.split(256):          # streamed in pieces == all at once
        h.add(chunk)
    torch.testing.assert_close(h.matrix(), 2 * x.T @ x / x.shape[0], rtol=1e-4, atol=1e-4)
    return h.matrix()


@pytest.mark.parametrize("act_order,weighted_clip", [(False, False), (True, False), (True, True)])
def test_int4_output_error_well_below_round_to_nearest(act_order: bool, weighted_clip: bool) -> None:
    w, x = _layer()
    res = gptq(w, _hessian(x), bits=4, group=32, act_order=act_order, block=64, weighted_clip=weighted_clip)
    rtn = rtn_like(w, bits=4, group=32)
    torch.testing.assert_close(rtn, int4_groupwise(w, 32).dequantize())     # the baseline is QuantLinear's RTN
    ratio = _out_err(x, w, res.dequantize()) / _out_err(x, w, rtn)
    assert ratio < 0.5, ratio            # measured 0.29 / 0.31 on a similar layer
    assert res.proxy_loss > 0


def test_int8_per_channel_output_error_below_round_to_nearest() -> None:
    w, x = _layer(seed=1)
    res = gptq(w, _hessian(x), bits=8)
    codes, scale = res.int8()
    ref_codes, ref_scale = int8_per_channel(w)
    torch.testing.assert_close(scale, ref_scale)          # same per-row grid as round-to-nearest
    assert codes.dtype == torch.int8 and int(codes.abs().max()) <= 127
    assert _out_err(x, w, res.dequantize()) < 0.5 * _out_err(x, w, ref_codes.float() * ref_scale[:, None])


@pytest.mark.parametrize("act_order", [False, True])
def test_weights_on_the_grid_are_reconstructed_exactly(act_order: bool) -> None:
    g = torch.Generator().manual_seed(2)
    n, k, group = 16, 64, 32
    codes = torch.randint(0, 16, (n, k), generator=g)
    codes[:, ::group] = 0                    # every group spans the full 0..15 range, so its grid is recovered
    codes[:, 1::group] = 15
    zero = torch.randint(1, 15, (n, k // group), generator=g).float()
    scale = torch.rand(n, k // group, generator=g) + 0.1
    gi = torch.arange(k) // group
    w = (codes.float() - zero[:, gi]) * scale[:, gi]
    _, x = _layer(k=k, seed=3)
    res = gptq(w, _hessian(x), bits=4, group=group, act_order=act_order)
    assert torch.equal(res.codes, codes.to(torch.int32))
    torch.testing.assert_close(res.dequantize(), w, rtol=0, atol=1e-5)
    assert res.proxy_loss < 1e-8


def test_group_layout_matches_quant_linear_export() -> None:
    w, x = _layer(n=12, k=80)            # K=80 with group 32: groups of 32, 32 and 16 (padded to 32 on export)
    res = gptq(w, _hessian(x), bits=4, group=32, act_order=True)
    assert res.scale.shape == (12, 3) and res.zero.shape == (12, 3)
    deq = res.dequantize()
    for gidx, (a, b) in enumerate(((0, 32), (32, 64), (64, 80))):   # each group: one grid per row
        grid = (torch.arange(16).float()[None, :] - res.zero[:, gidx:gidx + 1]) * res.scale[:, gidx:gidx + 1]
        assert float((deq[:, a:b, None] - grid[:, None, :]).abs().amin(dim=2).max()) < 1e-5
    packed = res.int4_groups()
    assert packed.codes.shape == (12, 96) and packed.k == 80
    assert torch.equal(packed.codes[:, 80:], packed.zero[:, 2:3].expand(12, 16))   # padding sits at the zero point
    lin = torch.nn.Linear(80, 12, bias=False)
    q = QuantLinear(lin, weight_bits=4, act=ActQuant.NONE, group=32, weights=packed)
    torch.testing.assert_close(q.weight.data, deq)                   # the module simulates what GPTQ chose
    torch.testing.assert_close(q(x[:4]), x[:4] @ deq.T)


def test_dead_inputs_and_errors() -> None:
    w, x = _layer(n=8, k=32)
    x[:, 3] = 0.0                                         # a channel never active on the calibration set
    res = gptq(w, _hessian(x), bits=4, group=32)
    assert torch.isfinite(res.dequantize()).all()
    with pytest.raises(ConfigError, match="choose 4"):
        gptq(w, _hessian(x), bits=3)
    with pytest.raises(ConfigError, match="does not match"):
        gptq(w, torch.eye(16), bits=4, group=32)
    with pytest.raises(ConfigError, match="multiple of 8"):
        gptq(w, _hessian(x), bits=4, group=12)
    with pytest.raises(CalibrationError, match="gptq_damp"):
        gptq(w, -torch.eye(32) - torch.diag(torch.arange(32.0)), bits=4, group=32)   # not a Hessian
    with pytest.raises(CalibrationError, match="no calibration input"):
        Hessian(4).matrix()
