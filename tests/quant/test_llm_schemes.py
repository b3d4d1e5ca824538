"""LLM quantization primitives against hand-computed references."""

from __future__ import annotations

import pytest
import torch

from qcal.errors import ConfigError
from qcal.quant.llm_schemes import (
    ActQuant,
    QuantLinear,
    fake_quant_per_token,
    int4_groupwise,
    int8_per_channel,
    static_qparams,
)


def test_per_token_quantization_on_a_toy_layer() -> None:
    x = torch.tensor([[1.0, -2.0, 0.5, 127.0], [0.01, 0.02, -0.03, 0.0]])
    lin = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    q = QuantLinear(lin, weight_bits=8, act=ActQuant.PER_TOKEN)
    # row 0: scale 1 -> 0.5 rounds to 0 (half to even); row 1 has its own scale 0.03/127, so it survives
    expected_x = torch.tensor([[1.0, -2.0, 0.0, 127.0], [0.01, 0.02, -0.03, 0.0]])
    torch.testing.assert_close(fake_quant_per_token(x), expected_x, rtol=1e-2, atol=1e-6)
    torch.testing.assert_close(q(x), expected_x @ lin.weight.T, rtol=1e-2, atol=1e-6)
    # a per-tensor scale would have zeroed the whole second token
    assert float(q(x)[1].abs().sum()) > 0.02


def test_int8_per_channel_roundtrip() -> None:
    w = torch.randn(16, 40, generator=torch.Generator().manual_seed(0))
    q, s = int8_per_channel(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert float((q.float() * s[:, None] - w).abs().max()) <= float(s.max()) / 2 + 1e-6


def test_int4_groups_pad_k_and_stay_on_grid() -> None:
    w = torch.randn(8, 96, generator=torch.Generator().manual_seed(0))
    g = int4_groupwise(w, 64)                      # K=96 -> 2 groups, the second half padding
    assert g.codes.shape == (8, 128) and g.scale.shape == (8, 2) and int(g.codes.max()) <= 15
    deq = g.dequantize()
    assert deq.shape == w.shape
    assert float((deq - w).pow(2).mean() / w.pow(2).mean()) < 0.01     # 4-bit RTN: about -22 dB
    with pytest.raises(ConfigError, match="group"):
        int4_groupwise(w, 12)


def test_static_qparams_include_zero() -> None:
    s, z = static_qparams(0.5, 2.55)
    assert z == 0 and abs(s - 0.01) < 1e-9
    s, z = static_qparams(-1.0, 1.0)
    assert 127 <= z <= 128
