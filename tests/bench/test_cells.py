from __future__ import annotations

from pathlib import Path

import numpy as np

from qcal.bench.cells import CellStore, key_of
from qcal.models.base import Detections


def test_cell_round_trip_and_damaged_file(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    dets = [Detections(np.array([[1, 2, 3, 4]], np.float32), np.array([0.5], np.float32), np.array([1])),
            Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))]
    k = key_of({"a": 1})
    assert store.load(k) is None
    store.save(k, dets)
    back = store.load(k)
    assert back is not None and len(back) == 2 and len(back[1]) == 0
    np.testing.assert_array_equal(back[0].boxes, dets[0].boxes)
    assert not list(tmp_path.glob("cells/.*"))          # no temporary file left behind
    (tmp_path / "cells" / f"{k}.npz").write_bytes(b"garbage")
    assert store.load(k) is None                        # recomputed, never trusted
    assert key_of({"a": 1}) != key_of({"a": 2})


def test_model_artifact_is_reused_only_for_the_same_key_and_bytes(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    store.model_path("m").write_bytes(b"model-bytes")
    store.record_model("m", "k1", {"calib_hash": "abc"})
    assert store.model_ready("m", "k1") and not store.model_ready("m", "k2")
    assert store.model_info("m")["calib_hash"] == "abc"
    store.model_path("m").write_bytes(b"changed")
    assert not store.model_ready("m", "k1")
