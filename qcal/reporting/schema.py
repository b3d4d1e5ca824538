"""The one report schema, `qcal.robustness/1`: what `qcal bench` writes (every precision x condition it measured)
and what `qcal quantize` writes (FP32 and its INT8 model on the "clean" condition when run with --eval), so
`qcal check` gates either report directly.

A report's precisions are rows and its conditions columns: `cells[precision][condition]` holds the metrics of
one slice (CELL_KEYS for a detector). `qcal quantize` adds its own sections (calibration, kept_in_float,
evaluation, ...) beside these; `qcal bench` adds more conditions, precisions and the comparisons between them.
A quantize report without an evaluation has `"cells": {}` and `"evaluation": null`: it loads, and `qcal check`
refuses to gate it, saying so (qcal.gate.check.NoEvaluationError).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

SCHEMA_PREFIX = "qcal.robustness/"
SCHEMA = f"{SCHEMA_PREFIX}1"

# The top-level keys of every qcal.robustness report, whichever command wrote it.
KEYS = ("schema", "qcal_version", "command", "model", "config", "config_hash", "task", "primary_metric", "metric",
        "eval", "conditions", "precisions", "cells", "latency_ms", "size_mb", "comparisons", "machine", "runtime",
        "seconds")
# The metrics of one detector slice (precision x condition).
CELL_KEYS = ("map50_95", "map50", "ece", "conf_gap", "detections", "agreement_map50_95", "rel_drop_vs_clean",
             "rel_drop_vs_fp32")
# The keys of every entry of `precisions` (a model file the report measured).
PRECISION_KEYS = ("name", "file", "sha256", "size_mb", "spec")

CLEAN = "clean"


def rel_drop(ref: float | None, x: float) -> float | None:
    """(ref - x) / ref rounded as reports store it; None where it is undefined (no reference, or one <= 0)."""
    if ref is None or not math.isfinite(ref) or ref <= 0:
        return None
    return round((ref - x) / ref, 4)


def clean_cells(accuracy: Mapping[str, Mapping[str, Any]], reference: str = "fp32") -> dict[str, Any]:
    """`cells` of a report measured on the clean condition only: precision -> {"clean": metrics}. `accuracy`
    holds each precision's map50_95, map50, ece, conf_gap, detections against the reference labels (for a
    fidelity evaluation, FP32's own confident detections on the same images, which is also the agreement with
    FP32 on the same condition)."""
    cells: dict[str, Any] = {}
    ref = accuracy.get(reference, {}).get("map50_95")
    for prec, a in accuracy.items():
        m = round(float(a["map50_95"]), 4)
        cell: dict[str, Any] = {"map50_95": m, "map50": round(float(a["map50"]), 4)}
        for k in ("ece", "conf_gap"):   # None where there is no detection to score
            if k in a:
                cell[k] = None if a[k] is None else round(float(a[k]), 4)
        if "detections" in a:
            cell["detections"] = int(a["detections"])
        cell["agreement_map50_95"] = round(float(a.get("agreement_map50_95", m)), 4)
        cell["rel_drop_vs_clean"] = rel_drop(m, m)
        cell["rel_drop_vs_fp32"] = rel_drop(None if ref is None else round(float(ref), 4), m)
        cells[prec] = {CLEAN: cell}
    return cells


def clean_report(*, task: str, precisions: Sequence[Mapping[str, Any]], evaluation: Mapping[str, Any] | None,
                 command: str | None = None) -> dict[str, Any]:
    """The schema's sections for a run that measured (or, without `evaluation`, only built) `precisions` on the
    clean condition: an `evaluation` is qcal.eval.evaluate.Evaluation.to_dict(). The caller adds qcal_version,
    model, config, config_hash, machine and seconds (KEYS), which it has already."""
    ev = evaluation
    return {
        "schema": SCHEMA,
        "command": command,
        "task": task, "primary_metric": "top1" if task == "classify" else "map50_95",
        "metric": None if ev is None else ev["metric"],
        "eval": None if ev is None else {"spec": ev.get("spec"), "set_hash": ev.get("set_hash"),
                                         "images": ev["images"], "reference_boxes": ev.get("reference_boxes")},
        "conditions": [{"name": CLEAN, "steps": []}],
        "precisions": [dict(p) for p in precisions],
        "cells": {} if ev is None else clean_cells(ev["accuracy"]),
        "latency_ms": {} if ev is None else
        {k: {m: round(float(v), 2) for m, v in t.items()} for k, t in ev["latency_ms"].items()},
        "size_mb": {str(p["name"]): p["size_mb"] for p in precisions},
        "comparisons": [],
        "runtime": {"cells": "ort", "device": "cpu"},
    }
