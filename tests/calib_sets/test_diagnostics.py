from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import calib_sets
from calib_sets import CalibSetError, DegradationMix, Source, bootstrap_spread, coverage, overlap

from .conftest import write_image


def test_overlap_finds_shared_content_even_after_degrading(folder: Path, tmp_path: Path) -> None:
    calib = Source.images(folder)
    other = tmp_path / "eval"
    write_image(other / "fresh.png", 77)
    (other / "renamed.png").write_bytes((folder / "im2.png").read_bytes())  # same bytes, another name
    ev = Source.images(other)
    shared = overlap(calib, ev)
    assert [(o.key_a, o.key_b) for o in shared] == [("im2.png", "renamed.png")]
    assert shared[0].digest == calib.items()[2].digest()
    degraded = DegradationMix.qrid(clean=0.0).apply(calib.resized(16), seed=0)
    assert [o.key_b for o in overlap(degraded, ev)] == ["renamed.png"]
    assert overlap(calib, Source.images(other).subset([0])) == []


def test_overlap_by_key() -> None:
    a = calib_sets.load("bundled:vtest[0:60]")
    b = calib_sets.load("bundled:vtest[30:90]")
    by_content = overlap(a, b)
    assert by_content and all(o.key_a == o.key_b for o in by_content)
    mixed = DegradationMix.qrid(clean=0.0).apply(a, seed=0)
    by_key = overlap(mixed, b, by="key")
    assert {o.key_b for o in by_key} == {o.key_b for o in by_content} and all(o.digest == "" for o in by_key)
    both = overlap(mixed, b, by="both")
    assert len(both) == len(by_content) and all(o.digest for o in both)
    assert overlap(calib_sets.load("bundled:vtest[0:30]"), calib_sets.load("bundled:vtest[360:480]"), "both") == []


def test_coverage_counts() -> None:
    cs = DegradationMix.qrid(clean=0.5).apply(calib_sets.load("bundled:vtest[0:120]"), seed=0)
    cov = coverage(cs)
    assert cov.n == len(cs) and sum(cov.conditions.values()) == len(cs) and cov.conditions["clean"] == len(cs) // 2
    assert cov.sources == {"bundled:vtest": len(cs)} and cov.labelled == 0 and cov.classes == {}
    text = cov.table()
    assert "noise_low" in text and "bundled:vtest" in text
    assert cov.to_dict()["n"] == len(cs)


def test_bootstrap_spread_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    heavy = np.abs(rng.standard_t(3, size=(400, 2)))  # per-sample max |activation| of 2 layers, heavy-tailed
    light = np.abs(rng.normal(size=(400, 1))) * 0 + 5.0  # a layer whose range never moves
    r = bootstrap_spread(np.hstack([heavy, light]), fractions=(0.25, 0.5, 1.0), n_boot=100, seed=0)
    assert r.sizes == (100, 200, 400) and r.spread.shape == (3, 3) and r.median.shape == (3, 3)
    assert r.spread[0, 0] > r.spread[2, 0] and r.spread[0, 1] > r.spread[2, 1]
    assert np.allclose(r.spread[:, 2], 0) and r.stable(0.05).tolist() == [False, False, True]
    mean = bootstrap_spread(heavy[:, 0], n_boot=50, reduce="mean")
    p99 = bootstrap_spread(heavy[:, 0], n_boot=50, reduce="p99.9")
    assert mean.spread[-1, 0] < r.spread[-1, 0] and p99.spread.shape == (3, 1)
    assert "n=400" in r.table(["a", "b", "c"])
    again = bootstrap_spread(np.hstack([heavy, light]), fractions=(0.25, 0.5, 1.0), n_boot=100, seed=0)
    assert np.array_equal(again.spread, r.spread)


def test_bootstrap_spread_bad_input() -> None:
    with pytest.raises(CalibSetError, match="shape"):
        bootstrap_spread(np.zeros((1, 3)))
    with pytest.raises(CalibSetError, match="fractions"):
        bootstrap_spread(np.ones(10), fractions=(0.0, 1.0))
    with pytest.raises(CalibSetError, match="reduce"):
        bootstrap_spread(np.ones(10), reduce="median-ish")
