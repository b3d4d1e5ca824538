from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_conv_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conv -> Relu -> Conv -> Add(residual) -> Concat(with a large-range branch), FP32 ONNX."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.c3 = torch.nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.c1(x))
            y = self.c2(y) + y
            z = self.c3(y)
            return torch.cat([z * 640.0, torch.sigmoid(z)], dim=1)

    p = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 32, 32),), str(p), opset_version=17, input_names=["input"],
                      output_names=["out"], dynamo=False)
    return p


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
