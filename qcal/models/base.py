"""What every model adapter provides: load, describe inputs, preprocess, export FP32 ONNX, post-process."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections of one image, in original-image pixel coordinates.

    boxes: (N, 4) float32 x1, y1, x2, y2; scores: (N,) float32; classes: (N,) int64.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(frozen=True)
class Prepared:
    """One model input plus what post-processing needs to map outputs back to the original image."""

    feeds: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


class ModelAdapter(Protocol):
    """One checkpoint family. Adapters hold the loaded model; everything else in qcal sees only ONNX."""

    family: str              # "yolo", "torch"
    source: str              # where it was loaded from
    task: str                # "detect" or "generic"
    class_names: dict[int, str]

    def export_onnx(self, path: Path, *, opset: int) -> None: ...

    def prepare(self, image: np.ndarray) -> Prepared: ...

    def postprocess(self, outputs: list[np.ndarray], prepared: Prepared) -> Any: ...

    def model_hash(self) -> str: ...
