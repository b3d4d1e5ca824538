"""Confidence calibration of detections: does a score of 0.8 mean 80% of such detections are right?

Each detection (score >= min_score) is matched greedily, highest score first, to an unmatched ground-truth box
of its class at IoU >= iou; matched = correct. Scores are binned into equal-width bins on [min_score, 1]:
ECE = sum_b (n_b / N) |mean score_b - fraction correct_b|. The signed gap (mean score - fraction correct over
all detections) says which way: > 0 over-confident, < 0 under-confident. For classifiers the same binning
applies to top-1 probability vs top-1 correctness (`classifier_ece`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qcal.models.base import Detections


@dataclass(frozen=True)
class Calibration:
    ece: float
    gap: float            # mean confidence - accuracy; > 0 over-confident
    n: int
    bins: tuple[tuple[float, float, int], ...]   # (mean score, fraction correct, count) per non-empty bin

    def to_dict(self) -> dict[str, object]:
        return {"ece": self.ece, "gap": self.gap, "n": self.n, "bins": [list(b) for b in self.bins]}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N,4) and (M,4) xyxy boxes -> (N, M)."""
    if a.size == 0 or b.size == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def match_detections(gt: Detections, pred: Detections, iou: float = 0.5) -> np.ndarray:
    """Correctness (bool per detection, in pred's order) by greedy matching, highest score first."""
    correct = np.zeros(len(pred), bool)
    if len(pred) == 0 or len(gt) == 0:
        return correct
    ious = box_iou(pred.boxes.astype(np.float64), gt.boxes.astype(np.float64))
    ious[pred.classes[:, None] != gt.classes[None, :]] = 0.0
    taken = np.zeros(len(gt), bool)
    for d in np.argsort(-pred.scores, kind="mergesort"):
        cand = np.where(~taken & (ious[d] >= iou))[0]
        if cand.size:
            g = cand[np.argmax(ious[d, cand])]
            taken[g] = True
            correct[d] = True
    return correct


def binned_ece(conf: np.ndarray, correct: np.ndarray, *, bins: int = 10, lo: float = 0.0) -> Calibration:
    conf = np.asarray(conf, float)
    correct = np.asarray(correct, bool)
    if conf.size == 0:
        return Calibration(float("nan"), float("nan"), 0, ())
    edges = np.linspace(lo, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, bins - 1)
    ece = 0.0
    rows = []
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        s, a = float(conf[m].mean()), float(correct[m].mean())
        ece += m.sum() / conf.size * abs(s - a)
        rows.append((round(s, 4), round(a, 4), int(m.sum())))
    return Calibration(float(ece), float(conf.mean() - correct.mean()), int(conf.size), tuple(rows))


def detection_ece(gt: Sequence[Detections], pred: Sequence[Detections], *, iou: float = 0.5,
                  min_score: float = 0.1, bins: int = 10) -> Calibration:
    """ECE of detection scores against correctness (matched to a gt box of the same class at IoU >= iou)."""
    confs, oks = [], []
    for g, p in zip(gt, pred, strict=True):
        ok = match_detections(g, p, iou)
        keep = p.scores >= min_score
        confs.append(p.scores[keep])
        oks.append(ok[keep])
    return binned_ece(np.concatenate(confs) if confs else np.zeros(0),
                      np.concatenate(oks) if oks else np.zeros(0, bool), bins=bins, lo=min_score)


def classifier_ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> Calibration:
    """Top-1 ECE of a classifier: probs (N, C) softmax outputs, labels (N,)."""
    top = probs.argmax(1)
    return binned_ece(probs.max(1), top == labels, bins=bins)
