"""Differentiable fake quantization in torch (pure functions, no modules, no state).

Rounding uses a straight-through estimator; clamping passes no gradient to x outside the range, and the
step size gets the LSQ-style gradient, so AdaQuant can optimise weights, biases and step sizes together.
torch.round rounds half to even, as ONNX QuantizeLinear does, so a fake-quantized tensor equals the
dequantized output of the exported QDQ graph for the same scale and zero point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcal.errors import ConfigError
from qcal.quant.precision import Precision


@dataclass(frozen=True)
class IntGrid:
    """An integer grid: qmin..qmax. Weights use the narrow signed grid (-(2^(b-1)-1)..2^(b-1)-1, zero point 0);
    activations use unsigned 0..2^b-1 when they are never negative (after ReLU), else the narrow signed grid."""

    qmin: int
    qmax: int

    @staticmethod
    def of(bits: int, *, signed: bool) -> IntGrid:
        if not 2 <= bits <= 16:
            raise ConfigError(f"bits={bits}: integer fake quantization supports 2..16 bits.")
        if signed:
            return IntGrid(-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        return IntGrid(0, 2**bits - 1)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return (torch.round(x) - x).detach() + x


def quantize_linear(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float, qmin: int, qmax: int,
                    *, ste: bool = False) -> torch.Tensor:
    """ONNX QuantizeLinear: clamp(round(x / scale) + zero_point, qmin, qmax), round half to even; the integer
    codes are returned as floats. ste=True: the straight-through rounding the passes differentiate through.
    The one quantization primitive: the simulator's Q nodes and every pass's fake quantization call it."""
    if ste:
        return torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    q = x / scale
    if q.requires_grad or not _fits(q, zero_point):
        return torch.clamp(torch.round(q) + zero_point, qmin, qmax)
    return q.round_().add_(zero_point).clamp_(qmin, qmax)   # the same arithmetic, one buffer (the simulator's hot path)


def dequantize_linear(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | float) -> torch.Tensor:
    """ONNX DequantizeLinear: (q - zero_point) * scale."""
    y = q - zero_point
    return y * scale if y.requires_grad or not _fits(y, scale) else y.mul_(scale)


def _fits(buffer: torch.Tensor, operand: torch.Tensor | float) -> bool:
    """Whether `operand` can be applied to `buffer` in place (it broadcasts to the buffer's shape)."""
    if not isinstance(operand, torch.Tensor) or operand.dim() == 0:
        return True
    if operand.dim() > buffer.dim():
        return False
    return all(o in (1, b) for o, b in zip(reversed(operand.shape), reversed(buffer.shape), strict=False))


def fake_quant(x: torch.Tensor, scale: torch.Tensor, grid: IntGrid) -> torch.Tensor:
    """Symmetric / unsigned (zero point 0) fake quantization. `scale` broadcasts against x (per channel: shape
    (C, 1, 1, 1) for a conv weight). Gradients flow to x inside the range and to scale everywhere."""
    s = scale.abs().clamp_min(1e-12)
    return dequantize_linear(quantize_linear(x, s, 0.0, grid.qmin, grid.qmax, ste=True), s, 0.0)


def to_fp16(x: torch.Tensor) -> torch.Tensor:
    """Simulated FP16 storage/compute of a float tensor (round to half, back to float32)."""
    return x.half().float()


def weight_scale_minmax(w: torch.Tensor, grid: IntGrid) -> torch.Tensor:
    """Per-output-channel scale from |w| max (channel axis 0), shaped to broadcast against w."""
    absmax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1).clamp_min(1e-8)
    return (absmax / grid.qmax).reshape(-1, *([1] * (w.dim() - 1)))


def mse_scale(x: torch.Tensor, grid: IntGrid, *, steps: int = 100, lo: float = 0.2,
              max_elements: int = 1 << 18) -> torch.Tensor:
    """Per-tensor scale minimising the fake-quantization MSE of x, searched over clipping ratios lo..1 of the
    largest magnitude (the grid ends at the clip value). The error is measured on an evenly strided subsample of
    at most max_elements values (the largest magnitude always comes from the whole tensor). Returns a 0-d tensor."""
    x = x.detach().float().reshape(-1)
    amax_full = float(x.abs().max()) if grid.qmin < 0 else float(x.clamp_min(0).max())
    if x.numel() > max_elements:
        x = x[:: x.numel() // max_elements]
    if grid.qmin == 0:
        x = x.clamp_min(0)
    amax = amax_full
    if amax == 0.0:
        return torch.tensor(1.0)
    best, best_err = amax / grid.qmax, float("inf")
    for r in torch.linspace(lo, 1.0, steps).tolist():
        s = torch.tensor(amax * r / grid.qmax)
        err = float(((fake_quant(x, s, grid) - x) ** 2).mean())
        if err < best_err:
            best, best_err = float(s), err
    return torch.tensor(best)


__all__ = ["IntGrid", "Precision", "dequantize_linear", "fake_quant", "quantize_linear", "mse_scale", "round_ste", "to_fp16", "weight_scale_minmax"]
