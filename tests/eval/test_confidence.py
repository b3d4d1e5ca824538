from __future__ import annotations

import numpy as np
import pytest

from qcal.eval.confidence import binned_ece, classifier_ece, detection_ece, match_detections
from qcal.models.base import Detections


def _d(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                      np.array(classes, np.int64))


def test_greedy_matching_takes_highest_score_first_and_respects_class() -> None:
    gt = _d([[0, 0, 10, 10]], [1], [0])
    pred = _d([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10]], [0.5, 0.9, 0.99], [0, 0, 1])
    # the 0.99 box has the wrong class; 0.9 (IoU 0.9) is matched first, the duplicate 0.5 box is not
    assert match_detections(gt, pred).tolist() == [False, True, False]


def test_ece_zero_when_scores_equal_accuracy_and_gap_sign() -> None:
    conf = np.array([0.75] * 4 + [0.25] * 4)
    ok = np.array([1, 1, 1, 0] + [1, 0, 0, 0], bool)
    assert binned_ece(conf, ok).ece == pytest.approx(0.0)
    over = binned_ece(np.full(10, 0.9), np.zeros(10, bool))
    assert over.ece == pytest.approx(0.9) and over.gap == pytest.approx(0.9)
    under = binned_ece(np.full(10, 0.3), np.ones(10, bool))
    assert under.gap == pytest.approx(-0.7)


def test_detection_ece_counts_only_scores_above_min() -> None:
    gt = [_d([[0, 0, 10, 10]], [1], [0])]
    pred = [_d([[0, 0, 10, 10], [50, 50, 60, 60]], [0.8, 0.05], [0, 0])]
    cal = detection_ece(gt, pred, min_score=0.1)
    assert cal.n == 1 and cal.ece == pytest.approx(0.2)


def test_classifier_ece() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    cal = classifier_ece(probs, np.array([0, 1, 1]))
    # bins: 0.9 correct, 0.6 wrong, 0.8 correct -> |0.9-1| + |0.6-0| + |0.8-1| over 3
    assert cal.ece == pytest.approx((0.1 + 0.6 + 0.2) / 3)
