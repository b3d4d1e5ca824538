"""Decoding one image file to HxWx3 uint8 RGB, and a cheap check that a file is complete.

OpenCV decodes (fast, 16-bit aware); Pillow only reads the EXIF orientation tag, because
`cv2.IMREAD_UNCHANGED` (needed to see grey, alpha and 16-bit data as they are) ignores the orientation.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import cv2
import numpy as np

from calib_sets.errors import UndecodableImageError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# 134 Mpx: decoding one takes ~400 MB as 8-bit RGB (an 8K frame is 33 Mpx). A "decompression bomb" (a small
# PNG whose header claims 50000 x 50000) is refused from its header, before anything is allocated.
MAX_PIXELS = 2**27


class ConversionWarning(UserWarning):
    """An image was not 8-bit RGB and was converted (grey -> RGB, alpha dropped, 16-bit scaled)."""


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def exif_orientation(path: Path) -> int:
    """EXIF orientation 1..8 (1 = as stored); 1 when there is no tag or Pillow is missing."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            value = im.getexif().get(0x0112, 1)
        return int(value) if 1 <= int(value) <= 8 else 1
    except Exception:  # no Pillow, or a format Pillow does not read: no orientation to apply
        return 1


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip an HxW[xC] array as EXIF orientation `orientation` says (same result as
    PIL.ImageOps.exif_transpose)."""
    if orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1]
    elif orientation == 5:
        img = np.swapaxes(img, 0, 1)
    elif orientation == 6:
        img = np.rot90(img, -1)
    elif orientation == 7:
        img = np.swapaxes(img[::-1, ::-1], 0, 1)
    elif orientation == 8:
        img = np.rot90(img, 1)
    return np.ascontiguousarray(img)


def _to_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        warnings.warn(f"{path}: 16-bit image scaled to 8 bits (v * 255 / 65535)", ConversionWarning, stacklevel=4)
        return ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        warnings.warn(f"{path}: float image clipped to [0, 1] and scaled to 8 bits", ConversionWarning,
                      stacklevel=4)
        return np.clip(np.nan_to_num(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    warnings.warn(f"{path}: {img.dtype} image clipped to 0..255", ConversionWarning, stacklevel=4)
    return np.clip(img, 0, 255).astype(np.uint8)


def too_large(path: Path) -> str | None:
    """Why the image is too large to decode (from its header alone), or None when it is not (or the header is
    not one Pillow reads: the decode then decides)."""
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # Pillow's DecompressionBombWarning: the limit here is qcal's own
            with Image.open(path) as im:
                w, h = im.size
    except ImportError:
        return None
    except Exception as e:   # Pillow refuses > 179 Mpx itself; its message carries the pixel count
        m = re.search(r"\((\d+) pixels\)", str(e))
        if type(e).__name__ != "DecompressionBombError" or not m:
            return None
        return _above(f"{int(m.group(1)) / 1e6:.0f} Mpx")
    return _above(f"{w} x {h} = {w * h / 1e6:.0f} Mpx") if w * h > MAX_PIXELS else None


def _above(size: str) -> str:
    return (f"its header says {size}, above the limit of {MAX_PIXELS / 1e6:.0f} Mpx (a decompression bomb or a "
            "huge scan): downscale it")


def decode_image(path: Path | str) -> np.ndarray | None:
    """RGB uint8 HxWx3 with EXIF orientation applied, or None when the file does not decode.
    Grey, alpha and 16-bit/float images are converted with a `ConversionWarning`; an image above MAX_PIXELS
    raises UndecodableImageError before anything is allocated."""
    path = Path(path)
    big = too_large(path)
    if big:
        raise UndecodableImageError(f"{path}: {big}.")
    data = np.fromfile(str(path), dtype=np.uint8)
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error:   # OpenCV refuses what it cannot allocate or parse: that is "does not decode"
        img = None
    if img is None:
        return None
    img = _to_uint8(img, path)
    if img.ndim == 2 or img.shape[2] == 1:
        warnings.warn(f"{path}: greyscale image converted to RGB", ConversionWarning, stacklevel=3)
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        warnings.warn(f"{path}: alpha channel dropped", ConversionWarning, stacklevel=3)
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if data[:2].tobytes() == b"\xff\xd8" or path.suffix.lower() in {".tif", ".tiff", ".webp", ".png"}:
        img = apply_orientation(img, exif_orientation(path))
    return img


def _full_check(path: Path, jpeg: bool) -> bool:
    """Decode the whole file. For JPEG ask Pillow, which raises on a truncated stream where libjpeg in
    OpenCV only warns and fills the missing rows with grey."""
    if jpeg:
        try:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
            return True
        except ImportError:
            pass
        except Exception:
            return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        try:
            return decode_image(path) is not None
        except Exception:
            return False


def looks_complete(path: Path, full: bool = False) -> bool:
    """Cheap structural check (no decode) that `path` is a whole image: the JPEG ends with EOI, the PNG with
    IEND, the WebP/BMP size field matches the file. Falls back to a full decode when the structure is
    unusual (e.g. data appended after a JPEG's EOI) or when `full` is asked for."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - 64))
            tail = f.read(64)
    except OSError:
        return False
    if size == 0:
        return False
    jpeg = head[:2] == b"\xff\xd8"
    if full:
        return _full_check(path, jpeg)
    if jpeg:
        return b"\xff\xd9" in tail.rstrip(b"\x00\r\n ")[-2:] or _full_check(path, True)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" in tail[-12:] or _full_check(path, False)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return int.from_bytes(head[4:8], "little") + 8 <= size
    if head[:2] == b"BM" and len(head) >= 6:
        return int.from_bytes(head[2:6], "little") <= size
    return _full_check(path, False)
