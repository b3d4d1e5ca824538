"""GPTQ (Frantar et al., 2022): choose a Linear's integer weights so that its OUTPUT on calibration inputs
stays close, not just its weights. Pure tensors in, tensors out; no model knowledge.

For y = x W^T with W (N, K) and inputs x (T, K), the output error of a weight change is tr(dW H dW^T) with
H = 2 X^T X / T (K, K). GPTQ quantizes the columns of W one at a time and spreads each column's rounding error
over the columns not yet quantized, weighted by the inverse Hessian (the optimal-brain-surgeon update), so the
later columns compensate. Per column q (in a block of `block` columns, the rest updated lazily per block):

    err = (w_q - quant(w_q)) / Hinv[q, q]         (N,)
    W[:, q+1:] -= err  Hinv[q, q+1:]               with Hinv the upper Cholesky factor of H^-1

Details as in the reference implementation (IST-DASLab/gptq):
- dampening: H += damp * mean(diag H) * I (percdamp 0.01) so H is invertible with few tokens;
- dead inputs (diag H = 0, a channel never non-zero on the calibration set): weight set to 0, H_qq = 1;
- act_order (desc_act): columns in order of decreasing diag(H) (the most active inputs first, while many
  columns are left to absorb their error). Group parameters are then fixed from the original weights before
  the loop ("static groups"), so a group still means `group` consecutive input channels and the stored format
  (codes, scale, zero per group) is the same as without act_order;
- without act_order a group's scale and zero are chosen when the loop reaches its first column, from the
  weights as updated so far (the reference's default).

The grids are the ones `QuantLinear` stores and exports (qcal.quant.llm_schemes):
- bits=4: asymmetric uint4 per group of `group` input channels, range chosen by the same per-group clipping
  search as round-to-nearest (`int4_group_params`), the last group of a K not divisible by `group` shorter;
- bits=8: symmetric int8 per output channel (-127..127), scale max|w| / 127.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcal.errors import CalibrationError, ConfigError
from qcal.quant.llm_schemes import Int4Groups, int4_group_params


class Hessian:
    """Streaming H = 2 X^T X / T over the rows of inputs x (..., K), summed in float64."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.sum = torch.zeros(k, k, dtype=torch.float64)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.k).float()
        self.sum += (x.T @ x).double()          # float32 product per call (fast), float64 running sum
        self.rows += int(x.shape[0])

    def matrix(self) -> torch.Tensor:
        if self.rows == 0:
            raise CalibrationError("GPTQ: the layer saw no calibration input; give calibration windows that reach "
                                   "it.")
        return (2.0 * self.sum / self.rows).float()


