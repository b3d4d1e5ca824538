"""The bootstrap's accumulation must equal pycocotools' own mAP on the full set of images."""

from __future__ import annotations

import numpy as np
import pytest

from qcal.eval.bootstrap import bootstrap_diff, image_evals
from qcal.eval.detection import coco_map
from qcal.models.base import Detections


def _random_case(seed: int, n_images: int = 12, nc: int = 3) -> tuple[list[Detections], list[Detections]]:
    rng = np.random.default_rng(seed)
    gt, pred = [], []
    for i in range(n_images):
        k = int(rng.integers(0, 6)) if i % 5 else 0            # some images without ground truth
        xy = rng.uniform(0, 500, (k, 2))
        wh = rng.uniform(10, 120, (k, 2))
        boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
        cls = rng.integers(0, nc, k)
        gt.append(Detections(boxes, np.ones(k, np.float32), cls))
        jitter = rng.normal(0, rng.uniform(1, 15), boxes.shape).astype(np.float32)
        keep = rng.random(k) > 0.2                              # some misses
        fp_n = int(rng.integers(0, 4))                          # some false positives
        fxy = rng.uniform(0, 500, (fp_n, 2))
        fboxes = np.concatenate([fxy, fxy + rng.uniform(10, 80, (fp_n, 2))], 1).astype(np.float32)
        pb = np.concatenate([(boxes + jitter)[keep], fboxes]).astype(np.float32)
        ps = rng.uniform(0.05, 1.0, len(pb)).astype(np.float32)
        pc = np.concatenate([cls[keep], rng.integers(0, nc, fp_n)]).astype(np.int64)
        pred.append(Detections(pb, ps, pc))
    return gt, pred


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_full_set_equals_pycocotools(seed: int) -> None:
    gt, pred = _random_case(seed)
    hw = [(640, 640)] * len(gt)
    ref = coco_map(gt, pred, hw, 3)
    ev = image_evals(gt, pred, hw, 3)
    m5095, m50 = ev.map()
    assert m5095 == pytest.approx(ref.map50_95, abs=1e-12)
    assert m50 == pytest.approx(ref.map50, abs=1e-12)


def test_resample_with_repeats_equals_pycocotools_on_duplicated_images() -> None:
    gt, pred = _random_case(7, n_images=6)
    hw = [(640, 640)] * 6
    idx = [0, 0, 3, 5, 5, 5, 2]
    ref = coco_map([gt[i] for i in idx], [pred[i] for i in idx], [hw[i] for i in idx], 3)
    assert image_evals(gt, pred, hw, 3).map(idx)[0] == pytest.approx(ref.map50_95, abs=1e-12)


def test_bootstrap_interval_of_identical_models_is_zero_and_of_better_model_positive() -> None:
    gt, pred = _random_case(11, n_images=30)
    hw = [(640, 640)] * 30
    a = image_evals(gt, pred, hw, 3)
    iv = bootstrap_diff(a, a, resamples=100)
    assert iv.mean == 0 and iv.lo == 0 and iv.hi == 0 and not iv.significant
    perfect = image_evals(gt, [Detections(g.boxes, np.ones(len(g), np.float32), g.classes) for g in gt], hw, 3)
    better = bootstrap_diff(perfect, a, resamples=200)
    assert better.mean > 0.1 and better.lo > 0 and better.significant


def test_no_predictions_gives_zero_map() -> None:
    gt, _ = _random_case(3, n_images=5)
    empty = [Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))] * 5
    assert image_evals(gt, empty, [(640, 640)] * 5, 3).map()[0] == 0.0
