"""AdaQuant (Hubara et al., "Improving Post Training Neural Quantization: Layer-wise Calibration and Integer
Programming"): per layer, minimise ||Q(W, b, s_w, s_a)(x) - W_fp x_fp||^2 over the calibration set with Adam,
optimising the weights, the bias and both step sizes.

Modes:
- parallel: each layer's input is the FP32 model's activation (layers are independent; their results can be
  mixed freely afterwards, which bit allocation uses).
- sequential: each layer's input comes from the quantized model with every earlier layer already optimised,
  for EVERY calibration sample (the reference code replaced only the first cached batch).
The target is always the FP32 layer applied to the FP32 input. One layer's inputs are held at a time, in RAM
up to `max_memory_mb`, on disk (memmap) beyond.
Defaults follow the paper's code: 1000 iterations, batch 50, lr 1e-5 (weights), 1e-3 (bias), 1e-3 (weight
step sizes), 1e-1 (input step sizes).

The same pass runs BRECQ-style block reconstruction, AdaRound and QDrop (granularity="block",
rounding="adaround", qdrop > 0; qcal.passes.reconstruct); with the defaults (layer, free, qdrop 0) it is
plain AdaQuant, bit-identical to the layer loop below.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from qcal.config import AdaQuantConfig, AdaQuantMode, Granularity, Rounding
from qcal.passes.base import PassContext, PassReport
from qcal.passes.cache import ActivationCache, capture
from qcal.passes.reconstruct import Unit, attach_adaround, optimise_unit, unit_mse, units
from qcal.quant.qmodules import QuantLayer

__all__ = ["AdaQuant", "AdaQuantConfig", "AdaQuantMode", "layer_mse", "optimise_layer"]


def layer_mse(q: QuantLayer, fp: QuantLayer, x_in: ActivationCache, x_fp: ActivationCache, chunk: int = 256) -> float:
    """Mean squared error of the quantized layer on its inputs vs the FP32 layer on FP32 inputs."""
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x_in), chunk):
            y = q(x_in.get(slice(i, i + chunk)))
            t = fp.forward_float(x_fp.get(slice(i, i + chunk)))
            total += float(((y - t) ** 2).double().sum())
            n += y.numel()
    return total / max(n, 1)


def targets(fp: QuantLayer, x_fp: ActivationCache, max_memory_mb: float, chunk: int = 256) -> ActivationCache:
    """The FP32 layer's outputs on its FP32 inputs, every sample, computed once (bounded like the inputs)."""
    out: ActivationCache | None = None
    with torch.no_grad():
        for i in range(0, len(x_fp), chunk):
            y = fp.forward_float(x_fp.get(slice(i, i + chunk)))
            if out is None:
                out = ActivationCache(len(x_fp), tuple(y.shape[1:]), max_memory_mb, None)
            out.append(y)
    assert out is not None
    return out


def optimise_layer(q: QuantLayer, y_fp: ActivationCache, x_in: ActivationCache, cfg: AdaQuantConfig,
                   rng: np.random.Generator) -> None:
    """Adam on (weight, bias, weight step sizes, input step size) of one layer, random minibatches."""
    groups = [(q.weight, cfg.lr_weight), (q.bias, cfg.lr_bias), (q.w_scale, cfg.lr_weight_scale),
              (q.a_scale, cfg.lr_act_scale)]
    active = [{"params": [p], "lr": lr} for p, lr in groups if lr > 0]
    if not active or cfg.iters == 0:
        return
    opt = torch.optim.Adam(active)
    # Cosine-annealed learning rates (the reference code keeps them constant): with a constant rate the
    # straight-through weights keep flipping across rounding boundaries; measured on a toy layer, a constant
    # rate raised the layer MSE while the annealed one lowered it.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.iters, 1))
    n = len(x_in)
    for _ in range(cfg.iters):
        idx = np.sort(rng.choice(n, size=min(cfg.batch, n), replace=False))
        loss = torch.nn.functional.mse_loss(q(x_in.get(idx)), y_fp.get(idx))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    q.zero_grad(set_to_none=True)


