"""The content-hash scheme shared by CalibSet (calib_sets.sample) and its Manifest (calib_sets.manifest).

A leaf: the manifest verifies a set's hash without importing the CalibSet class, and the set builds its manifest
lazily, so the two modules do not import each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

Param = float | int | str
HASH_VERSION = "calib_sets/v1"  # bump when the meaning of a digest changes, so old caches stop matching


def set_hash(recipe: str, digests: Iterator[str] | Sequence[str]) -> str:
    """sha256 over the hash version, the recipe and every sample's digest, in order."""
    h = hashlib.sha256(f"{HASH_VERSION}\n{recipe}\n".encode())
    for d in digests:
        h.update(d.encode() + b"\n")
    return h.hexdigest()
