"""Bootstrap confidence intervals of COCO mAP over images.

pycocotools evaluates every (category, image) pair once (`COCOeval.evaluate`); mAP is then an accumulation over
a set of images. To resample images with replacement we keep those per-image results and redo only the
accumulation for each resample, exactly as `COCOeval.accumulate` does for area "all" and 100 detections
(mergesort by score, monotone precision envelope, 101 recall points). `ImageEvals.map(all images)` equals
pycocotools' own stats[0]/stats[1] (tested), so the interval is around the number the report prints.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qcal.models.base import Detections

_REC_THRS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class _PerImage:
    scores: np.ndarray      # (D,) detection scores, sorted descending, at most 100
    matched: np.ndarray     # (T, D) bool: detection matched a gt at IoU threshold t
    ignored: np.ndarray     # (T, D) bool: detection ignored (matched a crowd/ignored gt)
    n_gt: int               # gt boxes that count (not ignored)


@dataclass(frozen=True)
class ImageEvals:
    """Per-category, per-image evaluation results of one (ground truth, predictions) pair of sets."""

    per_cat: tuple[tuple[_PerImage | None, ...], ...]   # [category][image]
    images: int

    def map(self, indices: Sequence[int] | np.ndarray | None = None) -> tuple[float, float]:
        """(mAP50-95, mAP50) over the images at `indices` (repeats allowed); all images when None."""
        idx = np.arange(self.images) if indices is None else np.asarray(indices)
        ap = []   # per category: (T,) average precision over recall points
        for per_image in self.per_cat:
            chosen = [e for e in (per_image[i] for i in idx) if e is not None]
            if not chosen:
                continue
            n_gt = sum(e.n_gt for e in chosen)
            if n_gt == 0:
                continue
            scores = np.concatenate([e.scores for e in chosen])
            order = np.argsort(-scores, kind="mergesort")
            matched = np.concatenate([e.matched for e in chosen], axis=1)[:, order]
            ignored = np.concatenate([e.ignored for e in chosen], axis=1)[:, order]
            tp = np.cumsum(matched & ~ignored, axis=1, dtype=float)
            fp = np.cumsum(~matched & ~ignored, axis=1, dtype=float)
            rows = []
            for t in range(tp.shape[0]):
                rc = tp[t] / n_gt
                pr = tp[t] / (fp[t] + tp[t] + np.spacing(1))
                pr = np.maximum.accumulate(pr[::-1])[::-1] if pr.size else pr
                pos = np.searchsorted(rc, _REC_THRS, side="left")
                q = np.zeros(len(_REC_THRS))
                ok = pos < pr.size
                q[ok] = pr[pos[ok]]
                rows.append(q.mean())
            ap.append(rows)
        if not ap:
            return float("nan"), float("nan")
        a = np.asarray(ap)  # (K, T)
        return float(a.mean()), float(a[:, 0].mean())


def image_evals(gt: Sequence[Detections], pred: Sequence[Detections], image_hw: Sequence[tuple[int, int]],
                num_classes: int) -> ImageEvals:
    """Run pycocotools' per-image evaluation (area all, 100 detections) and keep its results."""
    from pycocotools.cocoeval import COCOeval

    from qcal.eval.detection import coco_objects

    coco, res = coco_objects(gt, pred, image_hw, num_classes)
    n = len(image_hw)
    if res is None:   # no predictions at all: every image contributes only its gt
        per_cat = []
        for k in range(num_classes):
            rows: list[_PerImage | None] = []
            for g in gt:
                n_gt = int(np.sum(g.classes == k))
                rows.append(_PerImage(np.zeros(0), np.zeros((10, 0), bool), np.zeros((10, 0), bool), n_gt)
                            if n_gt else None)
            per_cat.append(tuple(rows))
        return ImageEvals(tuple(per_cat), n)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, res, "bbox")
        ev.params.areaRng = [ev.params.areaRng[0]]        # "all" only: what mAP50-95 / mAP50 use
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
    cats = ev.params.catIds
    out = []
    for k in range(len(cats)):
        rows = []
        for i in range(n):
            e = ev.evalImgs[k * n + i]
            if e is None:
                rows.append(None)
                continue
            gt_ignore = np.asarray(e["gtIgnore"], bool)
            rows.append(_PerImage(np.asarray(e["dtScores"], float), np.asarray(e["dtMatches"]) > 0,
                                  np.asarray(e["dtIgnore"], bool), int(np.sum(~gt_ignore))))
        out.append(tuple(rows))
    return ImageEvals(tuple(out), n)


@dataclass(frozen=True)
class Interval:
    mean: float       # the difference on all images (not the bootstrap mean)
    lo: float
    hi: float
    resamples: int

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.lo > 0 or self.hi < 0

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"diff": self.mean, "lo": self.lo, "hi": self.hi, "resamples": self.resamples,
                "significant": self.significant}


def bootstrap_diff(a: ImageEvals, b: ImageEvals, *, resamples: int = 1000, level: float = 0.95,
                   seed: int = 0) -> Interval:
    """Percentile bootstrap interval of mAP50-95(a) - mAP50-95(b), resampling the same images for both."""
    if a.images != b.images:
        raise ValueError("both evaluations must cover the same images")
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for r in range(resamples):
        idx = rng.integers(0, a.images, a.images)
        diffs[r] = a.map(idx)[0] - b.map(idx)[0]
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1.0 - level) / 2
    lo, hi = (np.quantile(diffs, [alpha, 1 - alpha]) if diffs.size else (float("nan"), float("nan")))
    return Interval(a.map()[0] - b.map()[0], float(lo), float(hi), int(diffs.size))

