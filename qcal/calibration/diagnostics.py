"""Is the calibration set big enough? Bootstrap spread of each tensor's range at n/4, n/2 and n samples
(calib_sets.bootstrap_spread over the per-sample max |x| the calibration pass recorded), and the set's
coverage of conditions and classes."""

from __future__ import annotations

from typing import Any

import numpy as np

import calib_sets
from calib_sets.diagnostics import bootstrap_spread
from qcal.calibration.calibrate import CalibrationStats


def range_stability(stats: CalibrationStats, *, tol: float = 0.05, top: int = 10, seed: int = 0) -> dict[str, Any]:
    """Relative width of the 90% bootstrap interval of each tensor's max |x| (what a range observer keys on).
    A spread still falling from n/2 to n says: add samples."""
    v = stats.per_sample_absmax
    if v is None or v.shape[0] < 4:
        return {"samples": int(stats.samples), "note": "fewer than 4 samples: no bootstrap"}
    names = list(stats.ranges)
    bs = bootstrap_spread(v, fractions=(0.25, 0.5, 1.0), n_boot=200, seed=seed, reduce="max")
    order = np.argsort(-bs.spread[-1])[:top]
    return {
        "sizes": list(bs.sizes),
        "tol": tol,
        "stable_fraction": [round(float(np.mean(s < tol)), 3) for s in bs.spread],
        "median_spread": [round(float(np.median(s)), 4) for s in bs.spread],
        "least_stable": [{"tensor": names[j], "spread": [round(float(bs.spread[k, j]), 4) for k in range(3)]}
                         for j in order],
    }


def coverage(cs: calib_sets.CalibSet) -> dict[str, Any]:
    return calib_sets.coverage(cs).to_dict()
