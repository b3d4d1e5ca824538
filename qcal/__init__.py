"""qcal: quantization calibration for edge inference (YOLO and small LLMs to INT8 ONNX).

    import qcal
    result = qcal.quantize("yolo.pt", calib="frames/", target="ort-cpu", trust_checkpoint=True)
    result.export("out/")
    print(result.summary())
"""

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


def quantize(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See qcal.api.quantize (imported lazily so `import qcal` stays light); Hugging Face causal LMs (a model
    folder, a .gguf file) go to qcal.llm.quantize_llm."""
    from qcal.models.hf_llm import looks_like_llm

    model = args[0] if args else kwargs.get("model")
    if looks_like_llm(model):
        from qcal.config import QuantConfig as _QC
        from qcal.llm import quantize_llm

        calib = args[1] if len(args) > 1 else kwargs.get("calib")
        return quantize_llm(model, calib, kwargs.get("config") or _QC(),
                            trust_checkpoint=kwargs.get("trust_checkpoint", False),
                            progress=kwargs.get("progress", True))
    from qcal.api import quantize as _quantize

    return _quantize(*args, **kwargs)


def allocate_bits(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See qcal.passes.allocate.allocate_bits: per-layer precision by integer programming under a Budget."""
    from qcal.passes.allocate import allocate_bits as _allocate_bits

    return _allocate_bits(*args, **kwargs)


def robustness(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See qcal.bench.robustness: the precision x condition matrix, report.json/.md/.html.
    Given an LLM quantization result: qcal.llm.robustness_llm (perplexity, KL, outlier statistics)."""
    if args and type(args[0]).__name__ == "LLMQuantResult":
        from qcal.llm import robustness_llm

        return robustness_llm(*args, **kwargs)
    from qcal.bench import robustness as _robustness

    return _robustness(*args, **kwargs)


__all__ = ["Activations", "AdaQuantConfig", "AdaQuantMode", "Budget", "CalibrationError", "CheckpointError",
           "ConfigError", "ExportError", "Granularity", "KeepFloatConfig", "LLMConfig", "MetaAug",
           "MetaAugConfig", "Observer", "Offload", "QcalError", "QuantConfig", "ReconstructConfig", "Rounding",
           "Scheme", "Target", "UntrustedCheckpointError", "__version__", "allocate_bits", "quantize", "robustness"]
