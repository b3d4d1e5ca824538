"""Perplexity (sliding window) and mean KL divergence to a reference model's next-token distributions.

All models see the same windows in one pass, so the reference logits are never stored (8k tokens x 49k
vocab would be 1.6 GB): per window, the reference runs once and every candidate is compared on the spot.
A window covers `window` tokens; consecutive windows start `stride` tokens apart and only the tokens not
scored by the previous window are scored (stride == window: disjoint windows, every token scored once
with the context of its own window).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from qcal.errors import ConfigError

LogitsFn = Callable[[torch.Tensor], torch.Tensor]   # ids (1, T) int64 -> logits (1, T, V) float


@dataclass(frozen=True)
class LMScore:
    ppl: float
    nll: float          # mean negative log-likelihood per scored token (nats)
    kl: float           # mean KL(reference || model) per scored token (nats); 0 for the reference
    tokens: int

    def to_dict(self) -> dict[str, float | int]:
        return {"ppl": round(self.ppl, 4), "nll": round(self.nll, 5), "kl": round(self.kl, 5), "tokens": self.tokens}


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position within the window): each token is scored at most once. A window's
    position 0 has no context, so with disjoint windows (stride == window) each window's first token is skipped."""
    if window < 2 or not 0 < stride <= window:
        raise ConfigError(f"perplexity: window={window}, stride={stride}; need window >= 2, 0 < stride <= window.")
    out: list[tuple[int, int, int]] = []
    scored_to = 1              # next target position still unscored (position 0 has no context)
    start = 0
    while scored_to < n_tokens:
        end = min(start + window, n_tokens)
        out.append((start, end, max(scored_to - start, 1)))
        scored_to = end
        if end == n_tokens:
            break
        start += stride
    return out


@torch.no_grad()
def evaluate_lms(models: dict[str, LogitsFn], ids: Sequence[int], *, reference: str, window: int = 512,
                 stride: int | None = None, progress: bool = True) -> dict[str, LMScore]:
    """Score every model on the token stream `ids`; KL is measured against models[reference]."""
    if reference not in models:
        raise ConfigError(f"perplexity: reference {reference!r} is not among the models {sorted(models)}.")
    spans = sliding_windows(len(ids), window, stride or window)
    stream = torch.tensor(list(ids), dtype=torch.long)
    nll = dict.fromkeys(models, 0.0)
    kl = dict.fromkeys(models, 0.0)
    count = 0
    for start, end, first in tqdm(spans, desc="perplexity", disable=not progress, leave=False):
        x = stream[start:end][None]
        targets = x[0, first:]                                   # positions first..T-1 are predicted
        ref_lp = torch.log_softmax(models[reference](x)[0, first - 1:-1].float(), dim=-1)
        for name, fn in models.items():
            lp = ref_lp if name == reference else torch.log_softmax(fn(x)[0, first - 1:-1].float(), dim=-1)
            nll[name] += float(-lp.gather(1, targets[:, None]).sum())
            if name != reference:
                kl[name] += float((ref_lp.exp() * (ref_lp - lp)).sum())
        count += int(targets.numel())
    return {n: LMScore(math.exp(nll[n] / count), nll[n] / count, kl[n] / count, count) for n in models}
