"""Per-layer sensitivity for bit allocation: the loss increase on the calibration set when ONE layer runs at a
given choice and every other layer at the base precision.

Layers come from a bank of quantized models, one per choice (e.g. W4A4 and W8A8 after parallel-mode AdaQuant,
whose layers are independent of each other and can be mixed). The loss is the task loss when labels are given
(cross-entropy), else the KL divergence of the model's softmax output from FP32's.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from tqdm import tqdm

from qcal.errors import ConfigError
from qcal.quant.fakequant import Precision
from qcal.quant.qmodules import QuantModel, _set_module


def compose(bank: Mapping[Precision, QuantModel], plan: Mapping[str, Precision], base: Precision) -> QuantModel:
    """A model whose layer n is the layer of bank[plan.get(n, base)]."""
    missing = sorted({p.value for p in [*plan.values(), base]} - {p.value for p in bank})
    if missing:
        raise ConfigError(f"no quantized model for choice(s) {missing} in the bank; build one per choice.")
    out = copy.deepcopy(bank[base])
    for n, p in plan.items():
        if p is not base:
            layer = copy.deepcopy(bank[p].layers[n])
            _set_module(out.model, n, layer)
            out.layers[n] = layer
    return out


def evaluate_loss(model: torch.nn.Module, calib: torch.Tensor, *, labels: torch.Tensor | None,
                  reference: torch.Tensor | None, batch: int = 250) -> float:
    """Mean cross-entropy vs labels, or mean KL(reference softmax || model softmax) per sample."""
    if labels is None and reference is None:
        raise ConfigError("sensitivity needs labels or FP32 reference outputs.")
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(calib), batch):
            out = model(calib[i:i + batch])
            if labels is not None:
                total += float(torch.nn.functional.cross_entropy(out, labels[i:i + batch], reduction="sum"))
            else:
                assert reference is not None
                ref = reference[i:i + batch]
                total += float(torch.nn.functional.kl_div(out.log_softmax(-1), ref.log_softmax(-1),
                                                          log_target=True, reduction="sum"))
    return total / len(calib)


def measure(bank: Mapping[Precision, QuantModel], calib: torch.Tensor, choices: Sequence[Precision], base: Precision,
            *, labels: torch.Tensor | None = None, fp_model: torch.nn.Module | None = None,
            progress: bool = True) -> dict[str, dict[str, float]]:
    """layer -> choice -> loss(layer at choice, others at base) - loss(all at base)."""
    reference = None
    if labels is None:
        if fp_model is None:
            raise ConfigError("sensitivity without labels needs the FP32 model for reference outputs.")
        with torch.no_grad():
            reference = torch.cat([fp_model(calib[i:i + 250]) for i in range(0, len(calib), 250)])
    base_model = compose(bank, {}, base)
    base_loss = evaluate_loss(base_model, calib, labels=labels, reference=reference)
    out: dict[str, dict[str, float]] = {}
    layers = list(base_model.layers)
    for n in tqdm(layers, desc="sensitivity", disable=not progress, leave=False):
        out[n] = {}
        for p in choices:
            if p is base:
                out[n][p.value] = 0.0
                continue
            loss = evaluate_loss(compose(bank, {n: p}, base), calib, labels=labels, reference=reference)
            out[n][p.value] = loss - base_loss
    return out
