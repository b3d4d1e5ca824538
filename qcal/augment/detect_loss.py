"""MetaAug's outer fit term for detectors: the quantized head's box distributions and class scores against FP32.

An Ultralytics Detect head (YOLOv8, YOLO11) ends each scale i in two branches: `cv2[i]` gives the box map
(B, 4 * reg_max, H_i, W_i), a distribution over reg_max distance bins for each side (left, top, right, bottom) of
each anchor, decoded by DFL into an expected distance; `cv3[i]` gives the class logits (B, nc, H_i, W_i),
read through a sigmoid. The decoded (B, 4 + nc, A) output mixes box pixels (0-640) with probabilities (0-1), so a
plain MSE on it is ruled by the box pixels; this term compares the raw branches instead:

- box: KL(softmax(b_fp / T) || softmax(b_q / T)) over the reg_max bins, per side and anchor, averaged over the 4
  sides (with reg_max == 1 there is no distribution: the squared difference of the raw box outputs instead);
- class: the binary KL of the class probabilities, sum_c BCE(sigmoid(s_q), sigmoid(s_fp)) - H(sigmoid(s_fp)):
  BCE against FP32's sigmoid scores, less the targets' entropy so the term is zero when q == fp (the gradient is
  BCE's);
- each anchor weighted by FP32's max class score w_a = max_c sigmoid(s_fp) (no gradient), normalised by sum w_a:
  most of the A anchors are background and would otherwise rule the mean. The price: an anchor where FP32 sees
  nothing and the quantized model invents a detection weighs little (w_a ~ FP32's background score).
fit = box + class (equal weights).

The head is found by its attributes (cv2, cv3 ModuleLists, reg_max, nc), so Ultralytics is not imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DetectHead", "detection_fit", "find_detect_head", "head_maps"]


@dataclass(frozen=True)
class DetectHead:
    """Where a detector's raw branches are: module names (relative to the model searched) of each scale's box
    branch and class branch, and the number of distance bins per box side."""

    box: tuple[str, ...]
    cls: tuple[str, ...]
    reg_max: int
    nc: int


def find_detect_head(model: nn.Module) -> DetectHead | None:
    """The first module with cv2 and cv3 ModuleLists of equal length plus reg_max and nc (Ultralytics Detect and
    its subclasses); None when the model has none (classifiers)."""
    for name, m in model.named_modules():
        cv2, cv3 = getattr(m, "cv2", None), getattr(m, "cv3", None)
        if (isinstance(cv2, nn.ModuleList) and isinstance(cv3, nn.ModuleList) and len(cv2) == len(cv3) > 0
                and isinstance(getattr(m, "reg_max", None), int) and isinstance(getattr(m, "nc", None), int)):
            pre = f"{name}." if name else ""
            return DetectHead(tuple(f"{pre}cv2.{i}" for i in range(len(cv2))),
                              tuple(f"{pre}cv3.{i}" for i in range(len(cv3))), int(m.reg_max), int(m.nc))
    return None


def head_maps(model: nn.Module, head: DetectHead, run: Callable[[], Any]) -> tuple[list[torch.Tensor],
                                                                                 list[torch.Tensor]]:
    """(box maps, class maps) per scale, captured by forward hooks on `model`'s branches while `run()` runs the
    model (directly or through torch.func.functional_call); the autograd graph is kept."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for n in (*head.box, *head.cls):
        def hook(_m: nn.Module, _a: Any, out: torch.Tensor, n: str = n) -> None:
            seen[n] = out
        hooks.append(model.get_submodule(n).register_forward_hook(hook))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return [seen[n] for n in head.box], [seen[n] for n in head.cls]


def _flat(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per-scale (B, C, H_i, W_i) maps -> (B, C, A), A = sum_i H_i W_i (Ultralytics' anchor order)."""
    return torch.cat([m.flatten(2) for m in maps], dim=2)


def detection_fit(box_q: list[torch.Tensor], cls_q: list[torch.Tensor], box_fp: list[torch.Tensor],
                  cls_fp: list[torch.Tensor], reg_max: int, temperature: float = 1.0,
                  eps: float = 1e-7) -> tuple[torch.Tensor, dict[str, float]]:
    """(box KL + class binary KL, {"box", "cls"}), anchors weighted by FP32's max class score (module docstring).
    Shapes per scale: box (B, 4 * reg_max, H, W), class (B, nc, H, W). Zero when the quantized maps equal FP32's."""
    bq, bf = _flat(box_q), _flat(box_fp).detach()
    sq, sf = _flat(cls_q), _flat(cls_fp).detach()
    b, _, a = bq.shape
    if bq.shape[1] != 4 * reg_max or bf.shape != bq.shape or sf.shape != sq.shape:
        raise ValueError(f"detection_fit: box maps {tuple(bq.shape)} vs {tuple(bf.shape)} (want 4 * reg_max = "
                         f"{4 * reg_max} channels), class maps {tuple(sq.shape)} vs {tuple(sf.shape)}.")
    pf = torch.sigmoid(sf)                                   # (B, nc, A)
    w = pf.amax(dim=1)                                       # (B, A): FP32's max class score per anchor
    w = w / w.sum().clamp_min(eps)
    if reg_max > 1:
        lq = F.log_softmax(bq.view(b, 4, reg_max, a) / temperature, dim=2)
        lf = F.log_softmax(bf.view(b, 4, reg_max, a) / temperature, dim=2)
        box = (lf.exp() * (lf - lq)).sum(dim=2).mean(dim=1)  # (B, A): KL per side, mean over the 4 sides
    else:
        box = (bq - bf).pow(2).mean(dim=1)
    bce = F.binary_cross_entropy_with_logits(sq, pf, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(sf, pf, reduction="none")   # H(p_fp), by the same formula
    cls = (bce - entropy).sum(dim=1)                         # (B, A): binary KL summed over classes
    box_t, cls_t = (w * box).sum(), (w * cls).sum()
    return box_t + cls_t, {"box": float(box_t.detach()), "cls": float(cls_t.detach())}
