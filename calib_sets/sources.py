"""Sources: image folders and files, video files, the bundled frames; `load(spec)` resolves any of them."""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from calib_sets.errors import EmptyCalibSetError, SourceNotFoundError, UndecodableImageError
from calib_sets.sample import CalibSet, Item, Sample

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_EXTS = {".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg"}
BUNDLED = Path(__file__).parent / "bundled"


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decode_image(path: Path) -> np.ndarray | None:
    """RGB uint8 HxWx3, or None when the file does not decode. EXIF orientation is applied by imdecode;
    grey, alpha and 16-bit images are converted (with a warning)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH) if data.size else None
    if img is None:
        return None
    if img.dtype != np.uint8:
        warnings.warn(f"{path}: {img.dtype} image scaled to 8 bits", stacklevel=3)
        if np.issubdtype(img.dtype, np.integer):
            top = float(np.iinfo(img.dtype.type).max)  # type: ignore[type-var]
            img = (img.astype(np.float32) / top * 255).round().astype(np.uint8)
        else:
            img = np.clip(img * 255, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        warnings.warn(f"{path}: greyscale image converted to RGB", stacklevel=3)
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        warnings.warn(f"{path}: alpha channel dropped", stacklevel=3)
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _load_image(path: Path, index: int, source: str) -> Sample:
    img = decode_image(path)
    if img is None:
        raise UndecodableImageError(f"{path} does not decode as an image (truncated or not an image); "
                                    "remove it or replace it with a valid file.")
    return Sample(img, path.name, source, index)


def _readable(path: Path) -> bool:
    try:
        return decode_image(path) is not None
    except Exception:
        return False


class Source:
    @staticmethod
    def image_files(paths: Sequence[str | Path], *, source: str = "files", check: bool = True) -> CalibSet:
        items, skipped = [], []
        for i, p in enumerate(Path(x) for x in paths):
            if not p.is_file():
                raise SourceNotFoundError(f"image {p} does not exist; check the path.")
            if check and not _readable(p):
                skipped.append(str(p))
                continue
            items.append(Item(p.name, source, i, partial(_load_image, p, i, source), partial(_file_digest, p)))
        if skipped:
            warnings.warn(f"{source}: skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}", stacklevel=2)
        return CalibSet(items, f"images:{source}", skipped)

    @staticmethod
    def images(path: str | Path, *, recursive: bool = True) -> CalibSet:
        root = Path(path)
        if not root.exists():
            raise SourceNotFoundError(f"calibration source {root} does not exist; pass a folder of images, an "
                                      "image, a video file or 'bundled:vtest'.")
        if root.is_file():
            if _readable(root):
                return Source.image_files([root], source=root.name)
            raise UndecodableImageError(f"{root} does not decode as an image (truncated or not an image); "
                                        "give a valid image file.")
        pattern = "**/*" if recursive else "*"
        files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        cs = Source.image_files(files, source=str(root))
        if len(cs) == 0:
            raise EmptyCalibSetError(f"calibration source {root} holds no decodable image "
                                     f"({len(files)} file(s) with extensions {sorted(IMAGE_EXTS)}); add images.")
        return cs

    @staticmethod
    def video(path: str | Path, *, every: int = 1, start: int = 0, stop: int | None = None) -> CalibSet:
        p = Path(path)
        if not p.is_file():
            raise SourceNotFoundError(f"video {p} does not exist; check the path.")
        cap = cv2.VideoCapture(str(p))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        if n <= 0:
            raise EmptyCalibSetError(f"video {p} has no readable frames; check the file and its codec.")
        frames = range(start, min(stop if stop is not None else n, n), max(every, 1))
        items = [Item(f"{p.name}#frame={i}", str(p), i, partial(_video_frame, p, i),
                      partial(_video_digest, p, i)) for i in frames]
        if not items:
            raise EmptyCalibSetError(f"video {p}: frames {start}:{stop}:{every} select nothing of {n} frames.")
        return CalibSet(items, f"video:{p.name}:{start}:{stop}:{every}")

    @staticmethod
    def bundled(name: str = "vtest", frames: Iterable[int] | None = None) -> CalibSet:
        folder = BUNDLED / name
        if not folder.is_dir():
            have = sorted(d.name for d in BUNDLED.iterdir() if d.is_dir())
            raise SourceNotFoundError(f"no bundled set {name!r}; bundled sets: {have}.")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if frames is not None:
            wanted = set(frames)
            files = [f for f in files if _frame_number(f) in wanted]
        items = [Item(f"{name}/{f.name}", f"bundled:{name}", _frame_number(f),
                      partial(_load_image, f, _frame_number(f), f"bundled:{name}"), partial(_file_digest, f))
                 for f in files]
        if not items:
            raise EmptyCalibSetError(f"bundled set {name!r}: the frame filter selects no frame.")
        return CalibSet(items, f"bundled:{name}")


def _frame_number(path: Path) -> int:
    m = re.search(r"(\d+)$", path.stem)
    return int(m.group(1)) if m else -1


def _video_frame(path: Path, index: int) -> Sample:
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    if not ok:
        raise UndecodableImageError(f"{path}: frame {index} does not decode.")
    return Sample(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), f"{path.name}#frame={index}", str(path), index)


def _video_digest(path: Path, index: int) -> str:
    return hashlib.sha256(np.ascontiguousarray(_video_frame(path, index).image).tobytes()).hexdigest()


def load(spec: CalibSet | str | Path) -> CalibSet:
    """A CalibSet from a set, a folder, an image, a video, or 'bundled:NAME[a:b]' (frame numbers a..b-1)."""
    if isinstance(spec, CalibSet):
        return spec
    s = str(spec)
    m = re.fullmatch(r"bundled:(\w+)(?:\[(\d*):(\d*)\])?", s)
    if m:
        frames = None
        if m.group(2) is not None or m.group(3) is not None:
            frames = range(int(m.group(2) or 0), int(m.group(3) or 10**9))
        return Source.bundled(m.group(1), frames)
    p = Path(s)
    if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
        return Source.video(p)
    return Source.images(p)
