import numpy as np
import pytest
import torch
from onnxruntime.quantization.quant_utils import compute_scale_zp

from qcal.errors import ConfigError
from qcal.quant.qparams import compute_qparams, fake_quant, qrange, sqnr_db, weight_qparams


@pytest.mark.parametrize("rmin,rmax", [(-1.3, 4.2), (0.0, 6.0), (-3.0, -1.0), (0.5, 0.9), (-2.0, 2.0)])
@pytest.mark.parametrize("signed,symmetric", [(False, False), (True, True), (True, False)])
def test_qparams_match_onnxruntime(rmin: float, rmax: float, signed: bool, symmetric: bool) -> None:
    qmin, qmax = qrange(8, signed=signed, symmetric=symmetric)
    scale, zp = compute_qparams(rmin, rmax, qmin, qmax, symmetric=symmetric)
    ref_zp, ref_scale = compute_scale_zp(np.array(rmin, np.float32), np.array(rmax, np.float32), np.array(qmin),
                                         np.array(qmax), symmetric=symmetric)
    assert np.isclose(scale, float(ref_scale), rtol=1e-6)
    assert zp == int(ref_zp)


def test_qrange_values() -> None:
    assert qrange(8, signed=False) == (0, 255)
    assert qrange(8, signed=True, symmetric=True) == (-127, 127)
    assert qrange(8, signed=False, reduce_range=True) == (0, 127)
    assert qrange(4, signed=True) == (-8, 7)
    with pytest.raises(ConfigError):
        qrange(1, signed=True)


def test_fake_quant_matches_torch(rng: np.random.Generator) -> None:
    x = rng.standard_normal(10000).astype(np.float32) * 3
    scale, zp = compute_qparams(float(x.min()), float(x.max()), 0, 255, symmetric=False)
    ours = fake_quant(x, scale, zp, 0, 255)
    ref = torch.fake_quantize_per_tensor_affine(torch.from_numpy(x), float(scale), zp, 0, 255).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert 35 < sqnr_db(x, ours) < 50  # 8 bits on a Gaussian under min-max: about 40 dB


def test_per_channel_weights_match_torch(rng: np.random.Generator) -> None:
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * rng.uniform(0.01, 2, (16, 1, 1, 1)).astype(np.float32)
    s, z, qmin, qmax = weight_qparams(w, axis=0)
    assert (z == 0).all() and (qmin, qmax) == (-127, 127)
    ours = fake_quant(w, s, z, qmin, qmax, axis=0)
    ref = torch.fake_quantize_per_channel_affine(torch.from_numpy(w), torch.from_numpy(s),
                                                 torch.zeros(16, dtype=torch.int32), 0, -127, 127).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    # per-channel keeps small channels precise where one per-tensor scale would not
    s_t, _, _, _ = weight_qparams(w.reshape(1, -1), axis=0)
    per_tensor = fake_quant(w, s_t[0], 0, -127, 127)
    assert sqnr_db(w, ours) > sqnr_db(w, per_tensor) + 3
