"""Paired comparison of two classifiers evaluated on the same images: the accuracy difference with a bootstrap
confidence interval over images, and McNemar's exact test on the images where exactly one of them is right.

Two quantized models of one network agree on most images, so the noise in their accuracy DIFFERENCE is far
smaller than each accuracy's own standard error (about 0.35 points at 85 % on 10k images): what decides the
difference is only the images on which they disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from qcal.errors import ConfigError


@dataclass(frozen=True)
class PairedComparison:
    """a vs b on n images. diff = top1_a - top1_b; [ci_low, ci_high] its bootstrap interval at `level`."""

    n: int
    top1_a: float
    top1_b: float
    diff: float
    ci_low: float
    ci_high: float
    level: float
    only_a: int          # images a gets right and b wrong
    only_b: int          # images b gets right and a wrong
    mcnemar_p: float     # two-sided exact binomial test of only_a vs only_b

    @property
    def verdict(self) -> str:
        """'a better' / 'b better' when the interval excludes 0, else 'within noise'."""
        if self.ci_low > 0:
            return "a better"
        if self.ci_high < 0:
            return "b better"
        return "within noise"

    def to_dict(self) -> dict[str, Any]:
        return {**{k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()},
                "verdict": self.verdict}


def compare_paired(correct_a: np.ndarray, correct_b: np.ndarray, *, resamples: int = 10000, level: float = 0.95,
                   seed: int = 0) -> PairedComparison:
    """correct_a, correct_b: (N,) bool, whether each model got image i right (same images, same order)."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ConfigError(f"paired comparison needs two equal, non-empty 1-D correctness vectors (got {a.shape} "
                          f"and {b.shape}): evaluate both models on the same images.")
    if not 0 < level < 1:
        raise ConfigError(f"paired comparison: level={level} must be in (0, 1), e.g. 0.95.")
    n = a.size
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    # Resampling images with replacement only changes how many of each kind (a-only, b-only, other) are drawn:
    # draw those counts from the multinomial directly, which is the same bootstrap without an (R, N) index array.
    counts = np.random.default_rng(seed).multinomial(n, [only_a / n, only_b / n, 1 - (only_a + only_b) / n],
                                                     size=resamples)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    p = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    return PairedComparison(n, float(a.mean()), float(b.mean()), (only_a - only_b) / n, float(lo), float(hi),
                            level, only_a, only_b, p)
