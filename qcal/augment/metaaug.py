"""MetaAug (Pham et al., "MetaAug: Meta-Data Augmentation for Post-Training Quantization", ECCV 2024) as an
option of the reconstruction pass (qcal.passes.adaquant).

Per quantized layer, before the layer is reconstructed, T is trained for `iters` meta-iterations:
- inner step: one differentiable SGD step on the layer's quantization parameters (weight, bias, step sizes)
  with the reconstruction loss on T(x) (the quantized layer on the quantized model's input vs the FP32 layer on
  the FP32 model's input, both computed from T(x));
- outer step: update T with the loss of the quantized model, the layer holding the stepped parameters, on the
  ORIGINAL x of the validation view: alpha * KL of softened logits vs FP32 (for a detector: the head's box
  distributions and class scores vs FP32, qcal.augment.detect_loss) + beta * hinge(margin - mean((T(x)-x)^2))
  + gamma * PKT feature preservation (FP32 penultimate features of T(x) vs x).
The bi-level step uses torch.func (functional_call, grad): the caller's parameters are never written.
The layer is then reconstructed on the original inputs plus T(inputs) (the pass's augment hook).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad
from torch.nn import functional as F
from tqdm import tqdm

from qcal.augment.detect_loss import DetectHead, detection_fit, find_detect_head, head_maps
from qcal.augment.tnet import Augmenter, TNetSpec, TransformNet
from qcal.config import MetaAugConfig, Rounding, to_plain
from qcal.passes.reconstruct import Unit, recon_loss
from qcal.quant.fakequant import Precision
from qcal.quant.qmodules import QuantModel

__all__ = ["MetaAugTrainer", "hinge", "inner_params", "inner_step", "later_layers_float", "layer_input",
           "meta_loss", "module_io", "pkt_loss", "softened_kl"]

INNER_PARAMS = ("float_layer.weight", "float_layer.bias", "w_scale", "a_scale")
ROUND_PARAMS = ("round_v", "w_scale", "a_scale")


class _Stop(Exception):
    pass


def hinge(tx: torch.Tensor, x: torch.Tensor, margin: float) -> torch.Tensor:
    """max(0, margin - mean((T(x) - x)^2)): zero once T(x) is farther than the margin from x."""
    return F.relu(margin - (tx - x).pow(2).mean())


def softened_kl(logits_q: torch.Tensor, logits_fp: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(logits_q / temperature, 1), F.softmax(logits_fp / temperature, 1),
                    reduction="batchmean")


def pkt_loss(f_student: torch.Tensor, f_teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas): KL between the row-normalised cosine-similarity
    distributions of two feature batches; zero when the batches have the same pairwise geometry."""
    def dist(f: torch.Tensor) -> torch.Tensor:
        f = F.normalize(f.flatten(1), dim=1, eps=eps)
        s = (f @ f.T + 1.0) / 2.0
        return s / s.sum(1, keepdim=True)

    ps, pt = dist(f_student), dist(f_teacher)
    return (pt * torch.log((pt + eps) / (ps + eps))).sum(1).mean()


def module_io(model: nn.Module, module: nn.Module, x: torch.Tensor, what: str = "input") -> torch.Tensor:
    """`module`'s input (or output) when `model` runs on x, keeping the autograd graph; the forward stops there."""
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor | None = None) -> None:
        seen.append(args[0] if what == "input" else out)  # type: ignore[arg-type]
        raise _Stop

    h = (module.register_forward_pre_hook(hook) if what == "input"
         else module.register_forward_hook(lambda m, a, o: hook(m, a, o)))
    try:
        with contextlib.suppress(_Stop):
            model(x)
    finally:
        h.remove()
    return seen[0]


