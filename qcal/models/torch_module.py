"""Any torch.nn.Module with an example input: FP32 ONNX export; calibration images are resized to the
example's H x W, scaled to 0..1, NCHW. task "classify" marks a classifier (output: N x C logits), which
`qcal.robustness` scores with top-1 and ECE."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from qcal.models.base import Prepared

TASKS = ("generic", "classify")


class TorchModuleAdapter:
    family = "torch"

    def __init__(self, module: Any, example_input: Any, task: str = "generic") -> None:
        if task not in TASKS:
            from qcal.errors import ConfigError

            raise ConfigError(f"task {task!r} is not one of {TASKS}; use 'classify' for an N x C logits classifier.")
        self.task = task
        self.module = module.eval()
        self.example = example_input
        self.source = type(module).__name__
        self.class_names: dict[int, str] = {}
        self.input_name = "input"
        buf = io.BytesIO()
        import torch

        torch.save(module.state_dict(), buf)
        self._sha256 = hashlib.sha256(buf.getvalue()).hexdigest()

    def model_hash(self) -> str:
        return self._sha256

    @property
    def input_size(self) -> int:
        """The long side of the example input: evaluation and calibration images are resized to it before any
        degradation, so noise and blur are in the pixels this model sees."""
        return int(max(self.example.shape[-2], self.example.shape[-1]))

    def float_module(self) -> Any:
        import copy

        m = copy.deepcopy(self.module).float().eval()
        for p in m.parameters():
            p.requires_grad_(True)   # QuantModel leaves frozen weights alone; a user's inference freeze is not that
        return m

    def with_module(self, module: Any, tag: str) -> TorchModuleAdapter:
        """The same adapter over a changed float module (e.g. after AdaQuant); `tag` enters the model hash."""
        a = TorchModuleAdapter(module, self.example, self.task)
        a.source = self.source
        a._sha256 = hashlib.sha256(f"{self._sha256}:{tag}".encode()).hexdigest()
        return a

    def export_onnx(self, path: Path, *, opset: int) -> None:
        import torch

        with torch.no_grad():
            torch.onnx.export(self.module, (self.example,), str(path), opset_version=opset,
                              input_names=[self.input_name], output_names=["output"], dynamo=False)

    def prepare(self, image: np.ndarray) -> Prepared:
        h, w = int(self.example.shape[-2]), int(self.example.shape[-1])
        c = int(self.example.shape[1])
        img = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        if c == 1:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None]
        x = np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        return Prepared({self.input_name: x})

    def postprocess(self, outputs: list[np.ndarray], prepared: Prepared) -> np.ndarray:
        return outputs[0]
