"""AWQ-style per-channel scale search (Lin et al., 2023, "AWQ: Activation-aware Weight Quantization"), run by the
gptq pass before each decoder layer's solve when `llm.gptq_scale_search` is on (weight-only schemes).

For Linears that share an input x (K channels) fed by a scalable producer (a norm weight, or up_proj's rows
for down_proj), scale input channel c of the weights by s_c and divide the producer's channel by s_c: the float
function is unchanged, but channels with large activations get a finer share of the weight grid. As in AWQ,
s = a^alpha / sqrt(max(a^alpha) min(a^alpha)) with a the channel's activation magnitude, alpha on a grid in
[0, 1), chosen to minimise the consumers' output error after round-to-nearest on the scheme's grid (plain
min/max groups during the search, as AWQ does; the clipping search comes later, in GPTQ's grid choice).

Everything is read from the input Hessian H = 2 X^T X / T the gptq pass accumulates anyway, so the search
costs no extra forward pass: a = sqrt(diag(H) / 2) (the channel's RMS, where AWQ uses mean |x|), and the output
error of a weight W~ is tr((W~ - W) H (W~ - W)^T). After folding, the consumers' Hessian becomes
H / (s s^T) (their input is x / s), which the caller applies before GPTQ.
alpha = 0 (s = 1, nothing changes) is on the grid, so the search never increases the measured error.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def output_error(w: torch.Tensor, wq: torch.Tensor, h: torch.Tensor) -> float:
    """tr((wq - w) H (wq - w)^T): the summed squared output error over the calibration tokens, up to 2 / T."""
    e = (wq - w).float()
    return float(((e @ h.float()) * e).sum(dtype=torch.float64))


@torch.no_grad()
def search_scales(h: torch.Tensor, weights: list[torch.Tensor], quantize: Callable[[torch.Tensor], torch.Tensor],
                  grid: int = 20) -> tuple[torch.Tensor, float, float]:
    """(s (K,), alpha, error at alpha / error at alpha = 0) for consumers `weights` (N_i, K) sharing the input
    whose Hessian is h (K, K); `quantize` maps a weight to its round-to-nearest dequantized value."""
    act = (torch.diag(h).clamp(min=0) / 2).sqrt().clamp(min=1e-8)
    best_s, best_alpha, best_err, base = torch.ones_like(act), 0.0, float("inf"), 0.0
    for i in range(grid):
        alpha = i / grid
        s = act.pow(alpha)
        s = (s / (s.max() * s.min()).sqrt()).clamp(min=1e-4)
        err = sum(output_error(w, quantize(w * s[None, :]) / s[None, :], h) for w in weights)
        if i == 0:
            base = err
        if err < best_err:
            best_s, best_alpha, best_err = s, alpha, err
    return best_s, best_alpha, best_err / max(base, 1e-30)
