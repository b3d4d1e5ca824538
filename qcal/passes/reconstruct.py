"""Block reconstruction, AdaRound and QDrop: the paper baselines of MetaAug, as options of the one
reconstruction pass (qcal.passes.adaquant).

- granularity="block" (BRECQ, Li et al. 2021): the quantized layers of one block are optimised jointly so the
  block's output matches the FP32 block on FP32 inputs. A block is the innermost module (not a bare
  Sequential/ModuleList container, not the model itself) holding two or more quantized layers: a residual
  block of a ResNet; a layer outside any such module is its own unit.
- rounding="adaround" (Nagel et al. 2020): each weight is floor(w/s) + h(V), h(V) = clip(sigmoid(V)(zeta -
  gamma) + gamma, 0, 1), zeta = 1.1, gamma = -0.1, V initialised so h(V) equals the fractional part (the
  float weight). The loss adds lambda * sum(1 - |2h(V) - 1|^b), b annealed linearly 20 -> 2 after a 20 %
  warm-up; afterwards h is hardened to 1 where h(V) >= 0.5 (V >= 0) and the weight written on the grid.
  The reconstruction loss is BRECQ's: squared error summed over channels, averaged over the rest.
- qdrop (Wei et al. 2022): while reconstructing, each element of every quantized layer's input is kept in
  float with probability qdrop (a seeded generator; no global RNG).
The step sizes (weights per channel, inputs per tensor) are learned with LSQ-style gradients
(qcal.quant.fakequant). Inputs and targets are held one unit at a time in the bounded ActivationCache.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from qcal.config import AdaQuantConfig, Rounding
from qcal.passes.cache import ActivationCache
from qcal.quant.qmodules import QuantLayer, QuantModel

__all__ = ["GAMMA", "ZETA", "Unit", "attach_adaround", "beta_at", "harden", "optimise_unit", "qdrop", "recon_loss",
           "round_regulariser", "round_v", "soft_rounding", "unit_mse", "units"]

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class Unit:
    """What is reconstructed at once: a module of the model (a block, or one layer) and its quantized layers."""

    name: str
    layers: tuple[str, ...]

    def module(self, model: QuantModel) -> nn.Module:
        return model.model.get_submodule(self.name)


def units(qmodel: QuantModel, names: list[str], block: bool) -> list[Unit]:
    """The reconstruction units over the quantized layers `names` (execution order).

    Block mode: a layer's unit is its innermost ancestor owning >= 2 quantized layers that is not a bare
    Sequential/ModuleList, not the model itself and not a detection head (Ultralytics Detect takes a list of
    maps: each of its layers is its own unit). A module that owns layers directly around a nested block (YOLO's
    C2f: cv1, the Bottlenecks, cv2) is one unit with all of them, not three units of the same name."""
    if not block:
        return [Unit(n, (n,)) for n in names]
    counts: dict[str, int] = {}
    for n in names:
        parts = n.split(".")
        for i in range(1, len(parts)):
            counts[".".join(parts[:i])] = counts.get(".".join(parts[:i]), 0) + 1
    out: list[Unit] = []
    for n in names:
        parts = n.split(".")
        owner = n
        for i in range(len(parts) - 1, 0, -1):   # innermost ancestor first
            anc = ".".join(parts[:i])
            m = qmodel.model.get_submodule(anc)
            if counts[anc] >= 2 and not isinstance(m, nn.Sequential | nn.ModuleList) and not _is_detect_head(m):
                owner = anc
                break
        j = next((k for k in range(len(out) - 1, -1, -1) if out[k].name == owner), None)
        if j is not None and all(u.name.startswith(owner + ".") for u in out[j + 1:]):
            out[j:] = [Unit(owner, (*(lay for u in out[j:] for lay in u.layers), n))]
        else:
            out.append(Unit(owner, (n,)))
    return out


def _is_detect_head(m: nn.Module) -> bool:
    from qcal.augment.detect_loss import find_detect_head

    head = find_detect_head(m)
    return head is not None and head.box[0] == "cv2.0"   # m itself is the head, not a model containing it


# --- AdaRound ---------------------------------------------------------------------------------------------
def soft_rounding(v: torch.Tensor) -> torch.Tensor:
    """h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def round_v(layer: QuantLayer) -> torch.Tensor:
    """The layer's AdaRound variable V (set by attach_adaround)."""
    v = layer.round_v
    assert isinstance(v, torch.Tensor), "attach_adaround(layer) first"
    return v


def _adaround_weight(layer: QuantLayer, floor: torch.Tensor) -> torch.Tensor:
    s = layer.w_scale.abs().clamp_min(1e-12)
    g = layer.w_grid
    return torch.clamp(floor + soft_rounding(round_v(layer)), g.qmin, g.qmax) * s


