"""Sample and CalibSet: a lazy, re-iterable, immutable sequence of images with a content hash."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Sample:
    image: np.ndarray                 # HxWx3 uint8 RGB
    key: str                          # stable unique id: file name or "video.avi#frame=12"
    source: str
    index: int
    condition: str = "clean"
    params: Mapping[str, float | int | str] = field(default_factory=dict)
    labels: np.ndarray | None = None  # YOLO labels (N x 5: cls cx cy w h, normalised) when the source has them


@dataclass(frozen=True)
class Item:
    """A not-yet-loaded sample: `load()` decodes it; `digest()` hashes its content cheaply (file bytes)."""

    key: str
    source: str
    index: int
    load: Callable[[], Sample]
    digest: Callable[[], str]


class CalibSet:
    """Items are described up front; pixels are decoded only while iterating, one sample at a time."""

    def __init__(self, items: Sequence[Item], recipe: str = "", skipped: Sequence[str] = ()) -> None:
        self._items = list(items)
        self.recipe = recipe
        self.skipped = list(skipped)
        self._hash: str | None = None

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Sample]:
        for it in self._items:
            yield it.load()

    def __or__(self, other: CalibSet) -> CalibSet:
        return CalibSet(self._items + other._items, f"{self.recipe}|{other.recipe}", self.skipped + other.skipped)

    def take(self, n: int) -> CalibSet:
        return CalibSet(self._items[:n], f"{self.recipe}[:{n}]", self.skipped)

    def subset(self, indices: Sequence[int]) -> CalibSet:
        return CalibSet([self._items[i] for i in indices], f"{self.recipe}[subset]", self.skipped)

    def keys(self) -> list[str]:
        return [it.key for it in self._items]

    def items(self) -> list[Item]:
        return list(self._items)

    @property
    def content_hash(self) -> str:
        """sha256 over every sample's content digest, in order, plus the recipe (independent of paths)."""
        if self._hash is None:
            h = hashlib.sha256(self.recipe.encode())
            for it in self._items:
                h.update(it.digest().encode())
            self._hash = h.hexdigest()
        return self._hash
