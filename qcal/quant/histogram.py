"""A streaming histogram of fixed size whose range grows exactly, so memory never depends on sample count.

The histogram covers [-R, R) with `bins` equal bins (bins even). When data beyond R arrives, R doubles
(as often as needed) and adjacent bin pairs are merged into the outer half: the old counts land exactly in
the new bins, no sample is stored. State: bins x 8 bytes + a few scalars.
"""

from __future__ import annotations

import numpy as np


class StreamingHistogram:
    def __init__(self, bins: int = 2048) -> None:
        if bins < 16 or bins % 4:
            raise ValueError("bins must be a multiple of 4, >= 16")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.float64)
        self.R = 0.0
        self.min = np.inf
        self.max = -np.inf
        self.total = 0

    @property
    def nbytes(self) -> int:
        return int(self.counts.nbytes) + 32

    def _grow_to(self, absmax: float) -> None:
        if self.R == 0.0:
            self.R = float(absmax) if absmax > 0 else 1e-8
            return
        while absmax >= self.R:
            half = self.bins // 2
            # merge pairs: new bin i of the doubled range holds old bins 2(i - bins/4) .. +1 around the centre
            merged = self.counts.reshape(-1, 2).sum(axis=1)          # bins/2 values covering [-R, R)
            self.counts = np.zeros(self.bins)
            self.counts[half // 2: half // 2 + half] = merged
            self.R *= 2.0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).ravel()
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self._grow_to(max(abs(lo), abs(hi)) * (1 + 1e-6))
        idx = ((x + self.R) * (self.bins / (2.0 * self.R))).astype(np.int64)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)
        self.total += x.size

    def merge(self, other: StreamingHistogram) -> None:
        if other.total == 0:
            return
        if self.total == 0:
            self.counts, self.R, self.min, self.max, self.total = (other.counts.copy(), other.R, other.min,
                                                                  other.max, other.total)
            return
        o = other.counts.copy()
        o_R = other.R
        self._grow_to(o_R * (1 - 1e-9))
        while o_R < self.R:  # bring other's bins to our (larger) range by the same exact pair merge
            half = self.bins // 2
            merged = o.reshape(-1, 2).sum(axis=1)
            o = np.zeros(self.bins)
            o[half // 2: half // 2 + half] = merged
            o_R *= 2.0
        self.counts += o
        self.min, self.max, self.total = min(self.min, other.min), max(self.max, other.max), self.total + other.total

    def edges(self) -> np.ndarray:
        return np.linspace(-self.R, self.R, self.bins + 1)

    def abs_hist(self) -> tuple[np.ndarray, float]:
        """Histogram of |x| over [0, R) with bins/2 bins."""
        half = self.bins // 2
        return self.counts[half:] + self.counts[:half][::-1], self.R
