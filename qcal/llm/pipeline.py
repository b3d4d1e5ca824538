"""The LLM path of `qcal.quantize`: a Hugging Face causal LM + calibration text -> a quantized torch model
(the simulation) with every decision recorded, exportable to ONNX (qcal/llm/export.py) with its QuantTable (qcal/llm/table.py).

Steps, in one streaming pass over the calibration windows and one short probe:
1. statistics of every Linear input on the FP32 model (per-channel ranges, kurtosis, outlier channels);
2. passes: `smoothquant` folds per-channel scales into norms/weights (exact in float);
3. sensitivity probe: each Linear's output noise-to-signal when only it is quantized, on the first
   `sensitivity_windows` windows; layers far above the median are kept in float (reported, with reasons);
4. every other Linear (minus `ignore`) becomes a QuantLinear of the scheme: with the `gptq` pass its integer
   weights come from GPTQ, decoder layer by decoder layer (qcal/passes/gptq.py); otherwise they are
   round-to-nearest (with a per-group clipping search for 4-bit).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm import tqdm

from exporters.outset import OutputSet
from exporters.quant_table import QuantTable
from qcal.config import LLMConfig, Offload, QuantConfig, Scheme
from qcal.errors import CalibrationError, CheckpointError, ConfigError
from qcal.eval.outliers import ActivationStats, summarize
from qcal.eval.perplexity import LMScore, evaluate_lms
from qcal.llm.common import (
    KNOWN_PASSES,
    FloatDecision,
    LLMSettings,
    act_quant,
    calib_windows,
    eval_tokens,
    is_ignored,
    keep_float,
    refuse_overlap,
    sensitivity,
    tensor_range,
)
from qcal.llm.table import model_table, table_meta
from qcal.models.hf_llm import HFCausalLM
from qcal.quant.llm_schemes import ActQuant, QuantLinear


@dataclass
class LLMQuantResult(LLMSettings):
    """A quantized in-memory LLM (qcal.result.Result, kind "llm")."""

    kind: ClassVar[str] = "llm"
    config: QuantConfig
    lm: HFCausalLM                   # the FP32 model and tokenizer, untouched
    model: nn.Module                 # the quantized simulation (QuantLinear modules)
    calib: Any                       # the calib_sets.TextSet used
    calib_tokens: int
    act_stats: dict[str, dict[str, float]]     # per-layer input statistics on the calibration set (FP32)
    sensitivity: dict[str, float]              # layer -> output noise-to-signal when only it is quantized
    decisions: list[FloatDecision]
    smoothed: bool
    seconds: dict[str, float] = field(default_factory=dict)
    calib_ids: list[list[int]] = field(default_factory=list, repr=False)   # the token windows calibrated on
    gptq: dict[str, Any] | None = None         # what the gptq pass did (GPTQReport.to_dict()), None without it
    act_ranges: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)  # calibrated input ranges

    def quantized_layers(self) -> list[str]:
        return [n for n, m in self.model.named_modules() if isinstance(m, QuantLinear)]

    def quant_table(self) -> QuantTable:
        """Every decision of this result as a QuantTable (format 2): what export writes and ships."""
        cfg = self.llm_config
        return model_table(self.model, self.act_ranges, self.decisions,
                           table_meta(self.scheme.value, cfg.activations.value, cfg.group_size, self.config.passes,
                                      self.smoothed))

    @property
    def table(self) -> QuantTable:
        """The result's QuantTable (the one protocol's name for quant_table())."""
        return self.quant_table()

    def logits_fns(self) -> dict[str, Any]:
        return {"fp32": lambda x: self.lm.model(input_ids=x, use_cache=False).logits,
                self.scheme.value: lambda x: self.model(input_ids=x, use_cache=False).logits}

    def evaluate(self, eval: Any, *, n_tokens: int = 8192, window: int = 512, stride: int | None = None,
                 progress: bool = True) -> dict[str, LMScore]:
        """Perplexity and mean KL to FP32 on held-out text (a path, a str, a TextSet or token ids)."""
        ids = eval_tokens(self.lm, eval, n_tokens)
        refuse_overlap(self.calib_ids, self.calib.keys(), ids)
        return evaluate_lms(self.logits_fns(), ids, reference="fp32", window=window, stride=stride,
                            progress=progress)

    def to_dict(self) -> dict[str, Any]:
        from qcal.runtime.machine import machine_info
        from qcal.version import __version__

        return {"qcal_version": __version__, "model": {"source": self.lm.source, "family": self.lm.family},
                "scheme": self.scheme.value, "config": self.config.resolved().to_dict(), "config_hash": self.config.hash(),
                "calibration": {"set_hash": self.calib.content_hash, "recipe": self.calib.recipe,
                                "windows": len(self.calib), "tokens": self.calib_tokens},
                "smoothquant": self.smoothed, "gptq": self.gptq, "quantized_layers": len(self.quantized_layers()),
                "kept_in_float": [d.__dict__ for d in self.decisions],
                "sensitivity_top": [{"layer": k, "noise_to_signal": round(v, 6)} for k, v in
                                    sorted(self.sensitivity.items(), key=lambda kv: -kv[1])[:10]],
                "activation_summary": summarize(self.act_stats),
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
                "machine": machine_info().to_dict()}

    def summary(self) -> str:
        d = self.to_dict()
        lines = [f"scheme {d['scheme']}  smoothquant={d['smoothquant']}  calibration {d['calibration']['windows']} "
                 f"windows / {d['calibration']['tokens']} tokens", f"quantized Linear layers: {d['quantized_layers']}"]
        lines += [f"  float: {k['layer']} ({k['rule']}: {k['reason']})" for k in d["kept_in_float"]]
        s = d["activation_summary"]
        if s:
            lines.append(f"calibration activations: max|x| {s['max_abs_act']:.1f}, median kurtosis "
                         f"{s['median_kurtosis']:.1f}, mean outlier-channel fraction {s['mean_outlier_channel_frac']:.4f}")
        return "\n".join(lines)

    def export(self, directory: str | Path | OutputSet, *, fp32: bool = True, format: str = "onnx",
               checkpoint_format: str = "gptq") -> dict[str, Path]:
        """model.fp32.onnx, model.<scheme>.onnx (QDQ / MatMulInteger / MatMulNBits), quant_table.json (+ its
        .arrays.npz), report.json, as one whole set (exporters.outset): the ONNX holds exactly the table's codes,
        scales and zero points. `directory` may be an OutputSet opened (and locked) before the work.
        format="hf-gptq" writes a Hugging Face GPTQ checkpoint instead (export_hf)."""
        import os

        if format == "hf-gptq":
            return self.export_hf(directory, checkpoint_format=checkpoint_format)
        if format != "onnx":
            raise ConfigError(f"export format={format!r}: choose 'onnx' (qcal's decoder ONNX) or 'hf-gptq' (a "
                              "Hugging Face GPTQ checkpoint).")
        from qcal.llm.export import export_llm
        from qcal.runtime.output import open_output, write_set

        def write(s: OutputSet) -> dict[str, str]:
            d = s.path(".")
            paths = export_llm(self.lm.model, self.model, self.quant_table(), self.to_dict(), d, fp32=fp32)
            return {k: os.path.relpath(v, d) for k, v in paths.items()}

        if isinstance(directory, OutputSet):
            return write_set(directory, write)
        with open_output(directory) as s:
            return write_set(s, write)

    def export_hf(self, directory: str | Path | OutputSet, *, checkpoint_format: str = "gptq",
                  weight_only: bool = False) -> dict[str, Path]:
        """A Hugging Face GPTQ checkpoint (exporters/hf_gptq.py): model.safetensors (qweight/qzeros/scales/g_idx per
        quantized Linear, every other tensor of the simulation as it is), config.json with quantization_config,
        quantize_config.json, the tokenizer, generation_config.json and report.json (with what the write changed:
        scales rounded to float16, zero points shifted for v1). transformers loads it (optimum + gptqmodel);
        onnxruntime-genai's model builder converts it (`-i <directory>`). A w8a8 result needs weight_only=True:
        the format has no activation quantization."""
        import json

        from exporters.hf_gptq import write_hf_gptq
        from exporters.quant_table import atomic_write_text
        from qcal.runtime.output import open_output, write_set
        from qcal.version import __version__

        if self.scheme is not Scheme.W4A16 and not weight_only:
            raise ConfigError(f"export_hf of a {self.scheme.value} result: a GPTQ checkpoint holds weights only, so "
                              "the int8 activation quantization would be dropped; pass weight_only=True to write the "
                              "8-bit weights with float activations, or quantize with scheme='w4a16'.")

        def write(s: OutputSet) -> dict[str, str]:
            d = s.path(".")
            stats = write_hf_gptq(d, self.quant_table(), _float_tensors(self.model, self.quantized_layers()),
                                  _hf_config(self.model), checkpoint_format=checkpoint_format,
                                  meta={"quantizer": [f"qcal:{__version__}"], "scheme": self.scheme.value})
            self.lm.tokenizer.save_pretrained(str(d))
            gen = getattr(self.model, "generation_config", None)
            if gen is not None:
                gen.save_pretrained(str(d))
            atomic_write_text(d / "report.json", json.dumps({**self.to_dict(), "hf_gptq": stats}, indent=1))
            return {"weights": "model.safetensors", "config": "config.json", "quantize_config": "quantize_config.json",
                    "report_json": "report.json"}

        if isinstance(directory, OutputSet):
            return write_set(directory, write)
        with open_output(directory) as s:
            return write_set(s, write)


def _float_tensors(model: nn.Module, quantized: list[str]) -> dict[str, Any]:
    """Every state-dict tensor of `model` but the quantized Linears' weights (their biases stay), as float32
    numpy; a tensor tied to an earlier one (lm_head to the embedding) is written once, under the earlier name."""
    q, seen, out = set(quantized), set(), {}
    for k, t in model.state_dict().items():
        owner, _, leaf = k.rpartition(".")
        if (owner in q and leaf != "bias") or t.numel() == 0:
            continue
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[k] = t.detach().cpu().float().numpy() if t.is_floating_point() else t.detach().cpu().numpy()
    return out


def _hf_config(model: nn.Module) -> dict[str, Any]:
    cfg: dict[str, Any] = model.config.to_dict()  # type: ignore[union-attr,operator]
    if not cfg.get("architectures"):
        cfg["architectures"] = [type(model).__name__]
    cfg["dtype"] = cfg["torch_dtype"] = "float32"     # the tensors written beside the packed weights
    return cfg


# --- the verb ----------------------------------------------------------------------------------------------

def quantize_llm(model: Any, calib: Any, config: QuantConfig, *, trust_checkpoint: bool = False,
                 progress: bool = True) -> LLMQuantResult:
    cfg = config.llm or LLMConfig()
    if cfg.offload is Offload.LAYERS and "gptq" in config.passes:
        raise ConfigError("passes=['gptq'] with llm.offload='layers' is not wired yet (the out-of-core path runs "
                          "smoothquant only); drop one of them, or call qcal.quant.gptq.gptq per layer.")
    if cfg.offload is Offload.LAYERS:   # one decoder layer at a time from safetensors: qcal/llm/offload.py
        from qcal.llm.offload import quantize_llm_offloaded

        return quantize_llm_offloaded(model, calib, config, progress=progress)  # type: ignore[return-value]
    scheme = config.scheme or Scheme.W8A8
    unknown = [p for p in config.passes if p not in KNOWN_PASSES]
    if unknown:
        raise ConfigError(f"LLM passes {unknown} are unknown; the LLM path runs {list(KNOWN_PASSES)} "
                          "(layer-wise weight reconstruction for LLMs is 'gptq').")
    if cfg.gptq_scale_search and scheme is not Scheme.W4A16:
        raise ConfigError("llm.gptq_scale_search is for weight-only w4a16 (it would move outliers back into the "
                          "quantized activations of w8a8); use passes=['smoothquant', 'gptq'] for w8a8.")
    t0 = time.perf_counter()
    if not isinstance(model, HFCausalLM | str | Path):
        raise CheckpointError(f"an in-memory {type(model).__name__}: wrap it with its tokenizer, "
                              "qcal.models.hf_llm.HFCausalLM(model, tokenizer, source), or pass its folder / .gguf.")
    lm = model if isinstance(model, HFCausalLM) else HFCausalLM.load(model, trust_checkpoint=trust_checkpoint)
    seconds = {"load": time.perf_counter() - t0}
    textset = calib_windows(lm, calib, cfg.seq_len, config.calib_size, config.seed)
    windows = lm.token_windows(textset, seq_len=cfg.seq_len)
    if not windows:
        raise CalibrationError("the calibration text gives no window of 2+ tokens; give more text.")
    quantizable = [n for n, m in lm.model.named_modules() if isinstance(m, nn.Linear) and not is_ignored(n, cfg.ignore)]

    t = time.perf_counter()
    stats = ActivationStats(lm.model)
    with torch.no_grad(), stats.recording():
        for w in tqdm(windows, desc="calibrate", disable=not progress, leave=False):
            lm.model(input_ids=torch.tensor([w]), use_cache=False)
    seconds["calibrate"] = time.perf_counter() - t

    qmodel = copy.deepcopy(lm.model)
    smooth: dict[str, torch.Tensor] = {}
    if "smoothquant" in config.passes:
        from qcal.passes.smoothquant import apply_smoothquant

        smooth = apply_smoothquant(qmodel, stats.absmax(), cfg.smoothquant_alpha)
    ranges = {n: tensor_range(stats, n, smooth.get(n)) for n in quantizable}

    t = time.perf_counter()
    weight_bits, act = (8, act_quant(cfg.activations)) if scheme is Scheme.W8A8 else (4, ActQuant.NONE)
    sens = sensitivity(qmodel, quantizable, windows[: cfg.sensitivity_windows], weight_bits, act, cfg.group_size,
                       ranges)
    decisions = [FloatDecision(n, "ignore", "in config.llm.ignore") for n, m in lm.model.named_modules()
                 if isinstance(m, nn.Linear) and is_ignored(n, cfg.ignore)]
    decisions += keep_float(sens, cfg.keep_float_ratio, cfg.keep_float_max)
    seconds["sensitivity"] = time.perf_counter() - t
    floats = {d.layer for d in decisions}
    gptq_report = None
    if "gptq" in config.passes:
        from qcal.passes.gptq import apply_gptq
        from qcal.quant.gptq import GPTQWeights

        def make(name: str, linear: nn.Linear, w: GPTQWeights) -> nn.Module:
            return QuantLinear(linear, weight_bits=weight_bits, act=act, group=cfg.group_size,
                               act_range=ranges[name], weights=w.int4_groups() if weight_bits == 4 else w.int8())

        t = time.perf_counter()
        gptq_report = apply_gptq(qmodel, windows, [n for n in quantizable if n not in floats], make,
                                 bits=weight_bits, group=cfg.group_size, damp=cfg.gptq_damp, block=cfg.gptq_block,
                                 act_order=cfg.gptq_act_order, scale_search=cfg.gptq_scale_search,
                                 weighted_clip=cfg.gptq_weighted_clip,
                                 progress=progress).to_dict()
        seconds["gptq"] = time.perf_counter() - t
    mods = dict(qmodel.named_modules())
    for n in quantizable:
        if n not in floats and not isinstance(mods[n], QuantLinear):     # not done by gptq: round to nearest
            parent, _, child = n.rpartition(".")
            setattr(mods[parent], child, QuantLinear(mods[n], weight_bits=weight_bits, act=act,
                                                     group=cfg.group_size, act_range=ranges[n]))
    qmodel.eval()
    seconds["total"] = time.perf_counter() - t0
    return LLMQuantResult(config, lm, qmodel, textset, sum(len(w) for w in windows), stats.table(), sens,
                          decisions, bool(smooth), seconds, windows, gptq_report, ranges)


@dataclass
class LLMReport:
    """FP32 vs quantized on held-out text, and the FP32 model's per-layer activation statistics there."""

    scores: dict[str, LMScore]
    act_stats: dict[str, dict[str, float]]
    result: LLMQuantResult

    def to_dict(self) -> dict[str, Any]:
        return {"scores": {k: v.to_dict() for k, v in self.scores.items()},
                "activation_summary": summarize(self.act_stats), "layers": self.act_stats,
                "quantization": self.result.to_dict()}

    def summary(self) -> str:
        fp = self.scores["fp32"].ppl
        lines = [f"{'model':<10}{'ppl':>10}{'vs fp32':>10}{'KL':>9}"]
        lines += [f"{k:<10}{v.ppl:>10.3f}{100 * (v.ppl / fp - 1):>+9.2f}%{v.kl:>9.4f}" for k, v in self.scores.items()]
        worst = sorted(self.act_stats.items(), key=lambda kv: -kv[1]["max_abs"])[:5]
        lines += ["", f"{'layer (largest inputs)':<40}{'max|x|':>10}{'kurtosis':>10}{'outlier ch':>11}"]
        lines += [f"{k:<40}{v['max_abs']:>10.1f}{v['kurtosis']:>10.1f}{v['outlier_channel_frac']:>11.4f}"
                  for k, v in worst]
        return "\n".join(lines)


def robustness_llm(result: LLMQuantResult, eval: Any, *, n_tokens: int = 8192, window: int = 512,
                   stride: int | None = None, progress: bool = True) -> LLMReport:
    """Perplexity FP32 vs quantized and mean KL on held-out text, with per-layer outlier statistics."""
    ids = eval_tokens(result.lm, eval, n_tokens)
    refuse_overlap(result.calib_ids, result.calib.keys(), ids)
    stats = ActivationStats(result.lm.model)
    with stats.recording():
        scores = evaluate_lms(result.logits_fns(), ids, reference="fp32", window=window, stride=stride,
                              progress=progress)
    return LLMReport(scores, stats.table(), result)


