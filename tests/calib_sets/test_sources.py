from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

import calib_sets
from calib_sets import (
    ConversionWarning,
    EmptyCalibSetError,
    SkippedFilesWarning,
    Source,
    SourceNotFoundError,
    UndecodableImageError,
)
from calib_sets.decode import apply_orientation, looks_complete
from calib_sets.sources import BUNDLED

from .conftest import write_image

VTEST = Path(os.environ.get("VTEST", "/tmp/ocvdoc/usr/share/doc/opencv-doc/examples/data/vtest.avi"))


def test_bundled_vtest_is_frames_below_480() -> None:
    n_files = len(list((BUNDLED / "vtest").glob("*.webp")))
    cs = calib_sets.load("bundled:vtest")
    assert len(cs) == n_files > 0
    assert all(it.index < 480 for it in cs.items())
    assert cs.keys()[0] == "vtest_0000.webp" and cs.items()[0].source == "bundled:vtest"
    held = calib_sets.load("bundled:vtest[360:480]")
    assert len(held) > 0 and not set(held.keys()) & set(calib_sets.load("bundled:vtest[0:360]").keys())
    assert all(360 <= it.index < 480 for it in held.items())
    s = held[0]
    assert s.image.ndim == 3 and s.image.shape[2] == 3 and s.image.dtype == np.uint8
    assert len(calib_sets.load("bundled:vtest[0:480:2]")) <= len(cs)
    some = Source.bundled("vtest", frames=[it.index for it in cs.items()[:3]])
    assert len(some) == 3


def test_folder_is_recursive_sorted_and_lazy(folder: Path) -> None:
    cs = Source.images(folder)
    assert cs.keys() == ["im0.png", "im1.png", "im2.png", "im3.png", "sub/deep.jpg"]
    assert Source.images(folder, recursive=False).keys() == cs.keys()[:4]
    s = cs[1]
    assert s.image.shape == (24, 32, 3) and s.source == str(folder) and s.index == 1 and s.condition == "clean"
    assert np.array_equal(s.image, write_image(folder / "x.png", 1))  # RGB order, exact for PNG


def test_folder_hash_is_stable_and_content_based(folder: Path, tmp_path: Path) -> None:
    a, b = Source.images(folder), Source.images(folder)
    assert a.content_hash == b.content_hash
    # the same bytes elsewhere give the same hash: paths are not hashed
    import shutil
    shutil.copytree(folder, tmp_path / "copy")
    assert Source.images(tmp_path / "copy").content_hash == a.content_hash
    img = cv2.imread(str(folder / "im1.png"))
    img[0, 0, 0] ^= 1  # one bit of one pixel
    cv2.imwrite(str(folder / "im1.png"), img)
    assert Source.images(folder).content_hash != a.content_hash


def test_load_dispatch(folder: Path, make_video: Callable[[int], Path]) -> None:
    cs = Source.images(folder)
    assert calib_sets.load(cs) is cs
    assert len(calib_sets.load(folder)) == 5
    assert calib_sets.load(folder / "im2.png").keys() == ["im2.png"]
    assert len(calib_sets.load(make_video(6))) == 6
    assert len(calib_sets.load([folder, folder / "im0.png"])) == 6
    with pytest.raises(SourceNotFoundError, match="bundled"):
        calib_sets.load("bundled:vtest[oops]")


def test_missing_paths_name_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"nope.*does not exist.*folder of images"):
        calib_sets.load(tmp_path / "nope")
    with pytest.raises(SourceNotFoundError, match="nope.avi"):
        Source.video(tmp_path / "nope.avi")
    with pytest.raises(SourceNotFoundError, match="gone.png"):
        Source.image_files([tmp_path / "gone.png"])
    with pytest.raises(SourceNotFoundError, match="no bundled set 'zzz'"):
        Source.bundled("zzz")
    with pytest.raises(SourceNotFoundError, match="recipe"):
        calib_sets.load(tmp_path / "r.toml")


def test_empty_sources_name_source_and_filter(tmp_path: Path, make_video: Callable[[int], Path]) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(EmptyCalibSetError, match=r"empty.*no decodable image.*recursive=True"):
        calib_sets.load(tmp_path / "empty")
    with pytest.raises(EmptyCalibSetError, match="selects no frame"):
        calib_sets.load("bundled:vtest[900:950]")
    with pytest.raises(EmptyCalibSetError, match=r"start=10.*selects no frame"):
        Source.video(make_video(6), start=10)


