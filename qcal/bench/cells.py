"""Resumable work: every model artifact and every (precision, condition) cell is stored under a content key.

A killed `qcal bench` run restarts where it stopped: a cell whose key (model file bytes, condition steps,
evaluation set content, post-processing thresholds, qcal version) is already on disk is loaded, not recomputed.
Keys are content hashes, so a changed model, image or condition can never reuse a stale cell. Files are written
to a temporary name and renamed: a kill leaves either the whole cell or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from exporters.quant_table import atomic_write_text
from qcal.models.base import Detections


def key_of(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


CellOutput = list[Detections] | list[np.ndarray]   # a detector's detections, or a classifier's logits, per image


class CellStore:
    """Per cell, in OUT/cells/<key>.npz, the detections (detectors) or the logits (classifiers) of every image;
    a small JSON index of model artifacts in OUT/models/."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.cells = self.root / "cells"
        self.models = self.root / "models"
        self.cells.mkdir(parents=True, exist_ok=True)
        self.models.mkdir(parents=True, exist_ok=True)

    # --- detections per cell ----------------------------------------------------------------------------------
    def load(self, key: str) -> CellOutput | None:
        p = self.cells / f"{key}.npz"
        if not p.is_file():
            return None
        try:
            z = np.load(p)
            if "logits" in z.files:
                return list(z["logits"])
            counts, boxes, scores, classes = z["counts"], z["boxes"], z["scores"], z["classes"]
        except Exception:   # a damaged file (disk full, foreign file) is recomputed, never trusted
            return None
        out, start = [], 0
        for n in counts.tolist():
            out.append(Detections(boxes[start:start + n], scores[start:start + n], classes[start:start + n]))
            start += n
        return out

    def save(self, key: str, dets: CellOutput) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.cells, prefix=f".{key}.", suffix=".npz")
        os.close(fd)
        try:
            if dets and isinstance(dets[0], np.ndarray):
                np.savez(tmp, logits=np.stack([np.asarray(x, np.float32) for x in dets]))
            else:
                det: list[Detections] = dets  # type: ignore[assignment]
                cat = lambda xs, shape, dt: np.concatenate(xs) if xs else np.zeros(shape, dt)  # noqa: E731
                np.savez(tmp, counts=np.array([len(d) for d in det], np.int64),
                         boxes=cat([d.boxes for d in det], (0, 4), np.float32),
                         scores=cat([d.scores for d in det], (0,), np.float32),
                         classes=cat([d.classes for d in det], (0,), np.int64))
            os.replace(tmp, self.cells / f"{key}.npz")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- model artifacts ----------------------------------------------------------------------------------------
    def model_path(self, name: str) -> Path:
        return self.models / f"{name}.onnx"

    def model_ready(self, name: str, key: str) -> bool:
        """The artifact exists, was built for this key, and its bytes are the ones recorded."""
        info = self._index().get(name)
        p = self.model_path(name)
        return bool(info and info.get("key") == key and p.is_file() and file_sha256(p) == info.get("sha256"))

    def model_info(self, name: str) -> dict[str, Any]:
        return dict(self._index().get(name, {}))

    def record_model(self, name: str, key: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        index = self._index()
        index[name] = {"key": key, "sha256": file_sha256(self.model_path(name)), **(extra or {})}
        atomic_write_text(self.models / "index.json", json.dumps(index, indent=1, sort_keys=True))
        return index[name]  # type: ignore[no-any-return]

    def _index(self) -> dict[str, Any]:
        p = self.models / "index.json"
        if not p.is_file():
            return {}
        try:
            return json.loads(p.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
        except json.JSONDecodeError:
            return {}
