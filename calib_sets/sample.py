"""Sample and CalibSet: a lazy, re-iterable, immutable sequence of images with a content hash.

A CalibSet holds `Item`s: a description of each sample (key, source, index, condition) plus two callables,
`load()` (decode + transform the pixels) and `digest()` (a content hash computed from the source bytes and the
transforms, without decoding). Iterating decodes one sample at a time, so memory does not grow with the set.

A stream can meet a bad item only when it decodes it (a corrupt frame mid-video, a file that changed after it
was listed): iteration then skips that item, warns once, and records it in `skipped` (a list that every set
derived by take/subset/map/repeat shares, so the set a caller holds sees what a pass met). Only when not one
item decodes does iteration raise.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import Any

import cv2
import numpy as np

from calib_sets.errors import CalibSetError, EmptyCalibSetError, SkippedFilesWarning, UndecodableImageError
from calib_sets.hashing import Param, set_hash
from calib_sets.manifest import Manifest, ManifestEntry


@dataclass(frozen=True)
class Sample:
    image: np.ndarray                 # HxWx3 uint8 RGB
    key: str                          # stable unique id: file name or "video.avi#frame=12"
    source: str                       # the source path / name
    index: int                        # index within its source (frame number or file order)
    condition: str = "clean"          # degradation name, "clean" if none
    params: Mapping[str, Param] = field(default_factory=dict)  # degradation parameters in explicit units
    labels: np.ndarray | None = None  # YOLO labels (N x 5: cls cx cy w h, normalised) when the source has them


def memo(fn: Callable[[], str]) -> Callable[[], str]:
    """Cache a zero-argument digest: file bytes are read once per item, however often the hash is asked."""
    return lru_cache(maxsize=1)(fn)


def canonical(params: Mapping[str, object]) -> str:
    """One spelling of a parameter dict (sorted keys, repr-exact floats) so that hashes are stable."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Item:
    """A not-yet-loaded sample. `digest` covers the sample's content (source bytes + transforms);
    `base_digest` only the untransformed source content, which is what an overlap check compares."""

    key: str
    source: str
    index: int
    load: Callable[[], Sample]
    digest: Callable[[], str]
    base_digest: Callable[[], str] | None = None
    condition: str = "clean"
    params: Mapping[str, Param] = field(default_factory=dict)
    labels: Callable[[], np.ndarray | None] | None = None  # read labels without decoding the image

    def source_digest(self) -> str:
        return (self.base_digest or self.digest)()

    def transformed(self, fn: Callable[[Sample], Sample], tag: str, *, key: str | None = None,
                    condition: str | None = None, params: Mapping[str, Param] | None = None) -> Item:
        """A new item whose pixels are fn(parent sample); its digest chains the parent's digest and `tag`."""
        parent_load, parent_digest = self.load, self.digest
        return replace(self, key=key or self.key, load=lambda: fn(parent_load()),
                       digest=memo(lambda: sha256_text(f"{parent_digest()}|{tag}")),
                       base_digest=self.base_digest or self.digest,
                       condition=self.condition if condition is None else condition,
                       params=self.params if params is None else params)


