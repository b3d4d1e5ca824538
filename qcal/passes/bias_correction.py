"""Bias correction: shift each quantized layer's bias so its mean output per channel matches FP32.

Layers are corrected in execution order, each measured on the quantized model with the earlier layers already
corrected (inputs from the quantized model, targets from the FP32 model, on the calibration set).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qcal.passes.base import PassContext, PassReport, channel_stats, paired_mse


def _shift(d: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda y: y + d


class BiasCorrection:
    name = "bias_correction"

    def run(self, ctx: PassContext) -> PassReport:
        report = PassReport(self.name)
        shifts = []
        for name, q, _fp in ctx.quantized_layers():
            yq, yf = ctx.capture("q", name, "output"), ctx.capture("fp", name, "output")
            m_q, _ = channel_stats(yq)
            m_f, _ = channel_stats(yf)
            delta = m_f - m_q
            view = (1, -1, *([1] * (yq.data.ndim - 2)))
            before = paired_mse(yq, yf)
            after = paired_mse(yq, yf, _shift(delta.reshape(view)))
            with torch.no_grad():
                q.bias.add_(delta)
            report.per_layer[name] = {"mse_before": before, "mse_after": after,
                                      "mean_abs_shift": float(delta.abs().mean())}
            shifts.append(float(delta.abs().mean()))
            yq.close()
            yf.close()
        report.changed = {"biases_shifted": len(shifts)}
        return report
