"""The LLM path: a Hugging Face causal LM + calibration text -> a quantized simulation, its QuantTable, ONNX.

Modules, in import order (none imports a later one, none imports a private name of another):
  common      shared steps: float decisions, sensitivity probe, ranges, calibration/evaluation text
  table       the QuantTable (format 2) of the quantized Linears, read off the simulation's modules
  export      decoder ONNX (FP32 and quantized, written from the table), ORT logits
  offload_io  safetensors in and out for the out-of-core path, its result type
  offload     out-of-core calibration, one decoder layer at a time
  pipeline    the in-memory verb (quantize_llm, robustness_llm) and its result type
"""

from qcal.llm.common import FloatDecision, calib_windows, eval_tokens, keep_float, sensitivity
from qcal.llm.pipeline import LLMQuantResult, LLMReport, quantize_llm, robustness_llm

__all__ = ["FloatDecision", "LLMQuantResult", "LLMReport", "calib_windows", "eval_tokens", "keep_float",
           "quantize_llm", "robustness_llm", "sensitivity"]