class CalibSet:
    """Items are described up front; pixels are decoded only while iterating, one sample at a time.

    `recipe` is a canonical, path-independent description of the transforms applied to the whole set (e.g. a
    degradation mix and its seed); it enters the content hash together with every item's digest.
    """

    def __init__(self, items: Sequence[Item], recipe: str = "", skipped: Sequence[str] = ()) -> None:
        self._items = tuple(items)
        self.recipe = recipe
        # a list passed in is shared, not copied: derived sets and their parent record skips in one place
        self.skipped: list[str] = skipped if isinstance(skipped, list) else list(skipped)
        self._hash: str | None = None

    # --- sequence protocol -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Sample]:
        yielded = 0
        for it in self._items:
            try:
                sample = it.load()
            except UndecodableImageError as e:
                self._skip(it, e)
                continue
            yielded += 1
            yield sample
        if self._items and not yielded:
            raise EmptyCalibSetError(f"not one of the {len(self._items)} samples decodes (first: "
                                     f"{self.skipped[0] if self.skipped else self._items[0].key}); check the "
                                     "files (re-copy or re-encode them) or give another source.")

    def _skip(self, it: Item, e: Exception) -> None:
        why = f"{it.key}: {e}"
        if why not in self.skipped:
            self.skipped.append(why)
            warnings.warn(f"skipped an input that does not decode: {why} (CalibSet.skipped; in qcal's "
                          "report.json: 'skipped' or 'evaluation.skipped')", SkippedFilesWarning, stacklevel=3)

    def __getitem__(self, i: int) -> Sample:
        return self._items[i].load()

    def __repr__(self) -> str:
        conds = sorted({it.condition for it in self._items})
        return f"CalibSet({len(self)} samples, conditions={conds}, skipped={len(self.skipped)})"

    def __or__(self, other: CalibSet) -> CalibSet:
        if not isinstance(other, CalibSet):
            return NotImplemented
        recipe = "|".join(r for r in (self.recipe, other.recipe) if r)
        return CalibSet(self._items + other._items, recipe, self.skipped + other.skipped)

    # --- derived sets (all lazy) ---------------------------------------------------------------------------
    def take(self, n: int) -> CalibSet:
        if n < 0:
            raise CalibSetError(f"take({n}): n must be >= 0.")
        return CalibSet(self._items[:n], self.recipe, self.skipped)

    def subset(self, indices: Sequence[int]) -> CalibSet:
        bad = [i for i in indices if not -len(self) <= i < len(self)]
        if bad:
            raise CalibSetError(f"subset: indices {bad[:5]} are out of range for a set of {len(self)} samples.")
        return CalibSet([self._items[i] for i in indices], self.recipe, self.skipped)

    def repeat(self, n: int) -> CalibSet:
        """Cycle the set to exactly n items (repeats get '#rep=r' keys), e.g. a 512-sample mix from 480 frames;
        each repeat can then receive a different degradation."""
        if not self._items:
            raise CalibSetError("repeat: the set is empty.")
        out = []
        for j in range(n):
            it = self._items[j % len(self._items)]
            rep = j // len(self._items)
            if rep == 0:
                out.append(it)
                continue
            key = f"{it.key}#rep={rep}"
            out.append(it.transformed(partial(_rekey, key=key), f"rep={rep}", key=key))
        return CalibSet(out, self.recipe, self.skipped)

    def map(self, fn: Callable[[Sample], Sample], tag: str) -> CalibSet:
        """Apply a deterministic per-sample transform lazily; `tag` must describe it fully (it is hashed)."""
        return CalibSet([it.transformed(fn, tag) for it in self._items], self.recipe, self.skipped)

    def augment(self, aug: Any) -> CalibSet:
        """`aug.apply(self)`: e.g. a learned transformation, cs.augment(calib_sets.Learned("metaaug.safetensors"))."""
        return aug.apply(self)  # type: ignore[no-any-return]

    def resized(self, imgsz: int) -> CalibSet:
        """Scale every image so that its long side is `imgsz` px (aspect kept, INTER_AREA when shrinking).
        Resize before degrading: a blur sigma or noise grain is then measured in the pixels the model sees."""
        if imgsz <= 0:
            raise CalibSetError(f"resized({imgsz}): imgsz must be a positive number of pixels.")
        return self.map(lambda s: replace(s, image=resize_long_side(s.image, imgsz)), f"resize={imgsz}")

    # --- inspection ------------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return [it.key for it in self._items]

    def items(self) -> list[Item]:
        return list(self._items)

    def conditions(self) -> list[str]:
        return [it.condition for it in self._items]

    @property
    def content_hash(self) -> str:
        """sha256 over the recipe and every sample's digest, in order. Digests come from file bytes (or the
        video file + frame number) and the transforms, never from paths, so the hash is the same on every
        machine and changes when a pixel, a degradation parameter, a seed or the order changes."""
        if self._hash is None:
            self._hash = set_hash(self.recipe, (it.digest() for it in self._items))
        return self._hash

    @property
    def manifest(self) -> Manifest:
        entries = tuple(ManifestEntry(it.key, it.source, it.index, it.condition, dict(it.params), it.digest(),
                                      it.source_digest()) for it in self._items)
        return Manifest(self.content_hash, self.recipe, entries, tuple(self.skipped))


def _rekey(s: Sample, key: str) -> Sample:
    return replace(s, key=key)


def resize_long_side(img: np.ndarray, imgsz: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = imgsz / max(h, w)
    if scale == 1.0:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
