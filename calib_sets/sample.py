"""Sample and CalibSet: a lazy, re-iterable, immutable sequence of images with a content hash.

A CalibSet holds `Item`s: a description of each sample (key, source, index, condition) plus two callables,
`load()` (decode + transform the pixels) and `digest()` (a content hash computed from the source bytes and the
transforms, without decoding). Iterating decodes one sample at a time, so memory does not grow with the set.

A stream can meet a bad item only when it decodes it (a corrupt frame mid-video, a file that changed after it
was listed): iteration then skips that item, warns once, and records it in `skipped` (a list that every set
derived by take/subset/map/repeat shares, so the set a caller holds sees what a pass met). Only when not one
item decodes does iteration raise.

Sources hold their items in a tuple. `repeat(n)` (and a mix, a map or a slice of a repeated set) holds a
`LazyItems` view instead: item i is made when it is asked for, so `repeat(10**12)` costs no memory and
`take(calib_size)` reads only the first items. What needs every item (a manifest, `items()`, the content hash)
refuses a view of more than EVERY_ITEM_LIMIT items with a RecipeError (SetTooLargeError) naming the repeat.
"""

from __future__ import annotations

import hashlib
import json
import operator
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from typing import Any, overload

import cv2
import numpy as np

from calib_sets.errors import (
    CalibSetError,
    EmptyCalibSetError,
    SetTooLargeError,
    SkippedFilesWarning,
    UndecodableImageError,
)
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


EVERY_ITEM_LIMIT = 100_000  # most items of a lazy view that items(), keys(), a manifest or the hash visit (~3 kB each)


