"""Streaming range observers: MinMax, Percentile, Entropy (TensorRT's KL calibrator), MSE and Blend.

All keep fixed-size state (MinMax: two floats; the others: one StreamingHistogram of `bins` float64 counts),
so memory does not grow with the number of calibration samples. `compute_range` returns the clipping range
(rmin, rmax) from which qparams.compute_qparams derives scale and zero point.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod

import numpy as np

from qcal.errors import CalibrationError, ConfigError
from qcal.quant.histogram import StreamingHistogram


class ObserverKind(str, enum.Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"
    BLEND = "blend"


class Observer(ABC):
    def __init__(self, *, symmetric: bool, qmin: int, qmax: int) -> None:
        self.symmetric, self.qmin, self.qmax = symmetric, qmin, qmax

    @abstractmethod
    def update(self, x: np.ndarray) -> None: ...

    @abstractmethod
    def compute_range(self) -> tuple[float, float]: ...

    @property
    @abstractmethod
    def nbytes(self) -> int: ...

    def _sym(self, lo: float, hi: float) -> tuple[float, float]:
        if self.symmetric:
            m = max(abs(lo), abs(hi))
            return -m, m
        return lo, hi


class MinMaxObserver(Observer):
    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.lo, self.hi = np.inf, -np.inf

    def update(self, x: np.ndarray) -> None:
        if x.size:
            self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def merge(self, other: MinMaxObserver) -> None:
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)

    def compute_range(self) -> tuple[float, float]:
        if self.lo > self.hi:
            raise CalibrationError("observer saw no data: run calibration on at least one sample.")
        return self._sym(self.lo, self.hi)

    @property
    def nbytes(self) -> int:
        return 16


class HistogramObserver(Observer):
    def __init__(self, *, bins: int = 2048, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.hist = StreamingHistogram(bins)

    def update(self, x: np.ndarray) -> None:
        self.hist.update(x)

    def merge(self, other: HistogramObserver) -> None:
        self.hist.merge(other.hist)

    @property
    def nbytes(self) -> int:
        return self.hist.nbytes

    def _check(self) -> None:
        if self.hist.total == 0:
            raise CalibrationError("observer saw no data: run calibration on at least one sample.")

    def _clamp(self, lo: float, hi: float) -> tuple[float, float]:
        return max(lo, self.hist.min), min(hi, self.hist.max)


def _quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The q-quantile (0..1) of a histogram, linear within the bin."""
    cdf = np.cumsum(counts)
    target = q * cdf[-1]
    i = int(np.searchsorted(cdf, target, side="left"))
    i = min(i, len(counts) - 1)
    before = cdf[i - 1] if i > 0 else 0.0
    frac = 0.0 if counts[i] == 0 else (target - before) / counts[i]
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))


