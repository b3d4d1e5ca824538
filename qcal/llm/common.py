"""The steps the in-memory (qcal/llm/pipeline.py) and the out-of-core (qcal/llm/offload.py) LLM paths share:
float decisions (ignore list, sensitivity probe, keep-float rule), activation ranges, and the text in
(calibration windows, evaluation tokens, the calibration/evaluation overlap check)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcal.config import Activations, LLMConfig, QuantConfig, Scheme
from qcal.errors import CalibrationError
from qcal.eval.outliers import ActivationStats
from qcal.models.hf_llm import HFCausalLM
from qcal.quant.llm_schemes import (
    ActQuant,
    QuantLinear,
    fake_quant_per_tensor,
    fake_quant_per_token,
    static_qparams,
)

KNOWN_PASSES = ("smoothquant", "gptq")


@dataclass(frozen=True)
class FloatDecision:
    layer: str
    rule: str        # "ignore" (asked for) or "sensitivity" (measured)
    reason: str



class LLMSettings:
    """The scheme and LLM options of a result's config, defaults filled in (shared by the LLM result kinds)."""

    config: QuantConfig

    @property
    def scheme(self) -> Scheme:
        return self.config.scheme or Scheme.W8A8

    @property
    def llm_config(self) -> LLMConfig:
        return self.config.llm or LLMConfig()


def act_quant(a: Activations) -> ActQuant:
    return ActQuant.PER_TOKEN if a is Activations.PER_TOKEN else ActQuant.PER_TENSOR


def is_ignored(name: str, ignore: tuple[str, ...]) -> bool:
    return any(name == i or name.endswith("." + i) for i in ignore)


def tensor_range(stats: ActivationStats, name: str, s: torch.Tensor | None) -> tuple[float, float]:
    st = stats.stats[name]
    lo, hi = (st.cmin, st.cmax) if s is None else (st.cmin / s, st.cmax / s)
    return float(lo.min()), float(hi.max())


@torch.no_grad()
def sensitivity(model: nn.Module, names: list[str], windows: list[Any], weight_bits: int, act: ActQuant,
                group: int, ranges: dict[str, tuple[float, float]],
                forward: Callable[[nn.Module, Any], Any] | None = None) -> dict[str, float]:
    """Per Linear: ||Q(x) Q(W)^T - x W^T||^2 / ||x W^T||^2 on the probe windows, quantizing only that layer.
    forward(model, window) runs one window (default: token ids through a causal LM; qcal/llm/offload.py runs
    one decoder layer on hidden states)."""
    mods = dict(model.named_modules())
    qweights = {n: QuantLinear(mods[n], weight_bits=weight_bits, act=ActQuant.NONE, group=group).weight for n in names}
    noise = dict.fromkeys(names, 0.0)
    signal = dict.fromkeys(names, 0.0)

    def hook(name: str) -> Any:
        def fn(m: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].float()
            y = nn.functional.linear(x, m.weight)  # type: ignore[arg-type]
            if act is ActQuant.PER_TOKEN:
                xq = fake_quant_per_token(x)
            elif act is ActQuant.PER_TENSOR:
                xq = fake_quant_per_tensor(x, *static_qparams(*ranges[name]))
            else:
                xq = x
            noise[name] += float((nn.functional.linear(xq, qweights[name]) - y).pow(2).sum())
            signal[name] += float(y.pow(2).sum())
        return fn

    handles = [mods[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        for w in windows:
            if forward is None:
                model(input_ids=torch.tensor([w]), use_cache=False)
            else:
                forward(model, w)
    finally:
        for h in handles:
            h.remove()
    return {n: noise[n] / max(signal[n], 1e-30) for n in names}


def keep_float(sens: dict[str, float], ratio: float, max_layers: int) -> list[FloatDecision]:
    """Layers whose noise-to-signal exceeds ratio x the median layer's, worst first, at most max_layers."""
    if ratio <= 0 or max_layers == 0 or not sens:
        return []
    vals = sorted(sens.values())
    med = vals[len(vals) // 2]
    out = [n for n, v in sorted(sens.items(), key=lambda kv: -kv[1]) if v > ratio * med][:max_layers]
    return [FloatDecision(n, "sensitivity", f"noise-to-signal {sens[n]:.4g} = {sens[n] / med:.1f}x the median "
                          f"layer's {med:.3g} (> {ratio:g}x)") for n in out]



# --- text in -----------------------------------------------------------------------------------------------

def calib_windows(lm: HFCausalLM, calib: Any, seq_len: int, n: int, seed: int) -> Any:
    """A TextSet of calibration windows: given one (checked later against the tokenizer), or cut from a file."""
    import calib_sets
    from calib_sets.text import TextSet

    if isinstance(calib, TextSet):
        return calib.take(n) if len(calib) > n else calib
    if isinstance(calib, str | Path) and Path(calib).exists():
        try:
            return calib_sets.Source.text(calib, seq_len=seq_len, n=n, tokenizer=lm.tokenizer, seed=seed)
        except calib_sets.CalibSetError as e:
            raise CalibrationError(str(e)) from e
    raise CalibrationError(f"LLM calibration {calib!r}: give a text file/folder or a calib_sets TextSet "
                           "(Source.text, calib_sets.corpora).")


def eval_tokens(lm: HFCausalLM, eval: Any, n_tokens: int) -> list[int]:
    """The first n_tokens token ids of held-out text: a path, a str, a TextSet or a list of ids."""
    from calib_sets.text import TextSet, read_documents

    if isinstance(eval, list) and all(isinstance(t, int) for t in eval):
        ids = eval
    elif isinstance(eval, TextSet):
        ids = [t for w in lm.token_windows(eval, seq_len=1 << 30) for t in w]
    elif isinstance(eval, Path) or (isinstance(eval, str) and _is_path(eval)):
        ids = lm.encode("\n\n".join(d for _, d in read_documents(Path(eval))))
    elif isinstance(eval, str):
        ids = lm.encode(eval)
    else:
        raise CalibrationError(f"evaluation text {type(eval).__name__}: give a path, a str, a TextSet or token ids.")
    if len(ids) < 2:
        raise CalibrationError("the evaluation text has fewer than 2 tokens; give more text.")
    return list(ids[:n_tokens])


def _is_path(s: str) -> bool:
    try:
        return Path(s).exists()
    except OSError:        # text longer than a file name
        return False


def refuse_overlap(windows: list[list[int]], keys: list[str], ids: list[int]) -> None:
    """Refuse evaluation on text the calibration saw: a calibration window's first 64 tokens found verbatim."""
    stream = "," + ",".join(map(str, ids)) + ","
    for w, key in zip(windows, keys, strict=False):
        if len(w) >= 16 and "," + ",".join(map(str, w[:64])) + "," in stream:
            raise CalibrationError(f"calibration window {key} appears in the evaluation text; evaluate on text "
                                   "the calibration never saw (e.g. another novel).")
