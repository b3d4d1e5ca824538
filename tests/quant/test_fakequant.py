import numpy as np
import pytest
import torch

from qcal.errors import ConfigError
from qcal.quant import qparams
from qcal.quant.fakequant import IntGrid, Precision, fake_quant, mse_scale, to_fp16, weight_scale_minmax


def test_grids() -> None:
    assert IntGrid.of(8, signed=True) == IntGrid(-127, 127)
    assert IntGrid.of(4, signed=True) == IntGrid(-7, 7)
    assert IntGrid.of(4, signed=False) == IntGrid(0, 15)
    with pytest.raises(ConfigError, match="2..16"):
        IntGrid.of(1, signed=True)


def test_weight_fake_quant_matches_numpy_reference(rng: np.random.Generator) -> None:
    w = rng.normal(size=(6, 3, 3, 3)).astype(np.float32)
    g = IntGrid.of(8, signed=True)
    s = weight_scale_minmax(torch.from_numpy(w), g)
    ours = fake_quant(torch.from_numpy(w), s, g).numpy()
    scale, zp, qmin, qmax = qparams.weight_qparams(w, axis=0, bits=8, symmetric=True)
    ref = qparams.fake_quant(w, scale, zp, qmin, qmax, axis=0)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    assert np.unique(np.round(ours[0] / float(s[0]))).size <= 255


def test_ste_gradients() -> None:
    g = IntGrid.of(4, signed=False)
    x = torch.tensor([-1.0, 0.3, 1.0, 100.0], requires_grad=True)
    s = torch.tensor(0.1, requires_grad=True)
    fake_quant(x, s, g).sum().backward()
    assert x.grad is not None and s.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]   # clipped below 0 and above 15*0.1 pass no gradient
    assert float(s.grad) != 0.0


def test_mse_scale_clips_heavy_tails(rng: np.random.Generator) -> None:
    x = torch.from_numpy(np.concatenate([rng.normal(size=10000), [40.0]]).astype(np.float32))
    g = IntGrid.of(4, signed=True)
    s_mse = mse_scale(x, g)
    s_max = x.abs().max() / g.qmax
    assert float(s_mse) < float(s_max)
    err = lambda s: float(((fake_quant(x, s, g) - x) ** 2).mean())  # noqa: E731
    assert err(s_mse) < 0.5 * err(s_max)


def test_precision_bits_and_fp16() -> None:
    assert (Precision.W4A8.weight_bits, Precision.W4A8.act_bits) == (4, 8)
    assert Precision.FP16.is_float and Precision.INT8.deployable and not Precision.W4A4.deployable
    x = torch.tensor([1.0 + 2**-12])
    assert float(to_fp16(x)) == 1.0
