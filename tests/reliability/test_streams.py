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


def zero_frame(src: Path, dst: Path, frame: int) -> Path:
    """A copy of an MJPG AVI whose `frame`-th JPEG has its data zeroed: the header and the frames after it
    stay intact, so only reading that frame fails (a corrupt frame mid-stream)."""
    b = bytearray(src.read_bytes())
    soi = [i for i in range(len(b) - 1) if b[i] == 0xFF and b[i + 1] == 0xD8]
    b[soi[frame]: soi[frame + 1] - 8] = bytes(soi[frame + 1] - 8 - soi[frame])
    dst.write_bytes(bytes(b))
    return dst


def test_a_corrupt_frame_mid_video_is_skipped_named_and_reported_once(tmp_path: Path) -> None:
    v = zero_frame(write_video(tmp_path / "v.avi", 20), tmp_path / "bad.avi", 10)
    cs = calib_sets.load(str(v))
    assert len(cs) == 20 and cs.skipped == []        # the last frame decodes: nothing is known up front
    derived = cs.take(15)
    with pytest.warns(SkippedFilesWarning, match=r"bad\.avi#frame=10"):
        got = [s.key for s in derived]
    assert got == [f"bad.avi#frame={i}" for i in range(15) if i != 10]
    assert len(cs.skipped) == 1 and cs.skipped[0].startswith("bad.avi#frame=10: ")   # shared with the parent
    assert [s.key for s in derived][-1] == "bad.avi#frame=14" and len(cs.skipped) == 1   # a second pass: once


def test_a_file_that_breaks_after_it_was_listed_is_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    cs = calib_sets.load(str(tmp_path))
    data = (tmp_path / "im2.png").read_bytes()
    (tmp_path / "im2.png").write_bytes(data[:40] + bytes(len(data) - 40))   # header kept, pixels gone
    with pytest.warns(SkippedFilesWarning):
        assert len(list(cs)) == 3
    assert len(cs.skipped) == 1 and "im2.png" in cs.skipped[0]


def test_a_set_where_nothing_decodes_is_a_typed_error(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((16, 16, 3), np.uint8))
    cs = calib_sets.load(str(tmp_path))
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.warns(SkippedFilesWarning), pytest.raises(EmptyCalibSetError, match="not one of the 1 samples"):
        list(cs)


def png_bomb(path: Path, w: int = 50000, h: int = 50000) -> Path:
    """A 1 kB PNG whose header claims w x h pixels (the IDAT holds a few compressed zero rows)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4096)))
                     + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    import tracemalloc

    from calib_sets.decode import decode_image
    from calib_sets.errors import UndecodableImageError

    bomb = png_bomb(tmp_path / "bomb.png")
    tracemalloc.start()
    with pytest.raises(UndecodableImageError, match=r"header says 2500 Mpx, above the limit of 134 Mpx"):
        decode_image(bomb)
    with pytest.raises(UndecodableImageError, match=r"says 12000 x 12000 = 144 Mpx, above the limit of 134"):
        decode_image(png_bomb(tmp_path / "big.png", 12000, 12000))
    assert tracemalloc.get_traced_memory()[1] < 8 * 2**20
    tracemalloc.stop()
    (tmp_path / "big.png").unlink()
    cv2.imwrite(str(tmp_path / "good.png"), np.zeros((32, 32, 3), np.uint8))
    with pytest.warns(SkippedFilesWarning, match="too large"):
        cs = calib_sets.load(str(tmp_path))
    assert len(cs) == 1 and len(cs.skipped) == 1 and "bomb.png (its header says 2500 Mpx" in cs.skipped[0]
