"""Overlap between two sets (e.g. calibration vs evaluation): the same source content or the same key.

Compares source digests (file bytes / video file + frame), so a degraded or resized copy of an evaluation
image still counts as shared. Different encodings of the same frame (a video frame vs a WebP of it) are not
detected: compare keys, or keep calibration and evaluation frame ranges apart.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from calib_sets.sample import CalibSet


@dataclass(frozen=True)
class Overlap:
    digest: str   # the shared source content ("" when matched by key only)
    key_a: str
    key_b: str


def _base_key(key: str) -> str:
    return key.split("@", 1)[0].split("#rep=", 1)[0]  # a degraded / repeated sample's key -> its source key


def overlap(a: CalibSet, b: CalibSet, by: Literal["content", "key", "both"] = "content") -> list[Overlap]:
    """Pairs (a sample of a, a sample of b) that share source content (`content`), a source key (`key`),
    or either (`both`); sorted by key_a. An empty list means the sets are disjoint."""
    out: set[Overlap] = set()
    if by in ("content", "both"):
        in_b: dict[str, list[str]] = defaultdict(list)
        for it in b.items():
            in_b[it.source_digest()].append(it.key)
        for it in a.items():
            out.update(Overlap(it.source_digest(), it.key, kb) for kb in in_b.get(it.source_digest(), []))
    if by in ("key", "both"):
        keys_b: dict[str, list[str]] = defaultdict(list)
        for it in b.items():
            keys_b[_base_key(it.key)].append(it.key)
        for it in a.items():
            out.update(Overlap("", it.key, kb) for kb in keys_b.get(_base_key(it.key), []))
    if by == "both":  # one entry per pair: drop key-only matches already found by content
        found = {(o.key_a, o.key_b) for o in out if o.digest}
        out = {o for o in out if o.digest or (o.key_a, o.key_b) not in found}
    return sorted(out, key=lambda o: (o.key_a, o.key_b))
