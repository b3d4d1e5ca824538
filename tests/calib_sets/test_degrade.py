from __future__ import annotations

import cv2
import numpy as np
import pytest

from calib_sets import Condition, DegradationParamError, Step
from calib_sets.degrade import (
    gaussian_blur,
    gaussian_noise,
    jpeg,
    jpeg_bytes,
    low_contrast,
    low_light,
    motion_blur,
    motion_kernel,
)
from calib_sets.presets import LADDER, QRID, all_named, ladder_condition, named_condition

from .conftest import textured


def _lap_var(img: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def _spread(k: np.ndarray) -> tuple[float, float]:
    """Standard deviation of a 2-D kernel's mass along x and along y, in pixels."""
    k = k / k.sum()
    ys, xs = np.indices(k.shape)
    mx, my = (k * xs).sum(), (k * ys).sum()
    return float(np.sqrt((k * (xs - mx) ** 2).sum())), float(np.sqrt((k * (ys - my) ** 2).sum()))


@pytest.mark.parametrize("sigma", [3.0, 10.0, 25.0])
def test_noise_std_matches_sigma(sigma: float) -> None:
    grey = np.full((256, 256, 3), 128, np.uint8)  # mid-grey: clipping at 0/255 is > 5 sigma away
    out = gaussian_noise(grey, sigma, np.random.default_rng(0)).astype(np.float64) - 128
    assert abs(out.std() - sigma) < 0.05 * sigma and abs(out.mean()) < 0.1
    # independent per channel (colour noise), not one grey field
    assert abs(np.corrcoef(out[..., 0].ravel(), out[..., 1].ravel())[0, 1]) < 0.02


def test_noise_is_deterministic_by_seed() -> None:
    img = textured()
    a = gaussian_noise(img, 10, np.random.default_rng(3))
    assert np.array_equal(a, gaussian_noise(img, 10, np.random.default_rng(3)))
    assert not np.array_equal(a, gaussian_noise(img, 10, np.random.default_rng(4)))
    assert np.array_equal(gaussian_noise(img, 0.0, np.random.default_rng(0)), img)


@pytest.mark.parametrize("sigma", [0.8, 1.5, 3.0])
def test_blur_kernel_std_is_sigma_pixels(sigma: float) -> None:
    impulse = np.zeros((61, 61), np.float32)
    impulse[30, 30] = 1.0
    sx, sy = _spread(gaussian_blur(impulse, sigma))
    assert abs(sx - sigma) < 0.05 * sigma and abs(sy - sigma) < 0.05 * sigma


def test_blur_lowers_laplacian_variance_monotonically() -> None:
    img = textured()
    v = [_lap_var(img)] + [_lap_var(gaussian_blur(img, s)) for s in (0.5, 1.0, 1.5, 2.0, 3.0)]
    assert all(a > b for a, b in zip(v, v[1:], strict=False)), v
    lv = [_lap_var(motion_blur(img, n, 30.0)) for n in (1, 3, 5, 9, 15)]
    assert all(a > b for a, b in zip(lv, lv[1:], strict=False)), lv


@pytest.mark.parametrize("length", [5, 9, 15])
def test_motion_blur_length_and_angle(length: int) -> None:
    k = motion_kernel(length, 0.0)
    assert np.isclose(k.sum(), 1.0)
    sx, sy = _spread(k)
    uniform_std = np.sqrt((length**2 - 1) / 12)  # a box of `length` pixels
    assert abs(sx - uniform_std) < 0.1 * uniform_std and sy < 0.3
    sx90, sy90 = _spread(motion_kernel(length, 90.0))
    assert abs(sy90 - uniform_std) < 0.1 * uniform_std and sx90 < 0.3
    sx45, sy45 = _spread(motion_kernel(length, 45.0))
    assert abs(sx45 - sy45) < 0.05 and abs(np.hypot(sx45, sy45) - uniform_std) < 0.1 * uniform_std
    # horizontal motion smears a pattern that varies along x and leaves one that varies along y alone
    x = np.arange(64)
    varies_x = np.broadcast_to((np.sin(x / 2.0) * 100 + 128).astype(np.uint8)[None, :, None], (64, 64, 3)).copy()
    varies_y = np.ascontiguousarray(varies_x.transpose(1, 0, 2))
    assert _lap_var(motion_blur(varies_x, length, 0.0)) < 0.5 * _lap_var(varies_x)
    assert np.array_equal(motion_blur(varies_y, length, 0.0), varies_y)
    assert np.array_equal(motion_blur(varies_x, length, 90.0), varies_x)


@pytest.mark.parametrize("factor", [0.8, 0.4, 0.2])
def test_contrast_factor_scales_std(factor: float) -> None:
    img = textured()
    out = low_contrast(img, factor)
    assert abs(out.std() / img.std() - factor) < 0.02
    assert abs(out.mean() - img.mean()) < 0.6


def test_low_light_brightness_and_gamma() -> None:
    img = textured()
    assert abs(low_light(img, 0.5, 1.0).mean() / img.mean() - 0.5) < 0.01
    assert low_light(np.full((2, 2, 3), 128, np.uint8), 1.0, 2.0)[0, 0, 0] == round(255 * (128 / 255) ** 2)
    assert np.array_equal(low_light(img, 1.0, 1.0), img)


def test_jpeg_size_and_fidelity_fall_with_quality() -> None:
    img = textured((240, 320))
    sizes = [len(jpeg_bytes(img, q)) for q in (95, 75, 50, 30, 10)]
    assert all(a > b for a, b in zip(sizes, sizes[1:], strict=False)), sizes
    err = [np.abs(jpeg(img, q).astype(int) - img).mean() for q in (95, 50, 10)]
    assert err[0] < err[1] < err[2]
    assert jpeg(img, 50).shape == img.shape and jpeg(img, 50).dtype == np.uint8


@pytest.mark.parametrize(("kind", "params", "match"), [
    ("gaussian_noise", {"sigma": -1}, r"sigma=-1.0 is out of range \[0, 255\].*0-255 pixel units"),
    ("gaussian_noise", {"sigma": 300}, "out of range"),
    ("gaussian_noise", {"sigma": "high"}, "must be a number"),
    ("gaussian_noise", {"sigma": True}, "must be a number"),
    ("gaussian_noise", {}, "missing parameter 'sigma'"),
    ("gaussian_noise", {"sigma": 1, "mean": 0}, r"unknown parameter\(s\) \['mean'\]"),
    ("gaussian_blur", {"sigma": 0}, r"out of range \(0"),
    ("gaussian_blur", {"sigma": float("nan")}, "out of range"),
    ("motion_blur", {"length": 4.5}, "must be an integer"),
    ("motion_blur", {"length": 0}, "out of range"),
    ("low_contrast", {"factor": 1.5}, "out of range"),
    ("low_light", {"brightness": 0.5, "gamma": 0.5}, "gamma=0.5 is out of range"),
    ("jpeg", {"quality": 0}, "quality=0 is out of range"),
    ("jpeg", {"quality": 101}, "out of range"),
    ("sharpen", {}, "unknown degradation 'sharpen'"),
])
def test_bad_params_are_named(kind: str, params: dict, match: str) -> None:
    with pytest.raises(DegradationParamError, match=match):
        Step.of(kind, **params)


def test_param_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        Step.of("jpeg", quality=0)
    assert Step.of("jpeg", quality=50.0).params == (("quality", 50),)  # integral floats (from TOML) accepted
    assert dict(Step.of("motion_blur", length=5).params) == {"angle": 0.0, "length": 5}  # defaults filled


def test_conditions() -> None:
    img = textured()
    mixed = QRID["mixed"]
    assert [s.kind for s in mixed.steps] == ["gaussian_blur", "gaussian_noise", "jpeg"] and mixed.random
    assert mixed.params() == {"gaussian_blur.sigma": 1.0, "gaussian_noise.sigma": 10.0, "jpeg.quality": 30}
    assert np.array_equal(mixed(img, 5), mixed(img, 5)) and not np.array_equal(mixed(img, 5), mixed(img, 6))
    assert QRID["blur_low"].params() == {"sigma": 1.0} and not QRID["blur_low"].random
    assert named_condition("gaussian_blur_l2") == ladder_condition("gaussian_blur", 2)
    for c in all_named():
        out = c(img, 0)
        assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img), c.name
    for name in ("clean", "", "a b"):
        with pytest.raises(DegradationParamError):
            Condition(name, (Step.of("jpeg", quality=5),))
    with pytest.raises(DegradationParamError, match="no steps"):
        Condition("x", ())
    with pytest.raises(DegradationParamError, match="unknown condition"):
        named_condition("fog")
    with pytest.raises(DegradationParamError, match="level 7"):
        ladder_condition("jpeg", 7)
    assert Condition.from_dict("c", mixed.to_dict()).steps == mixed.steps
    with pytest.raises(DegradationParamError, match="needs a 'kind'"):
        Condition.from_dict("c", {"steps": [{"sigma": 1}]})
    assert set(LADDER) == {"gaussian_noise", "gaussian_blur", "motion_blur", "low_contrast", "low_light", "jpeg"}
