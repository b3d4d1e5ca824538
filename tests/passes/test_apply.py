"""qcal.quantize with passes: the refined float weights reach the exported FP32 and QDQ models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import qcal
from qcal.config import AdaQuantConfig


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)))
        return self.fc(y.mean(dim=(2, 3)))


def conv_weights(path: Path) -> list[np.ndarray]:
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return [inits[n.input[1]] for n in m.graph.node if n.op_type == "Conv"]


def test_quantize_with_passes_exports_refined_weights(tmp_path: Path) -> None:
    net = Net().eval()
    x = torch.zeros(1, 3, 32, 32)
    base_cfg = qcal.QuantConfig(calib_size=12, keep_float=qcal.KeepFloatConfig(sensitivity_samples=0))
    plain = qcal.quantize(net, calib="bundled:vtest[0:36]", example_input=x, config=base_cfg, progress=False)
    cfg = base_cfg.replace(passes=("bn_reestimate", "adaquant", "bias_correction"),
                           adaquant=AdaQuantConfig(iters=30, batch=4))
    r = qcal.quantize(net, calib="bundled:vtest[0:36]", example_input=x, config=cfg, progress=False)
    assert [p.name for p in r.passes] == ["bn_reestimate", "adaquant", "bias_correction"]
    assert set(r.passes[1].per_layer) == {"c1", "c2", "fc"}
    assert r.to_dict()["passes"][2]["name"] == "bias_correction"
    assert r.adapter.model_hash() != plain.adapter.model_hash()
    w_plain, w_refined = conv_weights(plain.out.fp32_path), conv_weights(r.out.fp32_path)
    assert len(w_plain) == len(w_refined) == 2
    assert any(not np.allclose(a, b) for a, b in zip(w_plain, w_refined, strict=True))
    paths = r.export(tmp_path)
    s = ort.InferenceSession(str(paths["int8"]), providers=["CPUExecutionProvider"])
    out = s.run(None, {"input": np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)})[0]
    assert out.shape == (1, 4) and np.isfinite(out).all()


@pytest.mark.slow
def test_yolov8n_adaquant_pass(tmp_path: Path) -> None:
    from qcal.models.yolo import YoloAdapter

    adapter = YoloAdapter.from_yaml("yolov8n.yaml", nc=3, imgsz=160)
    cfg = qcal.QuantConfig(imgsz=160, calib_size=4, keep_float=qcal.KeepFloatConfig(sensitivity_samples=0),
                           passes=("adaquant",), adaquant=AdaQuantConfig(iters=3, batch=2))
    r = qcal.quantize(adapter, calib="bundled:vtest[0:30]", config=cfg, progress=False)
    layers = r.passes[0].per_layer
    assert len(layers) > 50 and not any("dfl" in n for n in layers)   # the DFL decode conv stays as it is
    assert r.export(tmp_path)["int8"].is_file()
