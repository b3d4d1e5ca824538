"""Experiment (issue 21 follow-up): qcal quantize with ONNX Runtime's reduce_range weight grid instead of qcal's.

Without VNNI, ort-cpu quantizes weights to 7 bits. qcal's grid is -63..63 with scale absmax/63; ONNX Runtime's
quantizer (what qcal shipped before the one-engine change) uses -64..64 with scale absmax/64: 129 levels, as safe
from the u8 x s8 pair saturation (255 * 64 * 2 = 32640 < 32767). This runs the normal CLI with only
`quantize_weight` swapped for the -64..64 grid (the passes' W7A8 simulation is NOT changed: an experiment, not a
recipe), so the two grids can be compared on the same frames:

    YOLO_OFFLINE=1 .venv/bin/python benchmarks/w7_grid_experiment.py quantize best.pt \\
        --calib 'bundled:vtest[0:320:5]' --calib-size 64 --trust-checkpoint --no-progress -o /tmp/oe_exp/plain
    .venv/bin/python benchmarks/one_engine_conditions.py --before /tmp/oe_before --after /tmp/oe_exp \\
        --recipes plain --conditions jpeg_heavy,blur_medium --reps 100 --out /tmp/exp_cond
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ort_grid(w: Any, axis: int | None, *, bits: int = 8, scale: Any = None, codes: Any = None) -> Any:
    from qcal.quant.weights import quantize_weight

    if bits != 7:
        return quantize_weight(w, axis, bits=bits, scale=scale, codes=codes)
    w = np.asarray(w, np.float32)
    red = tuple(i for i in range(w.ndim) if i != axis) if axis is not None else tuple(range(w.ndim))
    absmax = np.abs(w).max(axis=red).astype(np.float64)
    s = np.where(absmax > 0, absmax / 64.0, 1.0).astype(np.float32).reshape(-1)
    view = [1] * w.ndim
    if axis is not None:
        view[axis] = -1
    c = np.clip(np.rint(w.astype(np.float64) / s.reshape(view).astype(np.float64)), -64, 64)
    return quantize_weight(w, axis, bits=8, scale=s, codes=c)


if __name__ == "__main__":
    import qcal.calibration.pipeline as pipeline
    from qcal.cli import main

    pipeline.quantize_weight = ort_grid   # type: ignore[assignment]
    sys.exit(main())
