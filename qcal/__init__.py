"""qcal: quantization calibration for edge inference (YOLO and small LLMs to INT8 ONNX).

    import qcal
    result = qcal.quantize("yolo.pt", calib="frames/", target="ort-cpu", trust_checkpoint=True)
    result.export("out/")
    print(result.summary())
"""

from typing import Any

from qcal.config import (
    Activations,
    AdaQuantConfig,
    AdaQuantMode,
    Granularity,
    KeepFloatConfig,
    LLMConfig,
    MetaAug,
    MetaAugConfig,
    Observer,
    Offload,
    QuantConfig,
    ReconstructConfig,
    Rounding,
    Scheme,
    Target,
)
from qcal.errors import (
    CalibrationError,
    CheckpointError,
    ConfigError,
    ExportError,
    QcalError,
    UntrustedCheckpointError,
)
from qcal.placement.alloc import Budget
from qcal.version import __version__


def _quantize_llm(model: Any, calib: Any, config: QuantConfig, *, trust_checkpoint: bool, progress: bool,
                  **detector_only: Any) -> Any:
    from qcal.llm import quantize_llm

    given = [k for k, v in detector_only.items() if v is not None and not (k == "threads" and v == 2)]
    if given:
        raise ConfigError(f"quantize({model!r}): {given} apply to detectors, not to an LLM; drop them (the LLM "
                          "scheme and its options live in config=QuantConfig(scheme=..., llm=LLMConfig(...)); "
                          "measure it with qcal.robustness(result, ...)).")
    return quantize_llm(model, calib, config, trust_checkpoint=trust_checkpoint, progress=progress)


def _quantize_vision(model: Any, calib: Any, config: QuantConfig, **kwargs: Any) -> Any:
    from qcal.api import quantize as quantize_vision

    return quantize_vision(model, calib, config=config, **kwargs)


# the registry: the quantizer of each model kind (qcal.result.Result.kind of what it returns)
_QUANTIZE = {"llm": _quantize_llm, "vision": _quantize_vision}


def model_kind(model: Any) -> str:
    """The registry key of a model: "llm" for a Hugging Face causal LM (a model folder, a .gguf file, an
    HFCausalLM), "vision" for a detector checkpoint, an adapter or a torch module."""
    from qcal.models.hf_llm import looks_like_llm

    return "llm" if looks_like_llm(model) else "vision"


def quantize(model: Any, calib: Any = None, *, target: str | Target | None = None, config: QuantConfig | None = None,
             trust_checkpoint: bool = False, example_input: Any = None, eval: Any = None, progress: bool = True,
             threads: int = 2) -> Any:
    """Quantize `model` on `calib` and return its result (qcal.result.Result: summary, to_dict, export, evaluate).

    The model's kind (`model_kind`) picks the quantizer: detectors and torch modules -> qcal.api.quantize (a
    QuantResult); Hugging Face causal LMs (a model folder, a .gguf file) -> qcal.llm.quantize_llm (an
    LLMQuantResult, or the offloaded one with llm=LLMConfig(offload="layers")). A keyword or config field that
    means nothing for the kind (target, eval, example_input, threads for an LLM; scheme/llm for a detector) is a
    ConfigError naming it, never silently dropped. Imported lazily so `import qcal` stays light."""
    kind = model_kind(model)
    cfg = config or QuantConfig()
    cfg.check_kind(kind)
    return _QUANTIZE[kind](model, calib, cfg, target=target, trust_checkpoint=trust_checkpoint,
                           example_input=example_input, eval=eval, progress=progress, threads=threads)


def allocate_bits(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See qcal.passes.allocate.allocate_bits: per-layer precision by integer programming under a Budget."""
    from qcal.passes.allocate import allocate_bits as _allocate_bits

    return _allocate_bits(*args, **kwargs)


def _robustness_llm() -> Any:
    from qcal.llm import robustness_llm

    return robustness_llm


def _robustness_vision() -> Any:
    from qcal.bench import robustness_of_result

    return robustness_of_result


# the registry: which robustness a result of each kind (qcal.result.Result.kind) gets
_ROBUSTNESS = {"llm": _robustness_llm, "vision": _robustness_vision}


def robustness(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See qcal.bench.robustness: the precision x condition matrix, report.json/.md/.html.
    Given an LLM quantization result: qcal.llm.robustness_llm (perplexity, KL, outlier statistics)."""
    from qcal.result import is_result

    if args and is_result(args[0]):
        kind = args[0].kind
        if kind not in _ROBUSTNESS:
            raise ConfigError(f"qcal.robustness: a {kind!r} result is measured with result.evaluate(...); "
                              f"robustness takes a {' or '.join(repr(k) for k in _ROBUSTNESS)} result or a "
                              "detector checkpoint.")
        return _ROBUSTNESS[kind]()(*args, **kwargs)
    from qcal.bench import robustness as _robustness

    return _robustness(*args, **kwargs)


__all__ = ["Activations", "AdaQuantConfig", "AdaQuantMode", "Budget", "CalibrationError", "CheckpointError",
           "ConfigError", "ExportError", "Granularity", "KeepFloatConfig", "LLMConfig", "MetaAug",
           "MetaAugConfig", "Observer", "Offload", "QcalError", "QuantConfig", "ReconstructConfig", "Rounding",
           "Scheme", "Target", "UntrustedCheckpointError", "__version__", "allocate_bits", "model_kind", "quantize",
           "robustness"]