class PercentileObserver(HistogramObserver):
    def __init__(self, *, percentile: float = 99.999, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile={percentile}: must be in (50, 100].")
        self.p = percentile / 100.0

    def compute_range(self) -> tuple[float, float]:
        self._check()
        if self.symmetric:
            counts, R = self.hist.abs_hist()
            t = _quantile(counts, np.linspace(0, R, len(counts) + 1), self.p)
            t = min(t, max(abs(self.hist.min), abs(self.hist.max)))
            return -t, t
        e = self.hist.edges()
        return self._clamp(_quantile(self.hist.counts, e, 1 - self.p), _quantile(self.hist.counts, e, self.p))


def kl_threshold_bin(hist: np.ndarray, levels: int = 128, stride: int = 8) -> int:
    """TensorRT's entropy calibration on a |x| histogram: the bin count i minimising KL(P || Q), where P is
    hist[:i] with the clipped tail folded into its last bin and Q is hist[:i] merged into `levels` levels and
    expanded back over the non-empty bins."""
    n = len(hist)
    best_i, best_kl = n, np.inf
    for i in range(levels, n + 1, stride):
        p = hist[:i].astype(np.float64).copy()
        p[-1] += hist[i:].sum()
        nz = hist[:i] > 0
        chunks = np.array_split(np.arange(i), levels)
        q = np.zeros(i)
        for c in chunks:
            m = nz[c]
            k = int(m.sum())
            if k:
                q[c[m]] = hist[c].sum() / k
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        p /= ps
        q /= qs
        mask = p > 0
        kl = np.inf if np.any(q[mask] == 0) else float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


class EntropyObserver(HistogramObserver):
    def __init__(self, *, bins: int = 4096, **kw: object) -> None:
        super().__init__(bins=bins, **kw)  # type: ignore[arg-type]

    def compute_range(self) -> tuple[float, float]:
        self._check()
        counts, R = self.hist.abs_hist()
        levels = (self.qmax - self.qmin + 1) // 2  # 128 for 8 bits
        i = kl_threshold_bin(counts, levels=max(levels, 2))
        t = R * i / len(counts)
        if self.symmetric:
            return -t, t
        return self._clamp(-t, t)


class MseObserver(HistogramObserver):
    """The range minimising expected squared error (clipping + rounding) over the histogram."""

    def __init__(self, *, candidates: int = 100, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.candidates = candidates

    def compute_range(self) -> tuple[float, float]:
        self._check()
        e = self.hist.edges()
        centers = (e[:-1] + e[1:]) / 2
        c = self.hist.counts
        lo0, hi0 = self._sym(min(self.hist.min, 0.0), max(self.hist.max, 0.0))
        a = np.linspace(0.05, 1.0, self.candidates)[:, None]          # (K, 1) shrink factors
        lo, hi = lo0 * a, hi0 * a
        step = (hi - lo) / (self.qmax - self.qmin)
        step = np.where(step > 0, step, 1e-12)
        clip_err = np.where(centers[None] > hi, centers[None] - hi, 0.0) + np.where(centers[None] < lo,
                                                                                     lo - centers[None], 0.0)
        inside = clip_err == 0
        err = (np.where(inside, step**2 / 12.0, clip_err**2) * c[None]).sum(axis=1)
        k = int(np.argmin(err))
        return float(lo[k, 0]), float(hi[k, 0])


class BlendObserver(HistogramObserver):
    """Both the MSE range and the percentile range of one histogram, and ranges between them.

    range(alpha) = (1 - alpha) * MSE range + alpha * percentile range. MSE minimises each tensor's own error and
    so clips outliers that later layers need; the percentile keeps them at the cost of coarser steps. Which
    mix serves the whole model is a measurement: the pipeline tries several alphas on the calibration set and
    keeps the one with the best model-output SQNR (`alpha` here is the starting value).
    """

    def __init__(self, *, percentile: float = 99.999, alpha: float = 0.5, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self._mse = MseObserver(**kw)  # type: ignore[arg-type]
        self._pct = PercentileObserver(percentile=percentile, **kw)  # type: ignore[arg-type]
        self._mse.hist = self._pct.hist = self.hist  # one histogram, two range rules
        self.alpha = alpha

    def endpoints(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(MSE range, percentile range)."""
        return self._mse.compute_range(), self._pct.compute_range()

    def compute_range(self) -> tuple[float, float]:
        return blend_range(*self.endpoints(), self.alpha)


def blend_range(mse: tuple[float, float], pct: tuple[float, float], alpha: float) -> tuple[float, float]:
    return (1 - alpha) * mse[0] + alpha * pct[0], (1 - alpha) * mse[1] + alpha * pct[1]


def make_observer(kind: ObserverKind | str, *, symmetric: bool, qmin: int, qmax: int, bins: int = 2048,
                  percentile: float = 99.999) -> Observer:
    try:
        k = ObserverKind(kind)
    except ValueError:
        raise ConfigError(f"observer {kind!r}: choose one of {[m.value for m in ObserverKind]}.") from None
    kw = {"symmetric": symmetric, "qmin": qmin, "qmax": qmax}
    if k is ObserverKind.MINMAX:
        return MinMaxObserver(**kw)
    if k is ObserverKind.PERCENTILE:
        return PercentileObserver(percentile=percentile, bins=bins, **kw)
    if k is ObserverKind.ENTROPY:
        return EntropyObserver(bins=max(bins, 4096), **kw)
    if k is ObserverKind.BLEND:
        return BlendObserver(percentile=percentile, bins=bins, **kw)
    return MseObserver(bins=bins, **kw)
