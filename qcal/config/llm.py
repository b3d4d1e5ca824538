"""The LLM family's options: scheme, activations, offload and the LLM path's knobs (QuantConfig.llm)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qcal.config import bounds
from qcal.errors import ConfigError


class Scheme(str, enum.Enum):
    """LLM schemes (the YOLO path is always W8A8 static)."""

    W8A8 = "w8a8"      # int8 per-channel weights, int8 activations (per-token dynamic or per-tensor static)
    W4A16 = "w4a16"    # 4-bit group-wise weights, float activations


class Activations(str, enum.Enum):
    PER_TOKEN = "per-token"     # dynamic: one scale per token, computed at run time
    PER_TENSOR = "per-tensor"   # static: one scale per tensor, from calibration


class Offload(str, enum.Enum):
    """Where the LLM's weights live during calibration (qcal/llm_offload.py)."""

    NONE = "none"        # the whole model in memory (qcal/llm.py)
    LAYERS = "layers"    # one decoder layer at a time from memory-mapped safetensors; peak ~ one layer


@dataclass(frozen=True)
class LLMConfig:
    """Options of the LLM path (`qcal.quantize` on a Hugging Face causal LM).

    seq_len: tokens per calibration window. group_size: input channels per 4-bit weight group (w4a16).
    ignore: Linear module names (or name suffixes) left in float, e.g. lm_head.
    smoothquant_alpha: migration strength of the smoothquant pass (0..1).
    keep_float_ratio: a Linear whose quantization noise (output noise-to-signal on calibration tokens) exceeds
        this multiple of the median layer's is kept in float, at most keep_float_max of them, worst first; 0 turns
        the automatic decision off. Every decision is reported.
    gptq_damp, gptq_block, gptq_act_order: the gptq pass (qcal.passes.gptq): Hessian dampening as a fraction of
        its mean diagonal, columns per lazy-update block, and quantizing columns in order of decreasing input
        energy (desc_act; group grids fixed from the original weights so the exported format is unchanged).
    gptq_weighted_clip: the 4-bit group ranges' clipping search weighs each input channel's error by its input
        energy (diag of the Hessian) instead of equally.
    gptq_scale_search: before each decoder layer's GPTQ solve, an AWQ-style per-channel scale search folded into
        the norms / up_proj (qcal.passes.awq); w4a16 only.
    offload: "layers" calibrates one decoder layer at a time from memory-mapped safetensors (a model larger
        than memory) and writes the quantized weights layer by layer; same result as "none" (the default).
    """

    activations: Activations = Activations.PER_TOKEN
    seq_len: int = 512
    group_size: int = 128
    ignore: tuple[str, ...] = ("lm_head",)
    smoothquant_alpha: float = 0.5
    keep_float_ratio: float = 8.0
    keep_float_max: int = 4
    sensitivity_windows: int = 2
    gptq_damp: float = 0.01
    gptq_block: int = 128
    gptq_act_order: bool = True
    gptq_weighted_clip: bool = True
    gptq_scale_search: bool = False
    offload: Offload = Offload.NONE

    def __post_init__(self) -> None:
        if isinstance(self.offload, str) and not isinstance(self.offload, Offload):
            try:
                object.__setattr__(self, "offload", Offload(self.offload))
            except ValueError:
                raise ConfigError(f"llm.offload={self.offload!r}: choose one of {[m.value for m in Offload]}.") from None
        bounds.as_enum(self, "llm", activations=Activations)
        bounds.as_tuple(self, "ignore")
        bounds.check_fields(self, "llm")
        if self.seq_len < 2 or self.group_size < 8 or self.group_size % 8:
            raise ConfigError(f"llm: seq_len={self.seq_len} must be >= 2 and group_size={self.group_size} a "
                              "positive multiple of 8 (e.g. 128).")
        if not 0.0 <= self.smoothquant_alpha <= 1.0:
            raise ConfigError(f"llm.smoothquant_alpha={self.smoothquant_alpha}: must be in [0, 1], e.g. 0.5.")
        if self.keep_float_ratio < 0 or self.keep_float_max < 0 or self.sensitivity_windows < 1:
            raise ConfigError("llm: keep_float_ratio and keep_float_max must be >= 0, sensitivity_windows >= 1.")
        if self.gptq_damp <= 0 or self.gptq_block < 1:
            raise ConfigError(f"llm: gptq_damp={self.gptq_damp} must be > 0 (e.g. 0.01) and gptq_block="
                              f"{self.gptq_block} >= 1 (e.g. 128).")
