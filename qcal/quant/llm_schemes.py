"""LLM quantization schemes as pure torch primitives and one module wrapper.

- W8A8: int8 symmetric per-output-channel weights; int8 activations either per-token dynamic (scale =
  max|x| of each token / 127, computed at run time) or per-tensor static (uint8 asymmetric, range from
  calibration, as ONNX Runtime's CPU kernels want).
- W4A16: 4-bit asymmetric group-wise weights (uint4 codes 0..15 with an integer zero point per group of
  `group` input channels along K, as ONNX Runtime's MatMulNBits stores them), activations kept in float.
  When K is not a multiple of the group (SmolLM2's 576 with group 128) the last group is zero-padded,
  which MatMulNBits also does (it stores ceil(K / block) blocks).

Rounding is half to even everywhere (torch.round, ONNX Round and QuantizeLinear agree).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import nn

from qcal.errors import ConfigError
from qcal.quant.fakequant import dequantize_linear, quantize_linear


class ActQuant(str, enum.Enum):
    NONE = "none"               # W4A16, or a layer kept in float
    PER_TOKEN = "per-token"     # dynamic int8, symmetric, one scale per token (row)
    PER_TENSOR = "per-tensor"   # static uint8, asymmetric, one scale from calibration


# --- weights -----------------------------------------------------------------------------------------------

def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) -> (codes int8 (N, K) in -127..127, scale float32 (N,)); w ~ codes * scale[:, None]."""
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


@dataclass(frozen=True)
class Int4Groups:
    """Group-wise uint4 weights: w[n, k] ~ (codes[n, k] - zero[n, k // group]) * scale[n, k // group]."""

    codes: torch.Tensor   # uint8 (N, K_padded), values 0..15
    scale: torch.Tensor   # float32 (N, G)
    zero: torch.Tensor    # uint8 (N, G), values 0..15
    group: int
    k: int                # real K (before padding)

    def dequantize(self) -> torch.Tensor:
        n, kp = self.codes.shape
        c = self.codes.float().view(n, -1, self.group)
        w = (c - self.zero.float()[..., None]) * self.scale[..., None]
        return w.reshape(n, kp)[:, : self.k]