def layer_input(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer`'s input when `model` runs on x, keeping the autograd graph; the forward stops at the layer."""
    return module_io(model, layer, x, "input")


def inner_step(module: nn.Module, params: dict[str, torch.Tensor], x_in: torch.Tensor, target: torch.Tensor,
               lr: float, rounding: Rounding = Rounding.FREE, clip: float = 0.0) -> dict[str, torch.Tensor]:
    """params - lr * d L_rec(module_params(x_in), target) / d params, differentiable w.r.t. x_in and target
    (L_rec: the pass's reconstruction loss). `params` are detached copies: the module's tensors are never written.
    clip > 0 rescales the gradient to a global norm of at most `clip` (differentiably), bounding the step."""
    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return recon_loss(functional_call(module, p, (x_in,)), target, rounding)

    g = grad(loss)(params)
    if clip > 0:
        norm = torch.sqrt(sum((v.pow(2).sum() for v in g.values()), torch.zeros(())))
        g = {k: v * torch.clamp(clip / (norm + 1e-12), max=1.0) for k, v in g.items()}
    return {k: params[k] - lr * g[k] for k in params}


def inner_params(qmodel: QuantModel, unit: Unit, frozen: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Detached copies of the unit's quantization parameters, keyed relative to the unit's module: AdaRound's V
    (when attached) or the float weight and bias, plus the weight and input step sizes; names in `frozen`
    (e.g. "w_scale", "a_scale": what the reconstruction itself does not optimise) are left out."""
    out: dict[str, torch.Tensor] = {}
    for n in unit.layers:
        lay = qmodel.layers[n]
        rel = n[len(unit.name) + 1:] + "." if n != unit.name else ""
        keep = ROUND_PARAMS if isinstance(getattr(lay, "round_v", None), torch.Tensor) else INNER_PARAMS
        out.update({rel + k: v.detach() for k, v in lay.named_parameters() if k in keep and k not in frozen})
    return out


@contextlib.contextmanager
def later_layers_float(qmodel: QuantModel, unit: Unit) -> Iterator[None]:
    """Layers after the unit (not reconstructed yet) run in float during the meta phase, as the reference code
    does: the outer loss then measures the unit being reconstructed, not the round-to-nearest error after it."""
    names = list(qmodel.layers)
    later = [qmodel.layers[n] for n in names[names.index(unit.layers[-1]) + 1:]]
    saved = [lay.precision for lay in later]
    for lay in later:
        lay.precision = Precision.FP32
    try:
        yield
    finally:
        for lay, p in zip(later, saved, strict=True):
            lay.precision = p


def meta_loss(qmodel: QuantModel, fp_model: QuantModel, name: str, stepped: dict[str, torch.Tensor],
              x_val: torch.Tensor, x: torch.Tensor, tx: torch.Tensor, cfg: MetaAugConfig,
              var: float = 1.0, head: DetectHead | Literal["find"] | None = "find") -> tuple[torch.Tensor, dict[str, float]]:
    """The outer loss: the quantized model with module `name` holding `stepped` (keys relative to it), on the
    original validation inputs, vs FP32 (a detector: KL of the head's box distributions + binary KL of its class
    scores, qcal.augment.detect_loss; else softened-logit KL for 2-D outputs, MSE otherwise), plus the hinge
    (margin cfg.margin * var, var: the calibration inputs' variance) and the feature term on T(x). `head`: the
    detector head if the caller has already looked it up (None: not a detector), else "find" looks it up."""
    full = {f"model.{name}.{k}": v for k, v in stepped.items()}
    if isinstance(head, str):   # "find"
        head = find_detect_head(qmodel.model)
    det: dict[str, float] = {}
    if head is not None:   # a detector: box distributions + class scores of the raw head (qcal.augment.detect_loss)
        box_q, cls_q = head_maps(qmodel.model, head, lambda: functional_call(qmodel, full, (x_val,)))
        with torch.no_grad():
            box_fp, cls_fp = head_maps(fp_model.model, head, lambda: fp_model(x_val))
        fit, det = detection_fit(box_q, cls_q, box_fp, cls_fp, head.reg_max, cfg.temperature)
    else:
        out_q = _first(functional_call(qmodel, full, (x_val,)))
        with torch.no_grad():
            out_fp = _first(fp_model(x_val))
        fit = softened_kl(out_q, out_fp, cfg.temperature) if out_q.dim() == 2 else F.mse_loss(out_q, out_fp)
    last = list(fp_model.layers.values())[-1]
    feat_t = layer_input(fp_model, last, tx)
    with torch.no_grad():
        feat_x = layer_input(fp_model, last, x)
    h, f = hinge(tx, x, cfg.margin * var), pkt_loss(feat_t, feat_x)
    total = cfg.alpha * fit + cfg.beta * h + cfg.gamma * f
    return total, {**{k: float(v.detach()) for k, v in (("outer", total), ("fit", fit), ("hinge", h), ("feat", f))},
                   **det}


def _first(out: Any) -> torch.Tensor:
    """A model's main output tensor (detectors return (predictions, raw maps))."""
    return out[0] if isinstance(out, tuple | list) else out


@dataclass
class MetaAugTrainer:
    """Holds T across units (as the reference code does; its optimizer restarts per unit), the split of the
    calibration set into a training and a validation view, the time budget and the per-unit log. The bound on
    T's change (max_delta) and the hinge margin are relative to the calibration inputs' std and variance."""

    cfg: MetaAugConfig
    calib: torch.Tensor
    progress: bool = True
    net: TransformNet = field(init=False)
    train_idx: np.ndarray = field(init=False)
    val_idx: np.ndarray = field(init=False)
    log: dict[str, dict[str, float]] = field(default_factory=dict)
    spent_s: float = 0.0
    stopped_early: bool = False
    active: bool = False

    def __post_init__(self) -> None:
        self.var = float(self.calib.double().var())
        self.net = TransformNet(TNetSpec(channels=int(self.calib.shape[1]), width=self.cfg.width, seed=self.cfg.seed,
                                     max_delta=self.cfg.max_delta * self.var ** 0.5))
        self.rng = np.random.default_rng(self.cfg.seed)
        perm = self.rng.permutation(len(self.calib))
        n_val = min(max(1, round(len(perm) * self.cfg.val_fraction)), len(perm) - 1)
        self.val_idx, self.train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])

    @property
    def augmenter(self) -> Augmenter:
        # No wall time here: it is part of the content hash, which must not depend on the machine's speed.
        training = {"config": to_plain(self.cfg), "calib_n": len(self.calib), "stopped_early": self.stopped_early,
                    "meta_iters": {k: v["meta_iters"] for k, v in self.log.items()}}
        return Augmenter(self.net, training)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """The pass's augment hook: the inputs plus T(inputs) while a trained unit is reconstructed."""
        return torch.cat([x, self.augmenter(x)]) if self.active else x

    def _batch(self, idx: np.ndarray) -> torch.Tensor:
        return self.calib[np.sort(self.rng.choice(idx, size=min(self.cfg.batch, len(idx)), replace=False))]

    def train_layer(self, qmodel: QuantModel, fp_model: QuantModel, name: str, *, skip: bool) -> None:
        self.train_unit(qmodel, fp_model, Unit(name, (name,)), skip=skip)

    def train_unit(self, qmodel: QuantModel, fp_model: QuantModel, unit: Unit, *, skip: bool,
                   rounding: Rounding = Rounding.FREE, frozen: frozenset[str] = frozenset()) -> None:
        """Meta-train T for one unit (none if `skip` or the time budget is spent); log its outer losses. The inner
        step moves what the reconstruction will move: parameters named in `frozen` stay (see inner_params)."""
        cfg = self.cfg
        self.active = not skip
        if skip or cfg.iters == 0:
            return
        qm, fm = unit.module(qmodel), unit.module(fp_model)
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        first: dict[str, float] | None = None
        parts: dict[str, float] = {}
        done = 0
        head = find_detect_head(qmodel.model)   # looked up once per unit, not on every outer step
        bar = tqdm(range(cfg.iters), desc=f"metaaug {unit.name}", disable=not self.progress, leave=False)
        with later_layers_float(qmodel, unit):
            for _ in bar:
                if cfg.time_budget_s and self.spent_s >= cfg.time_budget_s:
                    self.stopped_early = True
                    break
                t0 = time.perf_counter()
                self.net.train()
                x, x_val = self._batch(self.train_idx), self._batch(self.val_idx)
                tx = self.net(x)
                target = module_io(fp_model, fm, tx, "output")
                stepped = inner_step(qm, inner_params(qmodel, unit, frozen), module_io(qmodel, qm, tx), target, cfg.inner_lr,
                                     rounding, cfg.inner_clip)
                loss, parts = meta_loss(qmodel, fp_model, unit.name, stepped, x_val, x, tx, cfg, self.var, head)
                tparams = list(self.net.parameters())
                grads = torch.autograd.grad(loss, tparams, allow_unused=True)
                for p, g in zip(tparams, grads, strict=True):
                    p.grad = g
                nn.utils.clip_grad_norm_(tparams, cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
                first = first or dict(parts)
                done += 1
                self.spent_s += time.perf_counter() - t0
                bar.set_postfix({k: f"{v:.3g}" for k, v in parts.items()})
        self.net.eval()
        with torch.no_grad():
            x = self.calib[self.val_idx]
            rms = float((self.augmenter(x) - x).pow(2).mean().sqrt()) / self.var ** 0.5
        self.log[unit.name] = {"meta_iters": float(done), **{f"{k}_first": v for k, v in (first or {}).items()},
                               **{f"{k}_last": v for k, v in parts.items()}, "change_rms_over_std": rms}

    def summary(self) -> dict[str, Any]:
        return {"hash": self.augmenter.hash, "spent_s": round(self.spent_s, 2), "stopped_early": self.stopped_early,
                "train_n": len(self.train_idx), "val_n": len(self.val_idx), "input_std": self.var ** 0.5,
                "per_unit": self.log, "per_layer": self.log}
