"""COCO-style detection metrics through pycocotools: mAP50-95 and mAP50 against real labels (YOLO-format
label files) or against the FP32 model's own detections (fidelity: pseudo-labels on clean images)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qcal.models.base import Detections


@dataclass(frozen=True)
class DetectionMetrics:
    map50_95: float
    map50: float
    images: int
    gt_boxes: int
    pred_boxes: int

    def to_dict(self) -> dict[str, float | int]:
        return {"map50_95": self.map50_95, "map50": self.map50, "images": self.images,
                "gt_boxes": self.gt_boxes, "pred_boxes": self.pred_boxes}


def coco_objects(gt: Sequence[Detections], pred: Sequence[Detections], image_hw: Sequence[tuple[int, int]],
                 num_classes: int) -> tuple[Any, Any]:
    """pycocotools' (COCO ground truth, loaded results) for the images; results None when nothing was detected."""
    from pycocotools.coco import COCO

    if not (len(gt) == len(pred) == len(image_hw)):
        raise ValueError("gt, pred and image_hw must have one entry per image")
    images = [{"id": i + 1, "height": int(h), "width": int(w)} for i, (h, w) in enumerate(image_hw)]
    anns: list[dict[str, object]] = []
    dets: list[dict[str, object]] = []
    for i, (g, p) in enumerate(zip(gt, pred, strict=True)):
        for b, c in zip(g.boxes, g.classes, strict=True):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
        for b, s, c in zip(p.boxes, p.scores, p.classes, strict=True):
            dets.append({"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
        res = coco.loadRes(dets) if dets else None
    return coco, res


def coco_map(gt: Sequence[Detections], pred: Sequence[Detections], image_hw: Sequence[tuple[int, int]],
             num_classes: int) -> DetectionMetrics:
    """mAP over images; gt[i] and pred[i] belong to image i (gt scores are ignored)."""
    from pycocotools.cocoeval import COCOeval

    coco, res = coco_objects(gt, pred, image_hw, num_classes)
    n_gt, n_pred = len(coco.dataset["annotations"]), sum(len(p) for p in pred)
    if n_gt == 0:
        return DetectionMetrics(float("nan"), float("nan"), len(image_hw), 0, n_pred)
    if res is None:
        return DetectionMetrics(0.0, 0.0, len(image_hw), n_gt, 0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary table
        ev = COCOeval(coco, res, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return DetectionMetrics(float(ev.stats[0]), float(ev.stats[1]), len(image_hw), n_gt, n_pred)


def pseudo_labels(dets: Detections, conf: float = 0.25) -> Detections:
    """The FP32 model's confident detections, used as ground truth for fidelity."""
    keep = dets.scores >= conf
    return Detections(dets.boxes[keep], dets.scores[keep], dets.classes[keep])


def load_yolo_labels(path: str | Path, image_hw: tuple[int, int]) -> Detections:
    """A YOLO label file (one `cls cx cy w h` line per box, normalised) as pixel xyxy boxes."""
    p = Path(path)
    h, w = image_hw
    rows = np.zeros((0, 5), np.float32)
    if p.is_file():
        text = p.read_text(encoding="utf-8").strip()
        if text:
            rows = np.array([[float(v) for v in line.split()[:5]] for line in text.splitlines() if line.strip()],
                            dtype=np.float32).reshape(-1, 5)
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
    return Detections(boxes, np.ones(len(rows), np.float32), rows[:, 0].astype(np.int64))
