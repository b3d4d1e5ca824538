"""The manifest: what exactly is in a calibration set, written next to every artifact made from it.

JSON with one entry per sample (key, source, index, condition + params, digest) plus the files that were
skipped as unreadable and the set's content hash, which can be recomputed from the entries (`verify`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calib_sets.errors import CalibSetError, SourceNotFoundError
from calib_sets.hashing import HASH_VERSION, Param, set_hash


@dataclass(frozen=True)
class ManifestEntry:
    key: str
    source: str
    index: int
    condition: str
    params: Mapping[str, Param]
    digest: str         # this sample's content (source bytes + transforms)
    source_digest: str  # the untransformed source content (what overlap checks compare)


@dataclass(frozen=True)
class Manifest:
    content_hash: str
    recipe: str
    entries: tuple[ManifestEntry, ...]
    skipped: tuple[str, ...] = ()
    version: str = HASH_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)  # free-form notes (e.g. the command that built it)

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> list[str]:
        return [e.key for e in self.entries]

    def conditions(self) -> dict[str, int]:
        return dict(sorted(Counter(e.condition for e in self.entries).items()))

    def verify(self) -> bool:
        """True when the stored content hash matches the entries (nothing was edited by hand)."""
        return set_hash(self.recipe, [e.digest for e in self.entries]) == self.content_hash

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "content_hash": self.content_hash, "recipe": self.recipe,
                "n": len(self.entries), "conditions": self.conditions(), "skipped": list(self.skipped),
                "extra": dict(self.extra),
                "samples": [{"key": e.key, "source": e.source, "index": e.index, "condition": e.condition,
                             "params": dict(e.params), "digest": e.digest, "source_digest": e.source_digest}
                            for e in self.entries]}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Manifest:
        try:
            entries = tuple(ManifestEntry(str(s["key"]), str(s["source"]), int(s["index"]), str(s["condition"]),
                                          dict(s["params"]), str(s["digest"]), str(s["source_digest"]))
                            for s in d["samples"])
            return Manifest(str(d["content_hash"]), str(d["recipe"]), entries, tuple(d.get("skipped", ())),
                            str(d.get("version", HASH_VERSION)), dict(d.get("extra", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise CalibSetError(f"manifest is malformed ({type(e).__name__}: {e}); write it with "
                                "Manifest.write().") from e

    def write(self, path: str | Path) -> Path:
        """Write atomically (a temporary file in the same folder, then rename): a reader never sees half a
        manifest, even if the process dies while writing."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @staticmethod
    def read(path: str | Path) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise SourceNotFoundError(f"manifest {path} does not exist; write one with cs.manifest.write(path).")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CalibSetError(f"manifest {path} is not valid JSON ({e}); rewrite it.") from e
        return Manifest.from_dict(data)
