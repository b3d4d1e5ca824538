"""MetaAug's outer fit term for detectors (qcal.augment.detect_loss): the pure loss, finding the head, and the
gradient reaching T through a YOLOv8n built from its yaml."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qcal.augment import TNetSpec, TransformNet
from qcal.augment.detect_loss import detection_fit, find_detect_head, head_maps
from qcal.augment.metaaug import inner_params, inner_step, meta_loss, module_io
from qcal.config import MetaAugConfig
from qcal.passes.reconstruct import Unit
from qcal.quant.fakequant import Precision
from qcal.quant.qmodules import QuantModel

REG = 16


def maps(seed: int, b: int = 2, nc: int = 3) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two scales (4x4 and 2x2: 20 anchors) of random box and class maps."""
    g = torch.Generator().manual_seed(seed)
    box = [torch.randn(b, 4 * REG, s, s, generator=g) for s in (4, 2)]
    cls = [torch.randn(b, nc, s, s, generator=g) * 3 for s in (4, 2)]
    return box, cls


def test_zero_when_equal_and_positive_otherwise() -> None:
    box, cls = maps(0)
    fit, parts = detection_fit(box, cls, box, cls, REG, temperature=4.0)
    assert float(fit) == pytest.approx(0.0, abs=1e-6) and parts["box"] == pytest.approx(0.0, abs=1e-6)
    box_q = [b + 0.5 * torch.randn_like(b) for b in box]
    fit, parts = detection_fit(box_q, cls, box, cls, REG)
    assert parts["box"] > 1e-3 and parts["cls"] == pytest.approx(0.0, abs=1e-6)
    cls_q = [c + 1.0 for c in cls]
    fit, parts = detection_fit(box, cls_q, box, cls, REG)
    assert parts["cls"] > 1e-3 and parts["box"] == pytest.approx(0.0, abs=1e-6) and float(fit) == parts["cls"]


def test_box_term_is_the_kl_of_the_bin_distributions() -> None:
    box, cls = maps(1, b=1)
    cls = [torch.full_like(c, 2.0) for c in cls]   # equal weights for every anchor
    box_q = [b.clone() for b in box]
    box_q[0][0, 0:REG, 0, 0] += torch.linspace(-1, 1, REG)   # one side (left) of one anchor
    _, parts = detection_fit(box_q, cls, box, cls, REG)
    p, q = torch.softmax(box[0][0, 0:REG, 0, 0], 0), torch.softmax(box_q[0][0, 0:REG, 0, 0], 0)
    kl = float((p * (p.log() - q.log())).sum())
    assert parts["box"] == pytest.approx(kl / 4 / 20, rel=1e-5)   # mean over 4 sides, 20 equally weighted anchors


def test_anchors_are_weighted_by_fp32_max_class_score() -> None:
    box, cls = maps(2, b=1)
    cls = [torch.full_like(c, -8.0) for c in cls]   # background everywhere ...
    cls[0][0, 1, 0, 0] = 4.0                        # ... but one confident anchor (0) ...
    cls[0][0, 1, 3, 3] = 0.0                        # ... and one uncertain anchor (15)

    def err_at(i: int, j: int) -> float:
        box_q = [b.clone() for b in box]
        box_q[0][0, :, i, j] += 1.0 * torch.randn(4 * REG, generator=torch.Generator().manual_seed(9))
        return detection_fit(box_q, cls, box, cls, REG)[1]["box"]

    confident, uncertain, background = err_at(0, 0), err_at(3, 3), err_at(1, 1)
    assert confident > 1.5 * uncertain > 100 * background > 0


def test_reg_max_one_uses_the_squared_difference_and_shapes_are_checked() -> None:
    box = [torch.zeros(1, 4, 2, 2)]
    cls = [torch.zeros(1, 2, 2, 2)]
    _, parts = detection_fit([box[0] + 1.0], cls, box, cls, reg_max=1)
    assert parts["box"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="4 \\* reg_max"):
        detection_fit(box, cls, box, cls, reg_max=16)


@pytest.fixture(scope="module")
def yolo() -> tuple[QuantModel, QuantModel, torch.Tensor]:
    """A YOLOv8n (3 classes, 64 px) built from its yaml: a W4A8 twin and the FP32 reference. The untrained head
    starts at constant outputs (Ultralytics' bias init: class scores ~1e-4, flat box bins), so its last convs are
    re-drawn to give varied scores and bin distributions, as a trained head does."""
    from qcal.models.yolo import YoloAdapter

    m = YoloAdapter.from_yaml("yolov8n.yaml", nc=3, imgsz=64).float_module()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for branch in (*m.model[22].cv2, *m.model[22].cv3):
            conv = branch[-1]
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.5 / conv.weight[0].numel() ** 0.5)
            conv.bias.zero_()
    x = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    q = QuantModel(m, Precision.W4A8, x[:1])
    q.calibrate(x)
    fp = QuantModel(m, Precision.FP32, x[:1])
    fp.calibrate(x[:1])
    for p in fp.parameters():
        p.requires_grad_(False)
    return q, fp, x


def test_finds_the_ultralytics_head_and_not_a_classifier(yolo: tuple[QuantModel, QuantModel, torch.Tensor]) -> None:
    q, fp, x = yolo
    head = find_detect_head(q.model)
    assert head is not None and (head.reg_max, head.nc) == (16, 3)
    assert head.box == ("model.22.cv2.0", "model.22.cv2.1", "model.22.cv2.2")
    assert head.cls == ("model.22.cv3.0", "model.22.cv3.1", "model.22.cv3.2")
    with torch.no_grad():
        box, cls = head_maps(fp.model, head, lambda: fp(x[:2]))
    assert [tuple(b.shape) for b in box] == [(2, 64, 8, 8), (2, 64, 4, 4), (2, 64, 2, 2)]
    assert [tuple(c.shape) for c in cls] == [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 2, 2)]
    assert find_detect_head(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())) is None


def test_outer_gradient_reaches_t_through_a_yolov8n(yolo: tuple[QuantModel, QuantModel, torch.Tensor]) -> None:
    q, fp, x = yolo
    unit = Unit("model.8", tuple(n for n in q.layers if n.startswith("model.8.")))   # a C2f block
    assert len(unit.layers) >= 3
    cfg = MetaAugConfig(alpha=1.0, beta=0.0, gamma=0.0, inner_lr=0.1)   # the fit term only
    net = TransformNet(TNetSpec(channels=3, width=2, init_scale=0.1))
    tx = net(x[:3])
    qm, fm = unit.module(q), unit.module(fp)
    stepped = inner_step(qm, inner_params(q, unit), module_io(q, qm, tx), module_io(fp, fm, tx, "output"),
                         cfg.inner_lr)
    loss, parts = meta_loss(q, fp, unit.name, stepped, x[3:], x[:3], tx, cfg)
    assert parts["fit"] > 0 and parts["box"] > 0 and parts["cls"] > 0
    assert parts["fit"] == pytest.approx(parts["box"] + parts["cls"], rel=1e-5)
    g = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
    assert float(torch.cat([t.flatten() for t in g if t is not None]).norm()) > 0
