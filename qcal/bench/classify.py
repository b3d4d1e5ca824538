"""The robustness matrix for classifiers: top-1 and confidence calibration per (precision, condition) cell.

A cell holds each image's logits. Accuracy is top-1 against the evaluation set's class labels (an ImageFolder
source: `calib_sets.Source.image_folder`, label = the whole-image row's class), or, without labels, top-1 agreement
with FP32 on the clean image (fidelity). Per cell: top-1, `agreement_top1` (with FP32 on the same condition: what
quantization adds to the degradation's own loss), ECE of the top-1 probability (15 bins) and the confidence gap
(mean top-1 probability - accuracy; > 0 = over-confident), relative drops as for detectors. Calibration recipes
are compared per condition with a paired bootstrap interval of the top-1 difference over images and McNemar's
exact test (qcal.eval.paired).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qcal.bench.cells import CellOutput
from qcal.bench.matrix import rel_drop
from qcal.bench.spec import Precision
from qcal.eval.confidence import classifier_ece
from qcal.eval.paired import compare_paired

BASELINE = "int8-clean"


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)  # type: ignore[no-any-return]


def logits_matrix(cell: CellOutput) -> np.ndarray:
    """Per-image outputs (each 1 x C or C) -> N x C float64."""
    return np.stack([np.asarray(x, np.float64).reshape(-1) for x in cell])


def score_classifier(cells: dict[str, dict[str, CellOutput]], labels: np.ndarray | None
                     ) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, np.ndarray]]]:
    """(metrics per cell, per-image correctness per cell). labels None: the reference is FP32's clean top-1."""
    logits = {p: {c: logits_matrix(v) for c, v in row.items()} for p, row in cells.items()}
    reference = labels if labels is not None else logits["fp32"]["clean"].argmax(1)
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    correct: dict[str, dict[str, np.ndarray]] = {}
    for name, row in logits.items():
        metrics[name], correct[name] = {}, {}
        for cond, z in row.items():
            probs = softmax(z)
            ok = probs.argmax(1) == reference
            cal = classifier_ece(probs, reference)
            cell: dict[str, Any] = {"top1": round(float(ok.mean()), 4), "ece": round(cal.ece, 4),
                                    "conf_gap": round(float(probs.max(1).mean() - ok.mean()), 4)}
            if cond in logits.get("fp32", {}):
                cell["agreement_top1"] = round(float((probs.argmax(1) == logits["fp32"][cond].argmax(1)).mean()), 4)
            metrics[name][cond], correct[name][cond] = cell, ok
    for row_m in metrics.values():
        for cond, cell in row_m.items():
            cell["rel_drop_vs_clean"] = rel_drop(row_m.get("clean", {}).get("top1"), cell["top1"])
            cell["rel_drop_vs_fp32"] = rel_drop(metrics.get("fp32", {}).get(cond, {}).get("top1"), cell["top1"])
    return metrics, correct


def compare_classifier(correct: dict[str, dict[str, np.ndarray]], precisions: Sequence[Precision],
                       resamples: int) -> list[dict[str, Any]]:
    """Each static precision other than int8-clean vs int8-clean, per condition: top-1 difference with a 95%
    paired bootstrap interval over images and McNemar's p."""
    if BASELINE not in correct or resamples <= 0:
        return []
    out = []
    for p in precisions:
        if p.kind != "static" or p.name == BASELINE:
            continue
        for cond, ok in correct[p.name].items():
            c = compare_paired(ok, correct[BASELINE][cond], resamples=resamples, seed=0)
            out.append({"a": p.name, "b": BASELINE, "condition": cond, "diff": c.diff, "lo": c.ci_low,
                        "hi": c.ci_high, "resamples": resamples, "significant": c.verdict != "within noise",
                        "mcnemar_p": round(c.mcnemar_p, 4)})
    return out