@dataclass(frozen=True)
class GPTQWeights:
    """Integer weights chosen by GPTQ, in the original column order: w[n, k] ~ (codes - zero[g]) * scale[g] with
    g = k // group. For bits=8 there is one group per row (group = K) and zero is 0."""

    codes: torch.Tensor    # int32 (N, K)
    scale: torch.Tensor    # float32 (N, G)
    zero: torch.Tensor     # float32 (N, G), integers
    group: int
    bits: int
    proxy_loss: float      # sum over columns of (w - q)^2 / (2 Hinv_qq^2): GPTQ's own error estimate

    def dequantize(self) -> torch.Tensor:
        g = torch.arange(self.codes.shape[1]) // self.group
        return (self.codes.float() - self.zero[:, g]) * self.scale[:, g]

    def int4_groups(self) -> Int4Groups:
        """The MatMulNBits layout QuantLinear exports: codes zero-padded (at the zero point) to whole groups."""
        if self.bits != 4:
            raise ConfigError(f"int4_groups() of {self.bits}-bit GPTQ weights: only bits=4 has that layout.")
        n, k = self.codes.shape
        kp = -(-k // self.group) * self.group
        pad = self.zero[:, -1:].expand(n, kp - k)
        codes = torch.cat([self.codes.float(), pad], dim=1)
        return Int4Groups(codes.to(torch.uint8), self.scale.float(), self.zero.to(torch.uint8), self.group, k)

    def int8(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(int8 codes (N, K), scale (N,)) as QuantLinear stores 8-bit weights."""
        if self.bits != 8:
            raise ConfigError(f"int8() of {self.bits}-bit GPTQ weights: only bits=8 has that layout.")
        return self.codes.to(torch.int8), self.scale[:, 0].float()


def _params(cols: torch.Tensor, bits: int, importance: torch.Tensor | None = None, clip_grid: int = 20
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale (N,), zero (N,)) for one group's current columns (N, width); importance (width,) weights the
    clipping search's error per column; clip_grid=1: the full min/max range, no search."""
    if bits == 4:
        s, z = int4_group_params(cols[:, None, :], clip_grid=clip_grid,
                                 importance=None if importance is None else importance[None, :])
        return s[:, 0], z[:, 0]
    scale = (cols.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    return scale, torch.zeros_like(scale)


def _quant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Integer codes of a column w (N,) on the grid (scale, zero) (N,)."""
    return torch.round(w / scale + zero).clamp(lo, hi)


def gptq(w: torch.Tensor, h: torch.Tensor, *, bits: int = 4, group: int = 128, damp: float = 0.01,
         block: int = 128, act_order: bool = False, weighted_clip: bool = False) -> GPTQWeights:
    """Quantize w (N, K) against the input Hessian h (K, K) (see `Hessian`). Returns integer weights in the
    original column order. bits=4: asymmetric groups of `group` input channels; bits=8: symmetric per row.
    weighted_clip: the 4-bit groups' clipping search weighs each input channel's error by diag(H) (its input
    energy) instead of equally."""
    if bits not in (4, 8):
        raise ConfigError(f"gptq bits={bits}: choose 4 (group-wise uint4) or 8 (per-channel int8).")
    if block < 1 or damp < 0 or (bits == 4 and (group < 8 or group % 8)):
        raise ConfigError(f"gptq: block={block} must be >= 1, damp={damp} >= 0 and group={group} a positive "
                          "multiple of 8 (e.g. 128).")
    n, k = w.shape
    if h.shape != (k, k):
        raise ConfigError(f"gptq: Hessian {tuple(h.shape)} does not match the weight's K={k}; accumulate it from "
                          "this layer's inputs.")
    group = group if bits == 4 else k
    lo, hi = (0, 15) if bits == 4 else (-127, 127)
    W = w.detach().float().clone()
    H = h.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    n_groups = -(-k // group)
    scale = torch.zeros(n, n_groups)
    zero = torch.zeros(n, n_groups)
    imp = torch.diag(H) if weighted_clip else None
    if act_order:      # static groups: every group's grid from the original weights, before any update
        for g in range(n_groups):
            sl = slice(g * group, (g + 1) * group)
            scale[:, g], zero[:, g] = _params(W[:, sl], bits, None if imp is None else imp[sl])
        perm = torch.argsort(torch.diag(H), descending=True)
    else:
        perm = torch.arange(k)
    W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp * float(torch.diag(H).mean()))
    hinv = _upper_cholesky_of_inverse(H, damp)

    Q = torch.zeros(n, k)
    loss = torch.zeros(())
    cols = perm.tolist()
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        W1, Hb = W[:, b0:b1].clone(), hinv[b0:b1, b0:b1]
        E = torch.zeros(n, b1 - b0)
        for i in range(b1 - b0):
            col = cols[b0 + i]
            g = col // group
            if not act_order and col % group == 0:   # first column of a group: its grid from the updated weights
                width = min(group, k - col)
                cur = torch.cat([W1[:, i:], W[:, b1:]], dim=1)[:, :width]
                scale[:, g], zero[:, g] = _params(cur, bits, None if imp is None else imp[col:col + width])
            w_col, d = W1[:, i], Hb[i, i]
            s_g, z_g = scale[:, g], zero[:, g]
            q = _quant(w_col, s_g, z_g, lo, hi)
            Q[:, b0 + i] = q
            err = (w_col - (q - z_g) * s_g) / d
            W1[:, i:].sub_(err[:, None] * Hb[i, i:][None, :])
            E[:, i] = err
        loss += E.pow(2).sum() / 2           # (w - q)^2 / (2 d^2), summed
        W[:, b1:] -= E @ hinv[b0:b1, b1:]
    codes = torch.empty_like(Q)
    codes[:, perm] = Q
    return GPTQWeights(codes.to(torch.int32), scale, zero, group, bits, float(loss))


def _upper_cholesky_of_inverse(H: torch.Tensor, damp: float) -> torch.Tensor:
    """U with H^-1 = U^T U (upper triangular), the factor GPTQ's column updates read from."""
    L, info = torch.linalg.cholesky_ex(H.double())
    if int(info) != 0:
        raise CalibrationError(f"GPTQ: the input Hessian is not positive definite even with damp={damp}; raise "
                               "llm.gptq_damp (e.g. 0.1) or calibrate on more tokens.")
    hinv = torch.cholesky_inverse(L)
    U, info = torch.linalg.cholesky_ex(hinv, upper=True)
    if int(info) != 0:
        raise CalibrationError(f"GPTQ: the inverse Hessian lost positive definiteness (damp={damp}); raise "
                               "llm.gptq_damp (e.g. 0.1).")
    return U.float()


def rtn_like(w: torch.Tensor, *, bits: int = 4, group: int = 128, clip_grid: int = 20) -> torch.Tensor:
    """Round-to-nearest on the same grid as `gptq` (no Hessian): the baseline GPTQ is measured against.
    clip_grid=1 skips the clipping search (plain min/max groups, 20x cheaper)."""
    n, k = w.shape
    group = group if bits == 4 else k
    out = torch.empty(n, k)
    lo, hi = (0, 15) if bits == 4 else (-127, 127)
    for g0 in range(0, k, group):
        cols = w[:, g0:g0 + group].float()
        s, z = _params(cols, bits, clip_grid=clip_grid)
        out[:, g0:g0 + group] = (_quant(cols, s[:, None], z[:, None], lo, hi) - z[:, None]) * s[:, None]
    return out