class AdaQuant:
    """The one reconstruction pass; `name` ("adaquant" or its alias "reconstruct") is the name its report carries."""

    name = "adaquant"

    def __init__(self, config: AdaQuantConfig | None = None, *, name: str = "adaquant") -> None:
        self.config = config or AdaQuantConfig()
        self.name = name

    def layer_inputs(self, ctx: PassContext, name: str) -> tuple[ActivationCache, ActivationCache]:
        """(inputs the quantized layer is optimised on, FP32 inputs for the target), every calibration sample."""
        inputs = ctx.inputs  # augmented once per layer so both captures see the same samples
        x_fp = ctx.capture("fp", name, "input", inputs)
        if self.config.mode is AdaQuantMode.PARALLEL:
            return x_fp, x_fp
        return ctx.capture("q", name, "input", inputs), x_fp

    @property
    def plain(self) -> bool:
        """AdaQuant as published: layer-wise, free rounding, no QDrop (the original loop)."""
        c = self.config
        return c.granularity is Granularity.LAYER and c.rounding is Rounding.FREE and c.qdrop == 0

    @property
    def frozen(self) -> frozenset[str]:
        """Step sizes the unit reconstruction does not learn (lr 0): MetaAug's inner step leaves them too."""
        c = self.config
        return frozenset(k for k, lr in (("w_scale", c.lr_weight_scale), ("a_scale", c.lr_act_scale)) if lr == 0)

    def unit_io(self, ctx: PassContext, unit: Unit) -> tuple[ActivationCache, ActivationCache]:
        """(the unit's inputs in the model being optimised, the FP32 unit's outputs on FP32 inputs)."""
        inputs = ctx.inputs
        fpm = unit.module(ctx.fp_model)
        y_fp = capture(ctx.fp_model, fpm, inputs, what="output", batch=ctx.batch, max_memory_mb=ctx.max_memory_mb,
                       folder=ctx.cache_dir)
        src = ctx.fp_model if self.config.mode is AdaQuantMode.PARALLEL else ctx.qmodel
        x_in = capture(src, unit.module(src), inputs, what="input", batch=ctx.batch,
                       max_memory_mb=ctx.max_memory_mb, folder=ctx.cache_dir)
        return x_in, y_fp

    def run_units(self, ctx: PassContext, report: PassReport, meta: Any) -> None:
        """Block / AdaRound / QDrop reconstruction, one unit at a time, never leaving a unit worse than before."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed)
        layers = ctx.quantized_layers()
        plan = units(ctx.qmodel, [n for n, _, _ in layers], cfg.granularity is Granularity.BLOCK)
        report.changed.update({"granularity": cfg.granularity.value, "rounding": cfg.rounding.value,
                               "qdrop": cfg.qdrop, "units": {u.name: list(u.layers) for u in plan}})
        bar = tqdm(plan, desc=f"reconstruct ({cfg.granularity.value}, {cfg.rounding.value})",
                   disable=not ctx.progress, leave=False)
        for i, unit in enumerate(bar):
            qm = unit.module(ctx.qmodel)
            qlayers = [ctx.qmodel.layers[n] for n in unit.layers]
            saved = {k: v.detach().clone() for k, v in qm.state_dict().items()}
            if cfg.rounding is Rounding.ADAROUND:   # V exists before the meta phase: its inner step moves V
                for lay in qlayers:
                    attach_adaround(lay)
            if meta is not None:
                edge = i in (0, len(plan) - 1) and cfg.augment is not None and cfg.augment.skip_first_last
                meta.train_unit(ctx.qmodel, ctx.fp_model, unit, skip=edge, rounding=cfg.rounding,
                                frozen=self.frozen)
            x_in, y_fp = self.unit_io(ctx, unit)
            fns = [lay.weight_fn for lay in qlayers]   # measure round-to-nearest, not AdaRound's soft start
            for lay in qlayers:
                lay.weight_fn = None
            before = unit_mse(qm, x_in, y_fp)
            for lay, fn in zip(qlayers, fns, strict=True):
                lay.weight_fn = fn
            losses = optimise_unit(qm, qlayers, y_fp, x_in, cfg, rng)
            after = unit_mse(qm, x_in, y_fp)
            reverted = after > before
            if reverted:
                qm.load_state_dict(saved)
            report.per_layer[unit.name] = {"mse_before": before, "mse_after": min(before, after),
                                           "mse_optimised": after, "reverted": float(reverted),
                                           "loss_rec_last": losses["rec"], "loss_round_last": losses["round"]}
            bar.set_postfix({"mse": f"{min(before, after):.3g}"})
            x_in.close()
            y_fp.close()

    def run(self, ctx: PassContext) -> PassReport:
        cfg = self.config
        report = PassReport(self.name, changed={"mode": cfg.mode.value, "iters": cfg.iters, "batch": cfg.batch})
        rng = np.random.default_rng(cfg.seed)
        for p in ctx.fp_model.parameters():
            p.requires_grad_(False)
        layers = ctx.quantized_layers()
        meta, saved_hook = None, ctx.augment
        if cfg.augment is not None:   # MetaAug: T is trained per layer and feeds the reconstruction via the hook
            from qcal.augment.metaaug import MetaAugTrainer

            meta = MetaAugTrainer(cfg.augment, ctx.calib, progress=ctx.progress)
            ctx.augment = meta.augment if saved_hook is None else (lambda x: meta.augment(saved_hook(x)))
        if not self.plain:
            self.run_units(ctx, report, meta)
            layers = []
        for i, (name, q, fp) in enumerate(tqdm(layers, desc=f"adaquant ({cfg.mode.value})", disable=not ctx.progress,
                                leave=False)):
            if meta is not None:
                edge = i in (0, len(layers) - 1) and cfg.augment is not None and cfg.augment.skip_first_last
                meta.train_layer(ctx.qmodel, ctx.fp_model, name, skip=edge)
            x_in, x_fp = self.layer_inputs(ctx, name)
            before = layer_mse(q, fp, x_in, x_fp)
            saved = {k: v.detach().clone() for k, v in q.state_dict().items()}
            y_fp = targets(fp, x_fp, ctx.max_memory_mb)
            optimise_layer(q, y_fp, x_in, cfg, rng)
            y_fp.close()
            after = layer_mse(q, fp, x_in, x_fp)
            reverted = after > before   # never leave a layer worse than round-to-nearest on the calibration set
            change = float((q.weight.detach() - saved["float_layer.weight"]).norm() / saved["float_layer.weight"].norm())
            if reverted:
                q.load_state_dict(saved)
            report.per_layer[name] = {"mse_before": before, "mse_after": min(before, after),
                                      "mse_optimised": after, "reverted": float(reverted),
                                      "weight_rel_change": 0.0 if reverted else change}
            x_in.close()
            x_fp.close()
        report.changed["layers_optimised"] = len(report.per_layer)
        report.changed["layers_reverted"] = [n for n, v in report.per_layer.items() if v["reverted"]]
        if meta is not None:
            ctx.augment = saved_hook
            report.changed["metaaug"] = meta.summary()
            report.augmenter = meta.augmenter
        return report