def int4_group_params(wg: torch.Tensor, *, clip_grid: int = 20, min_clip: float = 0.75,
                      importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """wg (N, G, group) -> asymmetric 4-bit (scale (N, G), zero (N, G) in 0..15, both float): the group's range
    shrunk by the factor in [min_clip, 1] that minimises that group's squared round-to-nearest error, each input
    channel's error weighted by `importance` (G, group) when given (e.g. its input energy, diag of the Hessian)."""
    lo = wg.amin(dim=2).clamp(max=0.0)
    hi = wg.amax(dim=2).clamp(min=0.0)
    best_err = torch.full(lo.shape, float("inf"))
    best_scale, best_zero = torch.ones_like(lo), torch.zeros_like(lo)
    for f in torch.linspace(1.0, min_clip, clip_grid):
        scale = ((hi - lo) * f / 15.0).clamp(min=1e-12)
        zero = torch.round(-lo * f / scale).clamp(0, 15)
        q = torch.round(wg / scale[..., None] + zero[..., None]).clamp(0, 15)
        err2 = ((q - zero[..., None]) * scale[..., None] - wg).pow(2)
        err = (err2 if importance is None else err2 * importance).sum(dim=2)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def int4_groupwise(w: torch.Tensor, group: int = 128, *, clip_grid: int = 20, min_clip: float = 0.75) -> Int4Groups:
    """Asymmetric 4-bit round-to-nearest per group, with the group's range shrunk to the factor in
    [min_clip, 1] that minimises that group's squared weight error (grid of clip_grid factors)."""
    if group < 8 or group % 8:
        raise ConfigError(f"w4a16 group={group}: must be a positive multiple of 8 (e.g. 32, 64, 128).")
    n, k = w.shape
    kp = -(-k // group) * group
    wp = torch.nn.functional.pad(w.float(), (0, kp - k)).view(n, -1, group)       # (N, G, group)
    best_scale, best_zero = int4_group_params(wp, clip_grid=clip_grid, min_clip=min_clip)
    codes = torch.round(wp / best_scale[..., None] + best_zero[..., None]).clamp(0, 15)
    return Int4Groups(codes.reshape(n, kp).to(torch.uint8), best_scale.float(), best_zero.to(torch.uint8), group, k)


# --- activations -------------------------------------------------------------------------------------------

def fake_quant_per_token(x: torch.Tensor) -> torch.Tensor:
    """Dynamic symmetric int8 per token: x (..., K); one scale max|x_row| / 127 per row."""
    scale = (x.abs().amax(dim=-1, keepdim=True) / 127.0).clamp(min=1e-12)
    return dequantize_linear(quantize_linear(x, scale, 0.0, -127, 127), scale, 0.0)


def fake_quant_per_tensor(x: torch.Tensor, scale: float, zero_point: int, qmin: int = 0, qmax: int = 255) -> torch.Tensor:
    """Static asymmetric quantization with one (scale, zero point): uint8 by default. ONNX QuantizeLinear's
    arithmetic (round(x / scale) + zero point, then saturate), the primitive the YOLO simulator uses too."""
    s = torch.tensor(scale, dtype=torch.float32)
    return dequantize_linear(quantize_linear(x, s, float(zero_point), qmin, qmax), s, float(zero_point))


def static_qparams(lo: float, hi: float) -> tuple[float, int]:
    """uint8 asymmetric (scale, zero point) for an observed [lo, hi] (the range always includes 0). The scale is
    rounded to float32 first: the value the QuantTable stores and QuantizeLinear uses is the one simulated."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(torch.tensor((hi - lo) / 255.0, dtype=torch.float32)) if hi > lo else 1.0
    return scale, min(max(int(round(-lo / scale)), 0), 255)


# --- the module --------------------------------------------------------------------------------------------

class QuantLinear(nn.Module):
    """A bias-free or biased Linear whose weight is the dequantized integer weight and whose input is
    fake-quantized as `act` says. Holds the integer codes so exporters write exactly what was simulated."""

    def __init__(self, linear: nn.Linear, *, weight_bits: int, act: ActQuant, group: int = 128,
                 act_range: tuple[float, float] | None = None,
                 weights: Int4Groups | tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """weights: integer weights already chosen (e.g. by GPTQ): Int4Groups for 4 bits, (int8 codes (N, K),
        scale (N,)) for 8 bits; None rounds `linear.weight` to nearest."""
        super().__init__()
        w = linear.weight.detach().float()
        self.weight_bits, self.act, self.group = weight_bits, act, group
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.int4: Int4Groups | None = None
        if weight_bits == 8:
            q, s = weights if isinstance(weights, tuple) else int8_per_channel(w)
            self.register_buffer("w_codes", q)
            self.register_buffer("w_scale", s)
            deq = q.float() * s[:, None]
        elif weight_bits == 4:
            self.int4 = weights if isinstance(weights, Int4Groups) else int4_groupwise(w, group)
            deq = self.int4.dequantize()
        else:
            raise ConfigError(f"weight_bits={weight_bits}: choose 8 or 4.")
        self.weight = nn.Parameter(deq, requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().float(), requires_grad=False)
        self.act_scale, self.act_zero = 1.0, 0
        if act is ActQuant.PER_TENSOR:
            if act_range is None:
                raise ConfigError("per-tensor activations need a calibrated range: calibrate first.")
            self.act_scale, self.act_zero = static_qparams(*act_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is ActQuant.PER_TOKEN:
            x = fake_quant_per_token(x)
        elif self.act is ActQuant.PER_TENSOR:
            x = fake_quant_per_tensor(x, self.act_scale, self.act_zero)
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, w{self.weight_bits}, act={self.act.value}"
