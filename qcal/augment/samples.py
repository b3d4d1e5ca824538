"""The picture of what MetaAug's T does, for the quantize report: a grid of calibration inputs, one row per
sample, three panels per row: x | T(x) | |T(x) - x| amplified.

Layout (pure, tested): each panel is the input's H x W; panels and rows are separated by `gap` white pixels, so a
grid of n samples is (n H + (n - 1) gap) x (3 W + 2 gap) RGB. x and T(x) share one linear mapping to 0-255 per
row (x's min and max), so brightness changes made by T stay visible; the difference panel is |T(x) - x| times one
gain for the whole grid, chosen so its largest value maps to 255 (the gain is returned for the report).
One channel is shown grey; three as RGB (qcal's YOLO inputs are RGB / 255); other counts show the channel mean.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["sample_grid", "write_samples_png"]


def _rgb(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) float."""
    a = t.detach().double().cpu().numpy()
    if a.shape[0] == 3:
        return a.transpose(1, 2, 0)
    grey = a[0] if a.shape[0] == 1 else a.mean(axis=0)
    return np.repeat(grey[:, :, None], 3, axis=2)


def sample_grid(x: torch.Tensor, tx: torch.Tensor, gap: int = 4) -> tuple[np.ndarray, float]:
    """(uint8 (n H + (n-1) gap, 3 W + 2 gap, 3) grid, the difference panel's gain) for inputs x and T(x),
    both (n, C, H, W)."""
    if x.shape != tx.shape or x.dim() != 4 or len(x) == 0:
        raise ValueError(f"sample_grid: x {tuple(x.shape)} and T(x) {tuple(tx.shape)} must be equal (n, C, H, W) "
                         "with n >= 1.")
    n, _, h, w = x.shape
    diff = [np.abs(_rgb(b) - _rgb(a)) for a, b in zip(x, tx, strict=True)]
    peak = max(float(d.max()) for d in diff)
    gain = 255.0 / peak if peak > 0 else 1.0
    grid = np.full((n * h + (n - 1) * gap, 3 * w + 2 * gap, 3), 255, dtype=np.uint8)
    for i in range(n):
        a, b = _rgb(x[i]), _rgb(tx[i])
        lo, hi = float(a.min()), float(a.max())
        span = hi - lo if hi > lo else 1.0
        panels = [(a - lo) / span * 255.0, (b - lo) / span * 255.0, diff[i] * gain]
        top = i * (h + gap)
        for j, p in enumerate(panels):
            left = j * (w + gap)
            grid[top:top + h, left:left + w] = np.clip(np.rint(p), 0, 255).astype(np.uint8)
    return grid, gain


def write_samples_png(path: str | Path, x: torch.Tensor, tx: torch.Tensor) -> float:
    """Write sample_grid(x, tx) as a PNG atomically (temp file in the same folder, then rename); returns the
    difference panel's gain."""
    from PIL import Image

    grid, gain = sample_grid(x, tx)
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(grid).save(f, format="PNG")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return gain
