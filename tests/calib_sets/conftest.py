from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest


def write_image(p: Path, seed: int = 0, shape: tuple[int, int] = (24, 32)) -> np.ndarray:
    """A random RGB image written losslessly (PNG/BMP/TIFF) or lossily (JPEG/WebP); returns the RGB array."""
    rgb = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    p.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(p), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return rgb


def textured(shape: tuple[int, int] = (96, 128), seed: int = 0) -> np.ndarray:
    """A smooth + edgy RGB test image (blocks and a gradient) so blur, contrast and JPEG act measurably."""
    rng = np.random.default_rng(seed)
    h, w = shape
    blocks = rng.integers(30, 225, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    img = np.kron(blocks, np.ones((8, 8, 1), np.uint8))[:h, :w]
    ramp = np.linspace(0, 40, w, dtype=np.float32)[None, :, None]
    return np.clip(img.astype(np.float32) * 0.8 + ramp, 0, 255).astype(np.uint8)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    for i in range(4):
        write_image(d / f"im{i}.png", i)
    write_image(d / "sub" / "deep.jpg", 9)
    return d


@pytest.fixture()
def make_video(tmp_path: Path) -> Callable[[int], Path]:
    def make(n: int = 6) -> Path:
        p = tmp_path / "v.avi"
        w = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
        for i in range(n):
            w.write(np.full((24, 32, 3), i * 20, np.uint8))
        w.release()
        return p

    return make
