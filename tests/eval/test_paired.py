"""Paired comparison of two classifiers: counts, McNemar p, bootstrap interval and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from qcal.errors import ConfigError
from qcal.eval.paired import compare_paired


def _pair(n: int, only_a: int, only_b: int, both: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.zeros(n, bool), np.zeros(n, bool)
    a[:only_a] = True
    b[only_a:only_a + only_b] = True
    a[only_a + only_b:only_a + only_b + both] = b[only_a + only_b:only_a + only_b + both] = True
    return a, b


def test_identical_models_differ_by_exactly_zero() -> None:
    a, _ = _pair(1000, 0, 0, 850)
    r = compare_paired(a, a.copy())
    assert (r.diff, r.ci_low, r.ci_high, r.only_a, r.only_b, r.mcnemar_p) == (0.0, 0.0, 0.0, 0, 0, 1.0)
    assert r.verdict == "within noise"


def test_counts_and_mcnemar_match_the_binomial_reference() -> None:
    from scipy.stats import binomtest

    a, b = _pair(10000, 60, 30, 8400)
    r = compare_paired(a, b)
    assert (r.only_a, r.only_b, r.n) == (60, 30, 10000)
    assert r.top1_a == pytest.approx(0.846) and r.top1_b == pytest.approx(0.843)
    assert r.diff == pytest.approx(0.003)
    assert r.mcnemar_p == pytest.approx(binomtest(60, 90, 0.5).pvalue)
    assert r.mcnemar_p < 0.01 and r.verdict == "a better" and r.ci_low > 0


def test_bootstrap_interval_matches_the_normal_approximation() -> None:
    # diff per image is +1 (a only), -1 (b only) or 0: its variance is (oa + ob)/n - diff^2.
    a, b = _pair(10000, 40, 49, 8400)
    r = compare_paired(a, b, resamples=20000)
    se = np.sqrt(((40 + 49) / 10000 - r.diff**2) / 10000)
    assert r.ci_low == pytest.approx(r.diff - 1.96 * se, abs=2e-4)
    assert r.ci_high == pytest.approx(r.diff + 1.96 * se, abs=2e-4)
    assert r.verdict == "within noise" and r.mcnemar_p > 0.3
    assert compare_paired(b, a).verdict == "within noise"


def test_unpaired_inputs_are_rejected_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="same images"):
        compare_paired(np.ones(5, bool), np.ones(6, bool))
