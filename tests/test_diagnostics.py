import numpy as np

from qcal.calibration.calibrate import CalibrationStats
from qcal.calibration.diagnostics import range_stability
from qcal.reporting.report import report_markdown


def _stats(per_sample: np.ndarray) -> CalibrationStats:
    names = [f"t{i}" for i in range(per_sample.shape[1])]
    return CalibrationStats({n: (0.0, 1.0) for n in names}, {n: (0.0, 1.0) for n in names}, per_sample.shape[0],
                            1.0, "minmax", 16, per_sample)


def test_range_stability_flags_heavy_tailed_tensor() -> None:
    rng = np.random.default_rng(0)
    steady = 1.0 + 0.001 * rng.standard_normal((64, 3))          # every sample reaches the same max
    spiky = rng.pareto(1.5, (64, 1)) + 1.0                        # the max depends on which samples you drew
    rs = range_stability(_stats(np.hstack([steady, spiky])))
    assert rs["sizes"] == [16, 32, 64]
    assert rs["least_stable"][0]["tensor"] == "t3"
    assert rs["least_stable"][0]["spread"][0] > 0.2
    assert rs["stable_fraction"][-1] == 0.75                       # 3 of 4 tensors move < 5% at n


def test_too_few_samples_says_so() -> None:
    assert "fewer than 4" in range_stability(_stats(np.ones((3, 2))))["note"]


def test_report_has_stability_table() -> None:
    rng = np.random.default_rng(1)
    rs = range_stability(_stats(rng.pareto(1.5, (32, 2)) + 1))
    r = {"model": {"source": "m", "sha256": "0" * 64}, "qcal_version": "x", "target": "ort-cpu", "config_hash": "h",
         "calibration": {"set_hash": "s" * 64, "samples": 32, "observer": "mse", "seconds": 1, "observer_state_mb": 0},
         "seconds": {"total": 1.0}, "config": {}, "range_stability": rs, "kept_in_float": [], "machine": {}}
    md = report_markdown(r)
    assert "Is the calibration set big enough" in md and "`t0`" in md and "n=32" in md
