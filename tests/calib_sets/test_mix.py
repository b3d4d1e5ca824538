from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import calib_sets
from calib_sets import (
    CalibSet,
    DegradationMix,
    DegradationParamError,
    EmptyCalibSetError,
    Item,
    Sample,
    Source,
)
from calib_sets.presets import QRID, named_condition

from .conftest import textured, write_image


def _never_loaded(n: int) -> CalibSet:
    def boom() -> Sample:
        raise AssertionError("decoded while only building the set")

    return CalibSet([Item(f"k{i}", "s", i, boom, lambda i=i: f"d{i}") for i in range(n)])


def test_counts_are_exact() -> None:
    c = DegradationMix.qrid(clean=0.5).counts(512)
    assert c["clean"] == 256 and sum(c.values()) == 512
    assert max(c[k] for k in QRID) - min(c[k] for k in QRID) <= 1
    assert DegradationMix.qrid(clean=1.0).counts(10) == {"clean": 10, **{k: 0 for k in QRID}}
    assert DegradationMix.of({"noise_low": 3, "blur_low": 1}, clean=0.0).counts(8) == \
        {"clean": 0, "noise_low": 6, "blur_low": 2}


def test_apply_is_lazy_and_deterministic() -> None:
    cs = _never_loaded(64)
    a, b = DegradationMix.qrid().apply(cs, seed=0), DegradationMix.qrid().apply(cs, seed=0)
    assert a.content_hash == b.content_hash and a.conditions() == b.conditions()
    c = DegradationMix.qrid().apply(cs, seed=1)
    assert c.content_hash != a.content_hash and c.conditions() != a.conditions()
    assert a.conditions().count("clean") == 32
    assert a.content_hash != cs.content_hash


def test_content_hash_tracks_the_recipe_only() -> None:
    cs = _never_loaded(20)
    base = DegradationMix.of({"noise_low": 1.0}, clean=0.0)
    same = DegradationMix.of([(named_condition("noise_low"), 1.0)], clean=0.0)
    other = DegradationMix.of([(calib_sets.Condition("noise_low", (calib_sets.Step.of("gaussian_noise", sigma=11),)),
                                1.0)], clean=0.0)
    assert base.apply(cs).content_hash == same.apply(cs).content_hash
    assert base.apply(cs).content_hash != other.apply(cs).content_hash


def test_degraded_samples_carry_condition_params_and_seed(folder: Path) -> None:
    cs = Source.images(folder)
    mixed = DegradationMix.of({"noise_low": 1.0, "blur_low": 1.0}, clean=0.2).apply(cs, seed=7)
    samples = list(mixed)
    assert [s.condition for s in samples] == mixed.conditions()
    for s, it, orig in zip(samples, mixed.items(), cs, strict=True):
        assert s.key == it.key and s.params == dict(it.params)
        if s.condition == "clean":
            assert np.array_equal(s.image, orig.image) and s.key == orig.key
        else:
            assert s.key == f"{orig.key}@{s.condition}" and not np.array_equal(s.image, orig.image)
        if s.condition == "noise_low":
            assert s.params["sigma"] == 10.0 and isinstance(s.params["seed"], int)
    again = list(DegradationMix.of({"noise_low": 1.0, "blur_low": 1.0}, clean=0.2).apply(cs, seed=7))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(samples, again, strict=True))
    m = mixed.manifest
    assert m.verify() and sum(m.conditions().values()) == 5
    assert [e.source_digest for e in m.entries] == [it.digest() for it in cs.items()]


def test_a_pixel_change_changes_the_mixed_hash(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / f"{i}.png", i)
    mix = DegradationMix.qrid()
    h = mix.apply(Source.images(tmp_path), seed=0).content_hash
    assert mix.apply(Source.images(tmp_path), seed=0).content_hash == h
    write_image(tmp_path / "1.png", 42)
    assert mix.apply(Source.images(tmp_path), seed=0).content_hash != h


def test_bad_mixes() -> None:
    with pytest.raises(DegradationParamError, match="clean=1.5"):
        DegradationMix.qrid(clean=1.5)
    with pytest.raises(DegradationParamError, match="weight of 'noise_low'"):
        DegradationMix.of({"noise_low": -1.0})
    with pytest.raises(DegradationParamError, match="no condition has a positive weight"):
        DegradationMix.of({}, clean=0.5)
    with pytest.raises(DegradationParamError, match="unknown condition 'fog'"):
        DegradationMix.of({"fog": 1.0})
    with pytest.raises(DegradationParamError, match="repeat"):
        DegradationMix.of({"noise_low": 1.0, "blur_low": 1.0}).__class__(
            0.5, ((QRID["noise_low"], 1.0), (QRID["noise_low"], 2.0)))
    with pytest.raises(EmptyCalibSetError):
        DegradationMix.qrid().apply(CalibSet([]))
    assert DegradationMix.of({}, clean=1.0).counts(3) == {"clean": 3}


def test_toml_round_trip() -> None:
    for mix in (DegradationMix.qrid(0.3), DegradationMix.ladder(["jpeg", "gaussian_blur"], levels=(1, 5)),
                DegradationMix.of({"motion_blur": 2.0, "low_light": 1.0}, clean=0.25)):
        assert DegradationMix.from_toml(mix.to_toml(seed=3)) == mix
    assert len(DegradationMix.ladder().weights) == 30


def test_ladder_severity_is_monotone() -> None:
    img = textured()
    err = [np.abs(named_condition(f"jpeg_l{lv}")(img, 0).astype(int) - img).mean() for lv in range(1, 6)]
    assert all(a < b for a, b in zip(err, err[1:], strict=False))