def test_undecodable_single_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(UndecodableImageError, match="bad.jpg"):
        calib_sets.load(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(UndecodableImageError, match="empty.png"):
        calib_sets.load(empty)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp"])
def test_truncated_file_in_folder_is_skipped_and_listed(tmp_path: Path, ext: str) -> None:
    write_image(tmp_path / f"good{ext}", 0, (64, 64))
    write_image(tmp_path / f"trunc{ext}", 1, (64, 64))
    data = (tmp_path / f"trunc{ext}").read_bytes()
    (tmp_path / f"trunc{ext}").write_bytes(data[: len(data) * 2 // 3])
    assert looks_complete(tmp_path / f"good{ext}") and not looks_complete(tmp_path / f"trunc{ext}")
    with pytest.warns(SkippedFilesWarning, match="skipped 1 unreadable"):
        cs = calib_sets.load(tmp_path)
    assert cs.keys() == [f"good{ext}"] and cs.skipped == [str(tmp_path / f"trunc{ext}")]
    assert cs.manifest.skipped == (str(tmp_path / f"trunc{ext}"),)


def test_full_check_catches_garbage_with_an_image_extension(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 0)
    (tmp_path / "b.tif").write_bytes(b"II*\x00 garbage")
    with pytest.warns(SkippedFilesWarning):
        cs = Source.images(tmp_path, check="full")
    assert cs.keys() == ["a.png"] and cs.skipped[0].endswith("b.tif")


def test_grey_rgba_and_16bit_are_converted_with_a_warning(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "g.png"), np.full((8, 8), 100, np.uint8))
    cv2.imwrite(str(tmp_path / "d.png"), np.full((8, 8, 3), 65535, np.uint16))
    cv2.imwrite(str(tmp_path / "a.png"), np.dstack([np.full((8, 8, 3), (10, 20, 30), np.uint8),
                                                    np.zeros((8, 8), np.uint8)]))
    with pytest.warns(ConversionWarning) as rec:
        imgs = {s.key: s.image for s in calib_sets.load(tmp_path)}
    assert {"greyscale", "16-bit", "alpha"} <= {w for r in rec for w in ("greyscale", "16-bit", "alpha")
                                                if w in str(r.message)}
    assert imgs["g.png"].shape == (8, 8, 3) and imgs["g.png"][0, 0, 0] == 100
    assert imgs["d.png"].dtype == np.uint8 and imgs["d.png"].max() == 255
    assert tuple(imgs["a.png"][0, 0]) == (30, 20, 10)  # BGRA on disk -> RGB


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    from PIL import Image, ImageOps

    rgb = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.png", exif=exif.tobytes())
    want = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    assert np.array_equal(apply_orientation(rgb, orientation), want)
    assert np.array_equal(calib_sets.load(tmp_path / "o.png")[0].image, want)


def test_exif_orientation_of_a_jpeg(tmp_path: Path) -> None:
    from PIL import Image

    im = Image.fromarray(np.zeros((16, 32, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert calib_sets.load(tmp_path / "r.jpg")[0].image.shape == (32, 16, 3)


def test_video_source(make_video: Callable[[int], Path]) -> None:
    p = make_video(6)
    cs = Source.video(p, every=2)
    assert cs.keys() == ["v.avi#frame=0", "v.avi#frame=2", "v.avi#frame=4"]
    frames = [s.image for s in cs]
    assert frames[1].mean() > frames[0].mean() and [s.index for s in cs] == [0, 2, 4]
    assert Source.video(p, start=1, stop=4).keys() == ["v.avi#frame=1", "v.avi#frame=2", "v.avi#frame=3"]
    # random access (seek backwards) gives the same pixels as sequential reading
    assert np.array_equal(cs.subset([2, 0])[1].image, frames[0])
    assert Source.video(p, every=2).content_hash == cs.content_hash
    assert Source.video(p, every=3).content_hash != cs.content_hash
    with pytest.raises(EmptyCalibSetError, match="every=0"):
        Source.video(p, every=0)


@pytest.mark.skipif(not VTEST.is_file(), reason="vtest.avi (opencv-doc) not unpacked")
def test_real_video_seek_equals_sequential_read() -> None:
    cs = Source.video(VTEST, start=100, stop=130, every=3)
    seq = [s.image for s in cs]
    assert seq[0].shape == (576, 768, 3)
    rev = [s.image for s in cs.subset(list(range(len(cs) - 1, -1, -1)))]
    assert all(np.array_equal(a, b) for a, b in zip(seq, rev[::-1], strict=True))
