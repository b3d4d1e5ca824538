"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before quantizing.

For a linear y = x W^T fed by a producer whose output channel c can be scaled (an RMSNorm weight, or the
rows of up_proj that multiply into down_proj's input), divide that channel by s_c and multiply W[:, c]
by s_c: the float function is unchanged, activations get flatter, weights take the spread.
s_c = max|x_c|^alpha / max_j |W_jc|^(1 - alpha) (alpha = 0 leaves activations alone; 1 moves everything).

Pairs handled in Llama-style decoder layers (Llama, Mistral, Qwen2, SmolLM):
  input_layernorm -> q_proj, k_proj, v_proj;  post_attention_layernorm -> gate_proj, up_proj;
  up_proj (rows) -> down_proj (columns), exact because down's input is act(gate(x)) * up(x).
v_proj -> o_proj is skipped (grouped-query attention repeats v heads); lm_head is never smoothed (its
weight is tied to the embedding in many models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qcal.errors import ConfigError


@dataclass(frozen=True)
class SmoothGroup:
    producer: str            # module whose output channels are divided by s
    consumers: tuple[str, ...]
    kind: str                # "norm" (scale a norm weight) or "rows" (scale a Linear's output rows)


def llama_groups(model: nn.Module) -> list[SmoothGroup]:
    """The smoothable (producer, consumers) pairs of every decoder layer, by module name."""
    names = dict(model.named_modules())
    groups: list[SmoothGroup] = []
    for name in names:
        if not name.endswith(".self_attn") or f"{name[:-10]}.input_layernorm" not in names:
            continue
        layer = name[: -len(".self_attn")]
        groups.append(SmoothGroup(f"{layer}.input_layernorm",
                                  tuple(f"{layer}.self_attn.{p}_proj" for p in "qkv"), "norm"))
        groups.append(SmoothGroup(f"{layer}.post_attention_layernorm",
                                  (f"{layer}.mlp.gate_proj", f"{layer}.mlp.up_proj"), "norm"))
        groups.append(SmoothGroup(f"{layer}.mlp.up_proj", (f"{layer}.mlp.down_proj",), "rows"))
    missing = [c for g in groups for c in (g.producer, *g.consumers) if c not in names]
    if not groups or missing:
        raise ConfigError(f"smoothquant: {type(model).__name__} is not a Llama-style decoder "
                          f"(missing {missing[:3] or 'input_layernorm/self_attn'}); drop 'smoothquant' from passes.")
    return groups


def smoothing_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s (K,) from the input channels' max |x| (K,) and the consumers' weights (N_i, K)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"smoothquant alpha={alpha}: must be in [0, 1] (0.5 is the paper's default).")
    w_absmax = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)
    s = act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1.0 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def apply_smoothquant(model: nn.Module, act_absmax: dict[str, torch.Tensor], alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """Fold the scales into the model in place. act_absmax: linear name -> max |input| per channel (K,),
    measured on the unsmoothed model. Returns consumer name -> s, so callers can rescale their statistics
    (a consumer's input channel c is now x_c / s_c)."""
    mods = dict(model.named_modules())
    applied: dict[str, torch.Tensor] = {}
    for g in llama_groups(model):
        consumers = [mods[c] for c in g.consumers]
        if g.consumers[0] not in act_absmax:
            raise ConfigError(f"smoothquant: no activation statistics for {g.consumers[0]}; calibrate first.")
        act = torch.stack([act_absmax[c].float() for c in g.consumers]).amax(dim=0)
        s = smoothing_scales(act, [c.weight.float() for c in consumers], alpha)
        fold_scales(mods[g.producer], consumers, g.kind, s)
        applied.update(dict.fromkeys(g.consumers, s))
    return applied


@torch.no_grad()
def fold_scales(prod: nn.Module, consumers: list[nn.Module], kind: str, s: torch.Tensor) -> None:
    """Divide the producer's output channels by s (K,) and multiply the consumers' input columns by s: the float
    function is unchanged. kind: "norm" (a norm weight) or "rows" (a Linear's output rows and bias)."""
    pw: torch.Tensor = prod.get_parameter("weight")
    if kind == "norm":
        pw.div_(s.to(pw.dtype))
    else:
        pw.div_(s.to(pw.dtype)[:, None])
        if getattr(prod, "bias", None) is not None:
            pb = prod.get_parameter("bias")
            pb.div_(s.to(pb.dtype))
    for c in consumers:
        cw = c.get_parameter("weight")
        cw.mul_(s.to(cw.dtype)[None, :])
