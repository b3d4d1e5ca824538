"""Per-layer activation statistics of a torch model's Linear inputs, streamed over calibration data.

For every Linear input x (tokens x K channels) it keeps, with memory independent of the number of tokens:
per-channel min, max and max |x| (K floats each), and the first four power sums of all elements (for
kurtosis). Derived per layer: max |x|, kurtosis (3 for a Gaussian; heavy tails read much higher) and the
fraction of outlier channels, those whose max |x| exceeds `outlier_ratio` x the median channel's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ChannelStats:
    absmax: torch.Tensor     # (K,)
    cmin: torch.Tensor       # (K,)
    cmax: torch.Tensor       # (K,)
    sums: list[float] = field(default_factory=lambda: [0.0] * 5)   # n, sum x, x^2, x^3, x^4 (float64)

    def update(self, x: torch.Tensor) -> None:
        x2 = x.reshape(-1, x.shape[-1]).float()
        self.absmax = torch.maximum(self.absmax, x2.abs().amax(dim=0))
        self.cmin = torch.minimum(self.cmin, x2.amin(dim=0))
        self.cmax = torch.maximum(self.cmax, x2.amax(dim=0))
        d = x2.double()
        p = d
        self.sums[0] += d.numel()
        for i in range(1, 5):
            self.sums[i] += float(p.sum())
            p = p * d

    def kurtosis(self) -> float:
        n, s1, s2, s3, s4 = self.sums
        if n < 2:
            return float("nan")
        m = s1 / n
        var = s2 / n - m * m
        m4 = s4 / n - 4 * m * s3 / n + 6 * m * m * s2 / n - 3 * m**4
        return float(m4 / var**2) if var > 0 else float("nan")

    def summary(self, outlier_ratio: float) -> dict[str, float]:
        med = float(self.absmax.median())
        frac = float((self.absmax > outlier_ratio * max(med, 1e-12)).float().mean())
        return {"max_abs": float(self.absmax.max()), "kurtosis": round(self.kurtosis(), 3),
                "outlier_channel_frac": round(frac, 5), "median_channel_absmax": med}


class ActivationStats:
    """Collects ChannelStats for the inputs of the Linear modules chosen by `select(name)`."""

    def __init__(self, model: nn.Module, select: Callable[[str], bool] = lambda n: True) -> None:
        self.model = model
        self.names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and select(n)]
        self.stats: dict[str, ChannelStats] = {}

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            st = self.stats.get(name)
            if st is None:
                k = x.shape[-1]
                st = self.stats[name] = ChannelStats(torch.zeros(k), torch.full((k,), float("inf")),
                                                     torch.full((k,), float("-inf")))
            st.update(x)
        return hook

    @contextmanager
    def recording(self) -> Iterator[ActivationStats]:
        mods = dict(self.model.named_modules())
        handles = [mods[n].register_forward_pre_hook(self._hook(n)) for n in self.names]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def absmax(self) -> dict[str, torch.Tensor]:
        return {n: s.absmax.clone() for n, s in self.stats.items()}

    def table(self, outlier_ratio: float = 10.0) -> dict[str, dict[str, float]]:
        return {n: self.stats[n].summary(outlier_ratio) for n in self.names if n in self.stats}


def summarize(table: dict[str, dict[str, float]]) -> dict[str, float]:
    """Model-level numbers of a per-layer table: max |x| over layers, median kurtosis, mean outlier fraction."""
    if not table:
        return {}
    vals = list(table.values())
    kurt = sorted(v["kurtosis"] for v in vals)
    return {"max_abs_act": max(v["max_abs"] for v in vals), "median_kurtosis": kurt[len(kurt) // 2],
            "mean_outlier_channel_frac": sum(v["outlier_channel_frac"] for v in vals) / len(vals)}
