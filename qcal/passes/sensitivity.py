"""Per-layer sensitivity for bit allocation: the loss increase on the calibration set when ONE layer runs at a
given choice and every other layer at the base precision.

Layers come from a bank of quantized models, one per choice (e.g. W4A4 and W8A8 after parallel-mode AdaQuant,
whose layers are independent of each other and can be mixed). The loss is the task loss when labels are given
(cross-entropy), else the output's relative squared error against FP32 per output channel (axis 1), averaged
over channels, so outputs of different scales count alike (YOLO's box pixels and class scores; logits).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from tqdm import tqdm

from qcal.errors import ConfigError
from qcal.quant.fakequant import Precision
from qcal.quant.qmodules import QuantModel, set_module


def compose(bank: Mapping[Precision, QuantModel], plan: Mapping[str, Precision], base: Precision) -> QuantModel:
    """A model whose layer n is the layer of bank[plan.get(n, base)]."""
    missing = sorted({p.value for p in [*plan.values(), base]} - {p.value for p in bank})
    if missing:
        raise ConfigError(f"no quantized model for choice(s) {missing} in the bank; build one per choice.")
    out = copy.deepcopy(bank[base])
    for n, p in plan.items():
        if p is not base:
            layer = copy.deepcopy(bank[p].layers[n])
            set_module(out.model, n, layer)
            out.layers[n] = layer
    return out


def evaluate_loss(model: torch.nn.Module, calib: torch.Tensor, *, labels: torch.Tensor | None,
                  reference: torch.Tensor | None, batch: int = 250) -> float:
    """Mean cross-entropy vs labels, or the relative squared error vs the reference per output channel."""
    if labels is None and reference is None:
        raise ConfigError("sensitivity needs labels or FP32 reference outputs.")
    total = 0.0
    noise: torch.Tensor | float = 0.0
    signal: torch.Tensor | float = 0.0
    with torch.no_grad():
        for i in range(0, len(calib), batch):
            out = model(calib[i:i + batch])
            if labels is not None:
                total += float(torch.nn.functional.cross_entropy(out, labels[i:i + batch], reduction="sum"))
            else:
                assert reference is not None
                ref = reference[i:i + batch].double()
                dims = [d for d in range(ref.dim()) if d != 1]
                noise = noise + ((out.double() - ref) ** 2).sum(dim=dims)
                signal = signal + (ref**2).sum(dim=dims)
    if labels is not None:
        return total / len(calib)
    assert isinstance(noise, torch.Tensor) and isinstance(signal, torch.Tensor)
    return float((noise / signal.clamp_min(1e-30)).mean())


def joint_loss(bank: Mapping[Precision, QuantModel], calib: torch.Tensor, base: Precision, *,
               labels: torch.Tensor | None = None,
               fp_model: torch.nn.Module | None = None) -> Callable[[Mapping[str, Precision]], float]:
    """plan -> loss(every layer at its choice at once) - loss(all at base): one layer's sensitivity for a
    one-layer plan (measure), what the integer program predicts as a sum of them for a whole plan (qcal.placement.alloc.refine)."""
    reference = None
    if labels is None:
        if fp_model is None:
            raise ConfigError("sensitivity without labels needs the FP32 model for reference outputs.")
        with torch.no_grad():
            reference = torch.cat([fp_model(calib[i:i + 250]) for i in range(0, len(calib), 250)])
    base_loss = evaluate_loss(compose(bank, {}, base), calib, labels=labels, reference=reference)

    def loss(plan: Mapping[str, Precision]) -> float:
        return evaluate_loss(compose(bank, plan, base), calib, labels=labels, reference=reference) - base_loss
    return loss


def measure(bank: Mapping[Precision, QuantModel], calib: torch.Tensor, choices: Sequence[Precision], base: Precision,
            *, labels: torch.Tensor | None = None, fp_model: torch.nn.Module | None = None,
            loss: Callable[[Mapping[str, Precision]], float] | None = None,
            progress: bool = True) -> dict[str, dict[str, float]]:
    """layer -> choice -> loss(layer at choice, others at base) - loss(all at base). `loss`: a joint_loss of the
    same bank and calibration set, when the caller has one already (its reference and base loss are reused)."""
    loss = loss or joint_loss(bank, calib, base, labels=labels, fp_model=fp_model)
    layers = list(bank[base].layers)
    return {n: {p.value: 0.0 if p is base else loss({n: p}) for p in choices}
            for n in tqdm(layers, desc="sensitivity", disable=not progress, leave=False)}
