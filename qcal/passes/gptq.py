"""The GPTQ pass of the LLM path: layer-wise weight reconstruction, decoder layer by decoder layer.

The standard sequential scheme (GPTQ's reference llama.py): the calibration windows' hidden states at the input
of decoder layer 0 are captured once; then for each decoder layer k
1. run layer k (float Linears) on the current hidden states, accumulating each Linear's input Hessian
   H = 2 X^T X / T (hooks; all Linears of the layer at once, as the reference does);
2. solve each Linear with `qcal.quant.gptq.gptq` and swap in the QuantLinear that `make` builds from the result;
3. run the now quantized layer again: its outputs are the inputs of layer k + 1.
So the Hessians of layer k see the errors of the quantized layers < k, and the model is never run end to end
more than once (the capture). Memory: the hidden states of all windows (windows x seq_len x hidden floats, 19 MB
for 16 x 512 x 576) plus one layer's Hessians.

Why GPTQ and not the AdaQuant pass (qcal.passes.adaquant) for LLM weights: AdaQuant learns weights and scales by
gradient descent (1000 Adam steps per layer in its paper's setting) on cached layer inputs, which costs minutes per
layer on a CPU and keeps the inputs of the layer for every sample; GPTQ is a closed-form second-order solve per
Linear from one K x K matrix (seconds per decoder layer here), needs no learning rate, and its output is integer
codes on the exported grid. Both minimise the same layer-output error; for 210 Linears on 2 cores only the
closed-form one fits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from qcal.errors import ConfigError
from qcal.passes.awq import search_scales
from qcal.passes.smoothquant import SmoothGroup, fold_scales, llama_groups
from qcal.quant.gptq import GPTQWeights, Hessian, gptq, rtn_like

Make = Callable[[str, nn.Linear, GPTQWeights], nn.Module]


class _Stop(Exception):
    """Raised by the capture hook at decoder layer 0: the rest of the forward pass is skipped."""


@dataclass
class GPTQReport:
    """Per Linear: GPTQ's proxy loss. Per decoder layer: its output's relative squared error against the same
    layer in float, on the same (already quantized upstream) inputs."""

    linears: dict[str, float] = field(default_factory=dict)
    scales: dict[str, dict[str, float]] = field(default_factory=dict)   # producer -> alpha, error ratio (AWQ)
    layer_rel_err: dict[str, float] = field(default_factory=dict)
    windows: int = 0
    tokens: int = 0
    seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        errs = list(self.layer_rel_err.values())
        return {"windows": self.windows, "tokens": self.tokens, "seconds": round(self.seconds, 1),
                "options": self.options, "linears": len(self.linears),
                "scale_search": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in self.scales.items()},
                "layer_rel_err_max": round(max(errs), 6) if errs else None,
                "layer_rel_err": {k: round(v, 6) for k, v in self.layer_rel_err.items()}}


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder layers (e.g. model.layers of a Llama): the longest list of repeated blocks."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ConfigError(f"gptq: {type(model).__name__} has no list of decoder layers; drop 'gptq' from passes.")
    return max(lists, key=lambda nm: len(nm[1]))


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, first: nn.Module, windows: list[list[int]]
                         ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
    """(hidden states, keyword arguments) with which the model calls its first decoder layer, per window."""
    seen: list[tuple[torch.Tensor, dict[str, Any]]] = []

    def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        seen.append((hidden.detach(), {k: v for k, v in kwargs.items()}))
        raise _Stop

    h = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for w in windows:
            with contextlib.suppress(_Stop):
                model(input_ids=torch.tensor([w]), use_cache=False)
    finally:
        h.remove()
    return seen


def _run(layer: nn.Module, inputs: list[tuple[torch.Tensor, dict[str, Any]]]) -> list[torch.Tensor]:
    outs = []
    for hidden, kw in inputs:
        out = layer(hidden, **kw)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


@torch.no_grad()
def apply_gptq(model: nn.Module, windows: list[list[int]], names: list[str], make: Make, *, bits: int,
               group: int, damp: float = 0.01, block: int = 128, act_order: bool = False,
               scale_search: bool = False, weighted_clip: bool = False, progress: bool = True) -> GPTQReport:
    """Quantize the Linears `names` of `model` in place with GPTQ, decoder layer by decoder layer; `make(name,
    linear, weights)` builds the module that replaces each. Linears outside the decoder layers are left alone
    (the caller rounds them to nearest). scale_search: an AWQ-style per-channel scale search folded into each
    layer before its solve (qcal/passes/awq.py; weight-only schemes). Returns what the pass did."""
    t0 = time.perf_counter()
    prefix, layers = decoder_layers(model)
    report = GPTQReport(windows=len(windows), tokens=sum(len(w) for w in windows),
                        options={"bits": bits, "group": group, "damp": damp, "block": block, "act_order": act_order,
                                 "scale_search": scale_search, "weighted_clip": weighted_clip})
    groups = llama_groups(model) if scale_search else []
    inputs = capture_layer_inputs(model, layers[0], windows)
    for k, layer in enumerate(tqdm(layers, desc="gptq", disable=not progress, leave=False)):
        lp = f"{prefix}.{k}."
        mods = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear) and lp + n in names}
        hess = {n: Hessian(m.in_features) for n, m in mods.items()}
        handles = [m.register_forward_pre_hook(_accumulate(hess[n])) for n, m in mods.items()]
        try:
            ref = _run(layer, inputs)
        finally:
            for h in handles:
                h.remove()
        for grp in groups:
            if grp.producer.startswith(lp) and all(c[len(lp):] in mods for c in grp.consumers):
                _scale_search(model, grp, lp, mods, hess, bits, group, report)
        for n, m in mods.items():
            res = gptq(m.weight, hess[n].matrix(), bits=bits, group=group, damp=damp, block=block,
                       act_order=act_order, weighted_clip=weighted_clip)
            report.linears[lp + n] = res.proxy_loss
            parent, _, child = n.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, child, make(lp + n, m, res))
        outs = _run(layer, inputs) if mods else ref
        num = sum(float((o - r).pow(2).sum()) for o, r in zip(outs, ref, strict=True))
        den = sum(float(r.pow(2).sum()) for r in ref)
        report.layer_rel_err[f"{prefix}.{k}"] = num / max(den, 1e-30)
        inputs = [(o, kw) for o, (_, kw) in zip(outs, inputs, strict=True)]
    report.seconds = time.perf_counter() - t0
    return report


def _scale_search(model: nn.Module, grp: SmoothGroup, lp: str, mods: dict[str, nn.Linear], hess: dict[str, Hessian],
                  bits: int, group: int, report: GPTQReport) -> None:
    """Choose and fold one group's AWQ scales; the consumers' Hessians follow their inputs (x / s)."""
    cons = [grp_c[len(lp):] for grp_c in grp.consumers]
    s, alpha, ratio = search_scales(hess[cons[0]].matrix(), [mods[c].weight.float() for c in cons],
                                    lambda w: rtn_like(w, bits=bits, group=group, clip_grid=1))
    fold_scales(model.get_submodule(grp.producer), [mods[c] for c in cons], grp.kind, s)
    for c in cons:
        hess[c].sum /= torch.outer(s, s).double()
    report.scales[grp.producer] = {"alpha": alpha, "rtn_error_ratio": ratio}


def _accumulate(h: Hessian) -> Callable[[nn.Module, tuple[Any, ...]], None]:
    def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        h.add(args[0])
    return hook