def attach_adaround(layer: QuantLayer) -> None:
    """Give `layer` a rounding variable `round_v` (a registered parameter, so torch.func can substitute it) with
    h(V) equal to the fractional part of w/s, and make its quantized weight (floor(w/s) + h(V)) * s."""
    with torch.no_grad():
        ws = layer.weight / layer.w_scale.abs().clamp_min(1e-12)
        floor = torch.floor(ws)
        p = ((ws - floor - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
        layer.register_parameter("round_v", nn.Parameter(torch.log(p / (1 - p))))
    layer.weight_fn = functools.partial(_adaround_weight, floor=floor)


def round_regulariser(layer: QuantLayer, b: float) -> torch.Tensor:
    """sum(1 - |2 h(V) - 1|^b): zero only when every h(V) is 0 or 1."""
    return (1 - (2 * soft_rounding(round_v(layer)) - 1).abs().pow(b)).sum()


def harden(layer: QuantLayer) -> None:
    """Round up where V >= 0, write the weight on the grid (w = q * s), drop V and the rounding function."""
    with torch.no_grad():
        s = layer.w_scale.abs().clamp_min(1e-12)
        fn = layer.weight_fn
        assert isinstance(fn, functools.partial)
        g = layer.w_grid
        q = torch.clamp(fn.keywords["floor"] + (round_v(layer) >= 0).float(), g.qmin, g.qmax)
        layer.weight.copy_(q * s)
    del layer.round_v
    layer.weight_fn = None


def beta_at(it: int, iters: int, cfg: AdaQuantConfig) -> float | None:
    """The regulariser's exponent at iteration `it` (None during the warm-up: no regulariser)."""
    start = cfg.round_warmup * iters
    if it < start:
        return None
    b0, b1 = cfg.round_beta
    rel = (it - start) / max(iters - start, 1)
    return b1 + (b0 - b1) * max(0.0, 1.0 - rel)


# --- QDrop and the loss -----------------------------------------------------------------------------------
@contextmanager
def qdrop(layers: list[QuantLayer], prob: float, seed: int) -> Iterator[None]:
    """Keep each input element of `layers` in float with probability `prob` inside the block."""
    gen = torch.Generator().manual_seed(seed)
    for lay in layers:
        lay.drop = (prob, gen) if prob > 0 else None
    try:
        yield
    finally:
        for lay in layers:
            lay.drop = None


def recon_loss(y: torch.Tensor, t: torch.Tensor, rounding: Rounding) -> torch.Tensor:
    """AdaQuant's mean squared error (free rounding), or BRECQ's: summed over channels, mean over the rest."""
    if rounding is Rounding.FREE:
        return nn.functional.mse_loss(y, t)
    return (y - t).pow(2).sum(1).mean()


def unit_mse(qm: nn.Module, x_in: ActivationCache, y_fp: ActivationCache, chunk: int = 256) -> float:
    """Mean squared error of the quantized unit on its inputs vs the FP32 unit's outputs."""
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x_in), chunk):
            y = qm(x_in.get(slice(i, i + chunk)))
            total += float(((y - y_fp.get(slice(i, i + chunk))) ** 2).double().sum())
            n += y.numel()
    return total / max(n, 1)


def optimise_unit(qm: nn.Module, layers: list[QuantLayer], y_fp: ActivationCache, x_in: ActivationCache,
                  cfg: AdaQuantConfig, rng: np.random.Generator) -> dict[str, float]:
    """Adam on the unit's parameters over random minibatches; AdaRound variables are attached before and
    hardened after. Returns the last losses (reconstruction, regulariser)."""
    ada = cfg.rounding is Rounding.ADAROUND
    if ada:
        for lay in layers:
            if not isinstance(getattr(lay, "round_v", None), torch.Tensor):
                attach_adaround(lay)
        groups = [([round_v(lay) for lay in layers], cfg.lr_round, False)]
    else:
        groups = [([lay.weight for lay in layers], cfg.lr_weight, True),
                  ([lay.bias for lay in layers], cfg.lr_bias, True)]
    groups += [([lay.w_scale for lay in layers], cfg.lr_weight_scale, True),
               ([lay.a_scale for lay in layers], cfg.lr_act_scale, True)]
    active = [g for g in groups if g[1] > 0]
    last = {"rec": 0.0, "round": 0.0}
    if active and cfg.iters > 0:
        opt = torch.optim.Adam([{"params": p, "lr": lr} for p, lr, _ in active])
        # Cosine-annealed rates for weights and step sizes (as optimise_layer); AdaRound's V keeps its rate.
        cos = [(lambda k: 0.5 * (1 + np.cos(np.pi * k / cfg.iters))) if c else (lambda k: 1.0) for *_, c in active]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cos)
        n = len(x_in)
        with qdrop(layers, cfg.qdrop, int(rng.integers(2**31))):
            for it in range(cfg.iters):
                idx = np.sort(rng.choice(n, size=min(cfg.batch, n), replace=False))
                rec = recon_loss(qm(x_in.get(idx)), y_fp.get(idx), cfg.rounding)
                b = beta_at(it, cfg.iters, cfg) if ada else None
                reg = sum((round_regulariser(lay, b) for lay in layers), torch.zeros(())) if b is not None \
                    else torch.zeros(())
                loss = rec + cfg.round_weight * reg
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                last = {"rec": float(rec.detach()), "round": float(reg.detach())}
    if ada:
        for lay in layers:
            harden(lay)
    qm.zero_grad(set_to_none=True)
    return last
