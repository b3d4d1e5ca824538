"""Per-layer activation capture with bounded memory.

Only one layer's tensors are held at a time. A capture that would exceed `max_memory_mb` is written to a
numpy memmap in a temporary folder instead of RAM, so 1,000 calibration samples of a wide layer do not
all sit in memory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qcal.runtime.output import workdir


class _Stop(Exception):
    """Raised by the capture hook once the wanted tensor is seen: the rest of the forward pass is skipped."""


class ActivationCache:
    """N samples of one tensor, in RAM or in a memmap on disk; indexable by an index array."""

    def __init__(self, n: int, shape: tuple[int, ...], max_memory_mb: float, folder: Path | None) -> None:
        nbytes = n * int(np.prod(shape)) * 4
        self.on_disk = nbytes > max_memory_mb * 2**20
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if self.on_disk:
            if folder is None:
                self._tmp = workdir("actcache")
                folder = Path(self._tmp.name)
            fd, path = tempfile.mkstemp(dir=folder, suffix=".f32")
            os.close(fd)
            self.path: Path | None = Path(path)
            self.data: np.ndarray = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, *shape))
        else:
            self.path = None
            self.data = np.empty((n, *shape), dtype=np.float32)
        self.filled = 0

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def append(self, t: torch.Tensor) -> None:
        k = int(t.shape[0])
        self.data[self.filled:self.filled + k] = t.detach().cpu().numpy()
        self.filled += k

    def get(self, idx: np.ndarray | slice) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.data[idx]))

    def close(self) -> None:
        if self.path is not None:
            del self.data
            self.path.unlink(missing_ok=True)
            self.path = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def capture(model: nn.Module, module: nn.Module, calib: torch.Tensor, *, what: str, batch: int,
            max_memory_mb: float, folder: Path | None = None,
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ActivationCache:
    """Run `model` over `calib` in batches and keep `module`'s input (what="input") or output (what="output")
    for every sample; the forward pass stops at `module`. `transform` is applied to the kept tensor."""
    cache: ActivationCache | None = None
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor | None = None) -> None:
        t = args[0] if what == "input" else out
        assert t is not None
        seen.append(transform(t) if transform else t)
        raise _Stop

    h = (module.register_forward_pre_hook(hook) if what == "input"
         else module.register_forward_hook(lambda m, a, o: hook(m, a, o)))
    try:
        with torch.no_grad():
            for i in range(0, len(calib), batch):
                with contextlib.suppress(_Stop):
                    model(calib[i:i + batch])
                t = seen.pop()
                if cache is None:
                    cache = ActivationCache(len(calib), tuple(t.shape[1:]), max_memory_mb, folder)
                cache.append(t)
    finally:
        h.remove()
    assert cache is not None
    return cache
