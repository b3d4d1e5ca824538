"""The one interface every pass implements, the context passes share, and the report each returns.

A pass gets a `PassContext` (the quantized model being edited, a frozen FP32 twin with the same layer names,
the calibration inputs, memory bounds, an optional augment hook) and returns a `PassReport`: what it changed
and each layer's output MSE against FP32 before and after it ran. Passes by name: qcal.passes.registry (this
module imports no pass, so every pass can import it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from qcal.passes.cache import ActivationCache, capture
from qcal.quant.fakequant import Precision
from qcal.quant.qmodules import QuantLayer, QuantModel

Augment = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PassContext:
    """qmodel: edited in place. fp_model: the same model, BN folded, every layer FP32 (the reference).
    calib: (N, ...) calibration inputs. augment: applied to the calibration inputs each reconstruction pass
    sees (a hook for augmenters such as MetaAug; None: the inputs as given)."""

    qmodel: QuantModel
    fp_model: QuantModel
    calib: torch.Tensor
    batch: int = 100
    max_memory_mb: float = 512.0
    cache_dir: Path | None = None
    augment: Augment | None = None
    progress: bool = True

    @staticmethod
    def build(model: torch.nn.Module, calib: torch.Tensor, precision: Precision | dict[str, Precision],
              **kw: Any) -> PassContext:
        """Quantize a float model round-to-nearest (weights per channel min/max, inputs by MSE search)."""
        q = QuantModel(model, precision, calib[:1])
        q.calibrate(calib)
        fp = QuantModel(model, Precision.FP32, calib[:1])
        fp.calibrate(calib[:1])
        return PassContext(q, fp, calib, **kw)

    @property
    def inputs(self) -> torch.Tensor:
        return self.augment(self.calib) if self.augment is not None else self.calib

    def quantized_layers(self) -> list[tuple[str, QuantLayer, QuantLayer]]:
        """(name, quantized layer, FP32 layer) in execution order, integer layers only."""
        return [(n, q, self.fp_model.layers[n]) for n, q in self.qmodel.layers.items() if not q.precision.is_float]

    def capture(self, which: str, layer: str, what: str, inputs: torch.Tensor | None = None) -> ActivationCache:
        """`what` ("input"/"output") of `layer` in the quantized ("q") or FP32 ("fp") model, every sample."""
        model = self.qmodel if which == "q" else self.fp_model
        return capture(model, model.layers[layer], self.inputs if inputs is None else inputs, what=what,
                       batch=self.batch, max_memory_mb=self.max_memory_mb, folder=self.cache_dir)


@dataclass
class PassReport:
    name: str
    changed: dict[str, Any] = field(default_factory=dict)
    per_layer: dict[str, dict[str, float]] = field(default_factory=dict)   # layer -> {"mse_before", "mse_after"}
    seconds: float = 0.0
    augmenter: Any = None   # qcal.augment.Augmenter when the pass learned one (MetaAug); not serialised

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "changed": self.changed, "per_layer": self.per_layer,
                "seconds": round(self.seconds, 2)}


class Pass(Protocol):
    name: str

    def run(self, ctx: PassContext) -> PassReport: ...


def channel_stats(cache: ActivationCache, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (axis 1) mean and std over every other axis, streamed in chunks (float64 sums)."""
    channels = int(cache.data.shape[1])
    s, s2 = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    count = 0
    for i in range(0, len(cache), batch):
        t = cache.get(slice(i, i + batch)).double()
        dims = [d for d in range(t.dim()) if d != 1]
        s += t.sum(dim=dims)
        s2 += (t * t).sum(dim=dims)
        count += t.numel() // t.shape[1]
    mean = s / count
    var = (s2 / count - mean * mean).clamp_min(0)
    return mean.float(), var.sqrt().float()


def paired_mse(a: ActivationCache, b: ActivationCache, fa: Callable[[torch.Tensor], torch.Tensor] | None = None,
               batch: int = 256) -> float:
    """Mean squared difference of fa(a) and b over all samples (fa: identity when None)."""
    total, n = 0.0, 0
    for i in range(0, len(a), batch):
        x = a.get(slice(i, i + batch))
        if fa is not None:
            x = fa(x)
        total += float(((x - b.get(slice(i, i + batch))) ** 2).double().sum())
        n += x.numel()
    return total / max(n, 1)


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
