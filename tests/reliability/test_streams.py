"""Bad items in a calibration stream: a truncated video whose header lies, unreadable images among good ones.
Each is skipped with its name, counted, and reported; too few good items is a typed error before the work."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import calib_sets
from calib_sets.errors import EmptyCalibSetError
from calib_sets.files import SkippedFilesWarning
from calib_sets.video import video_set


def write_video(path: Path, frames: int = 40) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        w.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    w.release()
    return path


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_a_whole_video_is_unchanged(tmp_path: Path) -> None:
    v = write_video(tmp_path / "v.avi")
    cs = calib_sets.load(str(v))
    assert len(cs) == 40 and cs.skipped == [] and len(list(cs)) == 40


def test_a_truncated_video_keeps_the_frames_that_decode_and_names_the_rest(tmp_path: Path) -> None:
    whole = write_video(tmp_path / "v.avi")
    t = truncate(whole, tmp_path / "t.avi", 0.5)
    assert int(cv2.VideoCapture(str(t)).get(cv2.CAP_PROP_FRAME_COUNT)) == 40   # the header still says 40
    with pytest.warns(SkippedFilesWarning, match="lists 40 frames but only"):
        cs = calib_sets.load(str(t))
    real = len(cs)
    assert 0 < real < 40
    assert cs.skipped == [f"{t}#frame={real}..39 (the header lists 40 frames, {real} decode)"]
    assert len(list(cs)) == real   # iterating decodes every listed frame: nothing raises mid-stream
    assert cs.keys() == [f"t.avi#frame={i}" for i in range(real)]
    with pytest.raises(EmptyCalibSetError, match=f"only its first {real} of 40 listed frames decode"):
        video_set(t, start=real + 2)


def test_the_real_vtest_truncated(tmp_path: Path) -> None:
    src = Path("/tmp/ocvdoc/usr/share/doc/opencv-doc/examples/data/vtest.avi")
    if not src.is_file():
        pytest.skip("opencv-doc's vtest.avi is not unpacked (.ci/run does it)")
    t = truncate(src, tmp_path / "vtest.avi", 1 / 40)
    with pytest.warns(SkippedFilesWarning):
        cs = calib_sets.load(str(t))
    assert 0 < len(cs) < 795 and "the header lists 795 frames" in cs.skipped[0]
    assert len(list(cs)) == len(cs)


def test_every_unreadable_image_is_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(8):
        cv2.imwrite(str(tmp_path / f"good{i}.png"), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    good = (tmp_path / "good0.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(SkippedFilesWarning) as w:
        cs = calib_sets.load(str(tmp_path))
    msg = str(w[0].message)
    bad = sorted(str(tmp_path / n) for n in ("cut.png", "text.png", "zero.jpg"))
    assert len(cs) == 8 and sorted(cs.skipped) == bad
    assert all(b in msg for b in bad) and "skipped 3 unreadable" in msg and "manifest.skipped" not in msg
    assert sorted(json.loads(json.dumps(cs.manifest.to_dict()))["skipped"]) == bad
