"""Image files to lazy Items: the structural check, keys, labels, the skipped-files warning.

The leaf under calib_sets.sources (the Source constructors) and calib_sets.datasets (YOLO/COCO/ImageFolder
layouts): both list and check files with these, so neither imports the other's module for it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from calib_sets.decode import IMAGE_EXTS, decode_image, file_digest, looks_complete, too_large
from calib_sets.errors import SkippedFilesWarning, UndecodableImageError
from calib_sets.sample import Item, Sample, memo

Check = Literal["header", "full", "none"]
LabelReader = Callable[[], "np.ndarray | None"]


def load_image(path: Path, key: str, source: str, index: int, labels: LabelReader | None = None) -> Sample:
    img = decode_image(path)
    if img is None:
        raise UndecodableImageError(f"{path} does not decode as an image (truncated or not an image); "
                                    "remove it or replace it with a valid file.")
    return Sample(img, key, source, index, labels=labels() if labels is not None else None)


def image_item(path: Path, key: str, source: str, index: int, labels: LabelReader | None = None) -> Item:
    return Item(key, source, index, partial(load_image, path, key, source, index, labels),
                memo(partial(file_digest, path)), labels=labels)


def _keys_for(paths: Sequence[Path], root: Path | None) -> list[str]:
    """Relative path under a folder root; otherwise the file name, or the full path where names collide."""
    if root is not None:
        return [p.relative_to(root).as_posix() for p in paths]
    names = [p.name for p in paths]
    dup = {n for n in names if names.count(n) > 1}
    return [str(p) if p.name in dup else p.name for p in paths]


def checked_items(paths: Sequence[Path], source: str, check: Check, root: Path | None = None,
                  labels: Callable[[Path], LabelReader | None] | None = None,
                  indices: Sequence[int] | None = None) -> tuple[list[Item], list[str]]:
    """Items for the files that pass `check`; the others are returned as skipped (with a warning)."""
    items, skipped = [], []
    for i, (p, key) in enumerate(zip(paths, _keys_for(paths, root), strict=True)):
        big = too_large(p) if check != "none" else None
        if big or (check != "none" and not looks_complete(p, full=check == "full")):
            skipped.append(f"{p} ({big})" if big else str(p))
            continue
        items.append(image_item(p, key, source, indices[i] if indices is not None else i,
                                labels(p) if labels is not None else None))
    if skipped:
        shown = name_some(skipped)
        warnings.warn(f"{source}: skipped {len(skipped)} unreadable image(s) (truncated, too large or not images): {shown}; "
                      "they are listed in CalibSet.skipped (and qcal's report.json 'skipped')", SkippedFilesWarning,
                      stacklevel=3)
    return items, skipped


def name_some(names: Sequence[str], n: int = 10) -> str:
    """The first n names, then how many more: what a message about many files shows."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def list_images(root: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def frame_number(path: Path) -> int:
    m = re.search(r"(\d+)$", path.stem)
    return int(m.group(1)) if m else -1
