from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from calib_sets import CalibSet, CalibSetError, DegradationMix, Item, Sample, Source, select
from calib_sets.select import cheap_features, k_center_greedy

from .conftest import write_image


def _fake(n: int, source: str = "s") -> CalibSet:
    def load(i: int) -> Sample:
        return Sample(np.full((8, 8, 3), i % 256, np.uint8), f"{source}{i}", source, i)

    return CalibSet([Item(f"{source}{i}", source, i, lambda i=i: load(i), lambda i=i: f"{source}:{i}")
                     for i in range(n)])


def test_random_is_reproducible_and_ordered() -> None:
    cs = _fake(50)
    a = select(cs, 10, seed=0)
    assert a.keys() == select(cs, 10, seed=0).keys() != select(cs, 10, seed=1).keys()
    idx = [it.index for it in a.items()]
    assert idx == sorted(idx) and len(set(idx)) == 10
    assert len(select(cs, 50)) == 50


def test_stratified_by_source_and_condition() -> None:
    cs = _fake(10, "a") | _fake(30, "b")
    sel = select(cs, 8, strategy="stratified", by="source")
    assert [it.source for it in sel.items()].count("a") == 2
    sel = select(_fake(2, "a") | _fake(98, "b"), 5, strategy="stratified")
    assert [it.source for it in sel.items()].count("a") == 1  # every group at least once
    mixed = DegradationMix.of({"noise_low": 1.0}, clean=0.25).apply(_fake(40), seed=0)
    sel = select(mixed, 8, strategy="stratified", by="condition")
    assert sel.conditions().count("clean") == 2
    odd = select(_fake(20), 4, strategy="stratified", by=lambda it: str(it.index % 2))
    assert sorted(it.index % 2 for it in odd.items()) == [0, 0, 1, 1]


def test_k_center_covers_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    x = np.concatenate([c + rng.normal(0, 0.1, (30, 2)) for c in centres]).astype(np.float32)
    chosen = k_center_greedy(x, 3, first=0)
    assert sorted(i // 30 for i in chosen) == [0, 1, 2]
    cs = _fake(90)
    sel = select(cs, 3, strategy="diverse", features=x, seed=4)
    assert sorted(it.index // 30 for it in sel.items()) == [0, 1, 2]
    by_fn = select(cs, 3, strategy="diverse", features=lambda s: x[s.index])
    assert sorted(it.index // 30 for it in by_fn.items()) == [0, 1, 2]


def test_diverse_on_images_picks_one_of_each_kind(tmp_path: Path) -> None:
    for i in range(6):
        write_image(tmp_path / f"dark{i}.png", i, (32, 32))
    import cv2
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"flat{i}.png"), np.full((32, 32, 3), 200 + i, np.uint8))
        cv2.imwrite(str(tmp_path / f"red{i}.png"), np.dstack([np.zeros((32, 32, 2), np.uint8),
                                                              np.full((32, 32), 250 - i, np.uint8)]))
    cs = Source.images(tmp_path)
    sel = select(cs, 3, strategy="diverse", seed=0)
    names = sel.keys()
    assert sorted(k.rstrip("0123456789.png") for k in names) == ["dark", "flat", "red"]
    assert cheap_features(cs[0].image).shape == (60,)


def test_real_frames_diverse_is_reproducible() -> None:
    cs = Source.bundled("vtest").take(24)
    a = select(cs, 4, strategy="diverse", seed=0)
    assert a.keys() == select(cs, 4, strategy="diverse", seed=0).keys()


def test_bad_selection() -> None:
    cs = _fake(5)
    with pytest.raises(CalibSetError, match=r"n=6 but the set has only 5.*repeat"):
        select(cs, 6)
    with pytest.raises(CalibSetError, match="positive"):
        select(cs, 0)
    with pytest.raises(CalibSetError, match="strategy='best'"):
        select(cs, 2, strategy="best")  # type: ignore[arg-type]
    with pytest.raises(CalibSetError, match="shape"):
        select(cs, 2, strategy="diverse", features=np.zeros((4, 3)))
