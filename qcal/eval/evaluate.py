"""FP32 vs INT8 evaluation of a detector in one run: fidelity mAP (FP32's confident detections as pseudo-labels),
detection-score calibration (ECE, confidence gap), latency median/p90, file size. `Evaluation` (what it returns;
on QuantResult.evaluation, re-exported by qcal.api) lives here, so this module does not import qcal.api back.
Per precision it holds what a clean cell of qcal bench's matrix holds (qcal.reporting.schema.CELL_KEYS), scored
the same way, so `qcal quantize --eval` writes a report `qcal check` gates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from qcal.calibration.calibrate import make_session
from qcal.eval.confidence import detection_ece
from qcal.eval.detection import coco_map, pseudo_labels
from qcal.eval.latency import measure_latencies
from qcal.models.base import Detections, ModelAdapter


@dataclass
class Evaluation:
    """FP32 vs INT8 on the evaluation images, measured in one run."""

    metric: str                       # "fidelity" (vs FP32 detections) or "labels"
    images: int
    # precision -> {"map50_95", "map50", "ece", "conf_gap" (None without detections), "detections"}
    accuracy: dict[str, dict[str, Any]]
    latency_ms: dict[str, dict[str, float]]  # precision -> {"median_ms": .., "p90_ms": ..}
    size_mb: dict[str, float]
    skipped: tuple[str, ...] = ()             # evaluation inputs that did not decode (named, with why)
    reference_boxes: int | None = None        # boxes of the reference (FP32's confident detections)
    set_hash: str | None = None               # content hash of the evaluation set
    spec: str | None = None                   # the evaluation set as given (None when passed as a CalibSet)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "images": self.images, "accuracy": self.accuracy,
                "latency_ms": self.latency_ms, "size_mb": self.size_mb, "skipped": list(self.skipped),
                "reference_boxes": self.reference_boxes, "set_hash": self.set_hash, "spec": self.spec}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def detect_all(adapter: ModelAdapter, model_path: Path, images: list[np.ndarray], threads: int,
               progress: bool, desc: str) -> list[Detections]:
    sess = make_session(Path(model_path).read_bytes(), threads)
    out = []
    for img in tqdm(images, desc=desc, unit="img", disable=not progress, leave=False):
        p = adapter.prepare(img)
        out.append(adapter.postprocess(sess.run(None, p.feeds), p))
    return out


def evaluate_detector(adapter: ModelAdapter, fp32_path: Path, int8_path: Path, images: list[np.ndarray], *,
                      latency_runs: int = 30, threads: int = 2, progress: bool = True) -> Evaluation:
    if not images:
        raise ValueError("no evaluation images")
    hw = [img.shape[:2] for img in images]
    nc = max(len(adapter.class_names), 1)
    fp = detect_all(adapter, fp32_path, images, threads, progress, "eval fp32")
    q = detect_all(adapter, int8_path, images, threads, progress, "eval int8")
    gt = [pseudo_labels(d) for d in fp]
    acc: dict[str, dict[str, Any]] = {}
    for name, dets in (("fp32", fp), ("int8", q)):   # scored as qcal.bench.matrix.score_cells scores a cell
        m, cal = coco_map(gt, dets, hw, nc), detection_ece(gt, dets)
        acc[name] = {"map50_95": float(m.map50_95), "map50": float(m.map50), "ece": _finite(cal.ece),
                     "conf_gap": _finite(cal.gap), "detections": int(m.pred_boxes)}
    lat = measure_latencies({"fp32": fp32_path, "int8": int8_path}, adapter.prepare(images[0]).feeds,
                            threads=threads, runs=latency_runs)
    size = {"fp32": Path(fp32_path).stat().st_size / 2**20, "int8": Path(int8_path).stat().st_size / 2**20}
    return Evaluation("fidelity", len(images), acc,
                      {k: {"median_ms": v.median_ms, "p90_ms": v.p90_ms} for k, v in lat.items()}, size,
                      reference_boxes=int(sum(len(g) for g in gt)))