class LazyItems(Sequence[Item]):
    """A read-only sequence of Items made on access (`_at(i)`), so its length costs no memory.
    `origin` names what made it large (e.g. 'repeat=1000000000000') for error messages."""

    def __init__(self, n: int, origin: str) -> None:
        self._n = n
        self.origin = origin

    def _at(self, i: int) -> Item:  # 0 <= i < len(self)
        raise NotImplementedError

    def names(self) -> set[str]:
        """The conditions its items can have, without visiting them."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> Item: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Item]: ...

    def __getitem__(self, i: int | slice) -> Item | Sequence[Item]:
        if isinstance(i, slice):
            return Sliced(self, range(self._n)[i])
        j = operator.index(i)
        j = j + self._n if j < 0 else j
        if not 0 <= j < self._n:
            raise IndexError(f"item {i} of a set of {self._n}")
        return self._at(j)

    def __iter__(self) -> Iterator[Item]:
        for j in range(self._n):
            yield self._at(j)


class Repeated(LazyItems):
    """base cycled to n items; repeats get '#rep=r' keys and digests that chain 'rep=r'."""

    def __init__(self, base: Sequence[Item], n: int) -> None:
        super().__init__(n, f"repeat={n}")
        self.base = base

    def _at(self, i: int) -> Item:
        rep, k = divmod(i, len(self.base))
        it = self.base[k]
        if rep == 0:
            return it
        key = f"{it.key}#rep={rep}"
        return it.transformed(partial(_rekey, key=key), f"rep={rep}", key=key)

    def names(self) -> set[str]:
        return _names(self.base)


class Mapped(LazyItems):
    """it.transformed(fn, tag) of every item of base."""

    def __init__(self, base: LazyItems, fn: Callable[[Sample], Sample], tag: str) -> None:
        super().__init__(len(base), base.origin)
        self.base, self.fn, self.tag = base, fn, tag

    def _at(self, i: int) -> Item:
        return self.base[i].transformed(self.fn, self.tag)

    def names(self) -> set[str]:
        return self.base.names()


class Sliced(LazyItems):
    """base[r] for a range r of its positions."""

    def __init__(self, base: LazyItems, r: range) -> None:
        super().__init__(len(r), base.origin)
        self.base, self.r = base, r

    def _at(self, i: int) -> Item:
        return self.base[self.r[i]]

    def names(self) -> set[str]:
        return {it.condition for it in self} if len(self) <= 4096 else self.base.names()


class Concat(LazyItems):
    """a followed by b."""

    def __init__(self, a: Sequence[Item], b: Sequence[Item]) -> None:
        origins = [s.origin for s in (a, b) if isinstance(s, LazyItems)]
        super().__init__(len(a) + len(b), " | ".join(origins))
        self.a, self.b = a, b

    def _at(self, i: int) -> Item:
        return self.a[i] if i < len(self.a) else self.b[i - len(self.a)]

    def names(self) -> set[str]:
        return _names(self.a) | _names(self.b)


def _names(items: Sequence[Item]) -> set[str]:
    return items.names() if isinstance(items, LazyItems) else {it.condition for it in items}


class CalibSet:
    """Items are described up front; pixels are decoded only while iterating, one sample at a time.

    `recipe` is a canonical, path-independent description of the transforms applied to the whole set (e.g. a
    degradation mix and its seed); it enters the content hash together with every item's digest.
    """

    def __init__(self, items: Sequence[Item], recipe: str = "", skipped: Sequence[str] = ()) -> None:
        self._items: Sequence[Item] = items if isinstance(items, LazyItems) else tuple(items)
        self.recipe = recipe
        # a list passed in is shared, not copied: derived sets and their parent record skips in one place
        self.skipped: list[str] = skipped if isinstance(skipped, list) else list(skipped)
        self._hash: str | None = None

    def _every(self, what: str) -> Sequence[Item]:
        """The items, for an operation that visits every one; a lazy view above the limit is refused."""
        its = self._items
        if isinstance(its, LazyItems) and len(its) > EVERY_ITEM_LIMIT:
            raise SetTooLargeError(
                f"{what} visits every item, and this set holds {len(its)} ({its.origin}); at most "
                f"{EVERY_ITEM_LIMIT} items of a repeated set are visited. Lower repeat, or take(n) first (calibration "
                "uses only the first calib_size items).")
        return its

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
        return f"CalibSet({len(self)} samples, conditions={sorted(_names(self._items))}, skipped={len(self.skipped)})"

    def __or__(self, other: CalibSet) -> CalibSet:
        if not isinstance(other, CalibSet):
            return NotImplemented
        recipe = "|".join(r for r in (self.recipe, other.recipe) if r)
        a, b = self._items, other._items
        items = Concat(a, b) if isinstance(a, LazyItems) or isinstance(b, LazyItems) else (*a, *b)
        return CalibSet(items, recipe, self.skipped + other.skipped)

    @property
    def lazy(self) -> bool:
        """True when items are made on access (a repeat, or a mix / map / slice of one)."""
        return isinstance(self._items, LazyItems)

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
        each repeat can then receive a different degradation. Lazy: no item is made before it is asked for."""
        if not self._items:
            raise CalibSetError("repeat: the set is empty.")
        try:
            count = operator.index(n)
        except TypeError:
            count = -1
        if isinstance(n, bool) or not 0 <= count <= sys.maxsize:
            raise CalibSetError(f"repeat({n!r}): n must be an integer from 0 to {sys.maxsize} (how many items to "
                                "cycle to).")
        return CalibSet(Repeated(self._items, count), self.recipe, self.skipped)

    def map(self, fn: Callable[[Sample], Sample], tag: str) -> CalibSet:
        """Apply a deterministic per-sample transform lazily; `tag` must describe it fully (it is hashed)."""
        its = self._items
        items = Mapped(its, fn, tag) if isinstance(its, LazyItems) else [it.transformed(fn, tag) for it in its]
        return CalibSet(items, self.recipe, self.skipped)

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
        return [it.key for it in self._every("keys()")]

    def items_view(self) -> Sequence[Item]:
        """The items without listing them: a tuple, or for a lazy set a LazyItems view (made on access)."""
        return self._items

    def items(self) -> list[Item]:
        return list(self._every("items()"))

    def conditions(self) -> list[str]:
        return [it.condition for it in self._every("conditions()")]

    @property
    def content_hash(self) -> str:
        """sha256 over the recipe and every sample's digest, in order. Digests come from file bytes (or the
        video file + frame number) and the transforms, never from paths, so the hash is the same on every
        machine and changes when a pixel, a degradation parameter, a seed or the order changes."""
        if self._hash is None:
            self._hash = set_hash(self.recipe, (it.digest() for it in self._every("the content hash")))
        return self._hash

    @property
    def manifest(self) -> Manifest:
        entries = tuple(ManifestEntry(it.key, it.source, it.index, it.condition, dict(it.params), it.digest(),
                                      it.source_digest()) for it in self._every("the manifest"))
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
