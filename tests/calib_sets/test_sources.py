from pathlib import Path

import cv2
import numpy as np
import pytest

import calib_sets
from calib_sets import EmptyCalibSetError, Source, SourceNotFoundError, UndecodableImageError


def _write(p: Path, seed: int = 0) -> None:
    img = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    cv2.imwrite(str(p), img)


def test_bundled_vtest_is_frames_below_480() -> None:
    cs = calib_sets.load("bundled:vtest")
    assert len(cs) == 160
    assert all(it.index < 480 for it in cs.items())
    held = calib_sets.load("bundled:vtest[360:480]")
    assert len(held) == 40 and not set(held.keys()) & set(calib_sets.load("bundled:vtest[0:360]").keys())
    s = next(iter(held))
    assert s.image.shape == (480, 640, 3) and s.image.dtype == np.uint8


def test_folder_hash_is_stable_and_content_based(tmp_path: Path) -> None:
    for i in range(3):
        _write(tmp_path / f"im{i}.png", i)
    a, b = Source.images(tmp_path), Source.images(tmp_path)
    assert a.content_hash == b.content_hash and len(a) == 3
    _write(tmp_path / "im1.png", 99)
    assert Source.images(tmp_path).content_hash != a.content_hash
    assert a.take(2).content_hash != a.content_hash


def test_missing_and_empty_sources(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        calib_sets.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyCalibSetError, match="no decodable image"):
        calib_sets.load(tmp_path / "empty")
    with pytest.raises(EmptyCalibSetError, match="selects no frame"):
        calib_sets.load("bundled:vtest[900:950]")


def test_undecodable_file_and_skipped_in_folder(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(UndecodableImageError, match="bad.jpg"):
        calib_sets.load(bad)
    _write(tmp_path / "good.png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        cs = calib_sets.load(tmp_path)
    assert len(cs) == 1 and cs.skipped == [str(bad)]


def test_grey_and_16bit_are_converted(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "g.png"), np.full((8, 8), 100, np.uint8))
    cv2.imwrite(str(tmp_path / "d.png"), np.full((8, 8, 3), 65535, np.uint16))
    with pytest.warns(UserWarning):
        imgs = {s.key: s.image for s in calib_sets.load(tmp_path)}
    assert imgs["g.png"].shape == (8, 8, 3) and imgs["g.png"][0, 0, 0] == 100
    assert imgs["d.png"].dtype == np.uint8 and imgs["d.png"].max() == 255


def test_video_source(tmp_path: Path) -> None:
    p = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for i in range(6):
        w.write(np.full((24, 32, 3), i * 40, np.uint8))
    w.release()
    cs = Source.video(p, every=2)
    assert cs.keys() == ["v.avi#frame=0", "v.avi#frame=2", "v.avi#frame=4"]
    frames = [s.image for s in cs]
    assert frames[1].mean() > frames[0].mean()
    with pytest.raises(EmptyCalibSetError):
        Source.video(p, start=10)
