"""BN re-estimation: re-fit the folded BatchNorm statistics on the quantized model.

Quantization shifts each conv's pre-BN mean and spread, but the folded BN still normalises with the FP32
statistics. For every conv that had a BN (QuantModel.bn_targets: the BN's beta and |gamma|, i.e. the mean and
std its output had in training), in execution order so later layers see corrected inputs, we measure the
quantized output's per-channel mean m_q and std s_q on the calibration set and refit:
    y' = (y - m_q) * |gamma| / s_q + beta
which is exactly BN with re-estimated running statistics, folded again: weights and weight step sizes are
scaled by a = |gamma| / s_q (the integer weights do not change) and the bias becomes a * (b - m_q) + beta.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qcal.passes.base import PassContext, PassReport, channel_stats, paired_mse
from qcal.quant.qmodules import QuantLayer


def refit(layer: QuantLayer, a: torch.Tensor, shift: torch.Tensor) -> None:
    """y -> a * y + shift per output channel, folded into weight, weight step size and bias (a > 0)."""
    view = (-1, *([1] * (layer.weight.dim() - 1)))
    with torch.no_grad():
        layer.weight.mul_(a.reshape(view))
        layer.w_scale.mul_(a.reshape(view))
        layer.bias.mul_(a).add_(shift)


def _affine(a: torch.Tensor, shift: torch.Tensor, view: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda y: y * a.reshape(view) + shift.reshape(view)


class BnReestimate:
    name = "bn_reestimate"

    def run(self, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        targets = ctx.qmodel.bn_targets
        for name, q, _fp in ctx.quantized_layers():
            if name not in targets:
                continue
            yq, yf = ctx.capture("q", name, "output"), ctx.capture("fp", name, "output")
            m_q, s_q = channel_stats(yq)
            t = targets[name]
            a = torch.where(s_q > 1e-6, t.std / s_q.clamp_min(1e-6), torch.ones_like(s_q))
            shift = t.mean - a * m_q
            view = (1, -1, *([1] * (yq.data.ndim - 2)))
            before = paired_mse(yq, yf)
            after = paired_mse(yq, yf, _affine(a, shift, view))
            refit(q, a, shift)
            report.per_layer[name] = {"mse_before": before, "mse_after": after,
                                      "mean_abs_scale_change": float((a - 1).abs().mean())}
            yq.close()
            yf.close()
        report.changed = {"layers_refit": len(report.per_layer),
                          "skipped_no_bn": [n for n, _, _ in ctx.quantized_layers() if n not in targets]}
        return report
