from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import calib_sets
from calib_sets import CalibSet, CalibSetError, Manifest, Source


def test_set_operations_are_lazy_and_immutable(folder: Path) -> None:
    cs = Source.images(folder)
    both = cs | cs.take(2)
    assert len(both) == 7 and len(cs) == 5
    assert both.keys()[5:] == ["im0.png", "im1.png"]
    assert cs.subset([4, 0]).keys() == ["sub/deep.jpg", "im0.png"]
    assert cs.subset([-1]).keys() == ["sub/deep.jpg"]
    with pytest.raises(CalibSetError, match="out of range"):
        cs.subset([5])
    with pytest.raises(CalibSetError):
        cs.take(-1)
    rep = cs.repeat(12)
    assert len(rep) == 12 and rep.keys()[5] == "im0.png#rep=1" and len(set(rep.keys())) == 12
    assert np.array_equal(rep[5].image, cs[0].image)
    mixed = calib_sets.DegradationMix.qrid().apply(rep, seed=0)
    assert [s.key for s in mixed] == mixed.keys() and len(set(mixed.keys())) == 12
    assert [s.condition for s in mixed] == mixed.conditions()
    assert "5 samples" in repr(cs)


def test_resized_keeps_aspect_and_changes_the_hash(folder: Path) -> None:
    cs = Source.images(folder)
    small = cs.resized(16)
    assert small[0].image.shape == (12, 16, 3)
    assert cs.resized(64)[0].image.shape == (48, 64, 3)
    assert small.content_hash != cs.content_hash and small.content_hash == cs.resized(16).content_hash
    assert small.items()[0].source_digest() == cs.items()[0].digest()


def test_content_hash_changes_with_order_and_membership(folder: Path) -> None:
    cs = Source.images(folder)
    assert cs.subset([1, 0]).content_hash != cs.subset([0, 1]).content_hash
    assert cs.take(4).content_hash != cs.content_hash
    assert (cs.take(2) | cs.subset([2, 3, 4])).content_hash == cs.content_hash
    assert len(cs.content_hash) == 64 and int(cs.content_hash, 16) >= 0


def test_manifest_round_trip(folder: Path, tmp_path: Path) -> None:
    cs = Source.images(folder)
    m = cs.manifest
    assert m.content_hash == cs.content_hash and m.verify() and len(m) == 5
    p = m.write(tmp_path / "out" / "calib.manifest.json")
    assert [f.name for f in p.parent.iterdir()] == ["calib.manifest.json"]  # no temporary file left behind
    back = Manifest.read(p)
    assert back == m and back.verify()
    d = json.loads(p.read_text())
    assert d["n"] == 5 and d["samples"][0]["key"] == "im0.png" and d["samples"][0]["condition"] == "clean"
    d["samples"][0]["digest"] = "0" * 64
    assert not Manifest.from_dict(d).verify()
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CalibSetError, match="not valid JSON"):
        Manifest.read(tmp_path / "bad.json")
    with pytest.raises(CalibSetError, match="malformed"):
        Manifest.from_dict({"samples": [{}]})
    with pytest.raises(calib_sets.SourceNotFoundError):
        Manifest.read(tmp_path / "none.json")


def test_bundled_hash_is_stable() -> None:
    a, b = calib_sets.load("bundled:vtest[0:30]"), calib_sets.load("bundled:vtest[0:30]")
    assert isinstance(a, CalibSet) and a.content_hash == b.content_hash
