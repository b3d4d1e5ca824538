"""Video files as calibration sources: every n-th frame of a frame range, decoded lazily and in order.

One `_VideoReader` per source keeps a capture open and reads forward when the next wanted frame is ahead
(grab() is much cheaper than a seek, and exact on every codec); it seeks only for jumps backwards or far ahead.
A frame's digest is the file's sha256 plus the frame number: hashing the set never decodes a frame.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from calib_sets.decode import file_digest
from calib_sets.errors import (
    EmptyCalibSetError,
    SkippedFilesWarning,
    SourceNotFoundError,
    UndecodableImageError,
)
from calib_sets.sample import CalibSet, Item, Sample, memo, sha256_text

VIDEO_EXTS = frozenset({".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv"})
_MAX_FORWARD_GRABS = 300  # beyond this gap a seek is cheaper than decoding every frame in between


class _VideoReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._cap: cv2.VideoCapture | None = None
        self._next = 0  # frame number the next read() returns

    def frame(self, index: int) -> np.ndarray:
        if self._cap is None or index < self._next or index - self._next > _MAX_FORWARD_GRABS:
            if self._cap is None:
                self._cap = cv2.VideoCapture(str(self.path))
            if index != self._next:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                self._next = index
        while self._next < index:
            self._cap.grab()
            self._next += 1
        ok, frame = self._cap.read()
        if not ok:
            self.close()
            raise UndecodableImageError(f"{self.path}: frame {index} does not decode (past the end of the "
                                        "stream or a corrupt frame); use a smaller `stop`.")
        self._next = index + 1
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap, self._next = None, 0

    def __del__(self) -> None:
        self.close()


def frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


def _reads_at(path: Path, index: int) -> bool:
    cap = cv2.VideoCapture(str(path))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        return bool(cap.read()[0])
    finally:
        cap.release()


def decodable_count(path: Path, listed: int) -> int:
    """How many frames really decode: the header's count when its last frame reads (one seek), else found by
    bisection over seeks (~log2(n) reads): a truncated file keeps the header of the whole one."""
    if listed <= 0 or _reads_at(path, listed - 1):
        return max(listed, 0)
    if not _reads_at(path, 0):
        return 0
    lo, hi = 0, listed - 1   # frame lo reads, frame hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _reads_at(path, mid) else (lo, mid)
    return hi


def _load(reader: _VideoReader, index: int, key: str, source: str) -> Sample:
    return Sample(reader.frame(index), key, source, index)


def video_set(path: str | Path, *, every: int = 1, start: int = 0, stop: int | None = None) -> CalibSet:
    p = Path(path)
    if not p.is_file():
        raise SourceNotFoundError(f"video {p} does not exist; check the path (or give a folder of images).")
    if every < 1 or start < 0 or (stop is not None and stop < start):
        raise EmptyCalibSetError(f"video {p}: every={every}, start={start}, stop={stop} is not a valid range; "
                                 "use every >= 1 and 0 <= start <= stop.")
    n = frame_count(p)
    if n <= 0:
        raise EmptyCalibSetError(f"video {p} has no readable frames; check the file and that OpenCV has its codec.")
    frames = range(start, min(stop if stop is not None else n, n), every)
    if not frames:
        raise EmptyCalibSetError(f"video {p}: the filter start={start}, stop={stop}, every={every} selects no "
                                 f"frame of its {n} frames.")
    skipped = []
    if not _reads_at(p, frames[-1]):   # the header lies (a truncated file): keep the frames that decode
        real = decodable_count(p, n)
        skipped.append(f"{p}#frame={real}..{n - 1} (the header lists {n} frames, {real} decode)")
        frames = range(start, min(frames.stop, real), every)
        if not frames:
            raise EmptyCalibSetError(f"video {p}: only its first {real} of {n} listed frames decode (truncated or "
                                     f"corrupt), and start={start}, stop={stop}, every={every} selects none of "
                                     "them; re-encode or re-copy the file, or choose frames that exist.")
        warnings.warn(f"video {p}: the header lists {n} frames but only {real} decode (truncated?); using the "
                      f"{len(frames)} selected frames among them (CalibSet.skipped)", SkippedFilesWarning,
                      stacklevel=2)
    reader = _VideoReader(p)
    file_sha = memo(partial(file_digest, p))
    items = []
    for i in frames:
        key = f"{p.name}#frame={i}"
        items.append(Item(key, str(p), i, partial(_load, reader, i, key, str(p)),
                          memo(partial(lambda j: sha256_text(f"{file_sha()}#frame={j}"), i))))
    return CalibSet(items, skipped=skipped)
