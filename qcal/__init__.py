"""qcal: quantization calibration for edge inference (YOLO and small LLMs to INT8 ONNX).

    import qcal
    result = qcal.quantize("yolo.pt", calib="frames/", target="ort-cpu", trust_checkpoint=True)
    result.export("out/")
    print(result.summary())
"""

__version__ = "0.1.0"

from qcal.alloc import Budget  # noqa: E402
from qcal.config import AdaQuantConfig, AdaQuantMode, KeepFloatConfig, Observer, QuantConfig, Target  # noqa: E402
from qcal.errors import (  # noqa: E402
    CalibrationError,
    CheckpointError,
    ConfigError,
    ExportError,
    QcalError,
    UntrustedCheckpointError,
)


def quantize(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See qcal.api.quantize (imported lazily so `import qcal` stays light)."""
    from qcal.api import quantize as _quantize

    return _quantize(*args, **kwargs)


def allocate_bits(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See qcal.passes.allocate.allocate_bits: per-layer precision by integer programming under a Budget."""
    from qcal.passes.allocate import allocate_bits as _allocate_bits

    return _allocate_bits(*args, **kwargs)


def robustness(*args, **kwargs):  # type: ignore[no-untyped-def]
    """See qcal.bench.robustness: the precision x condition matrix, report.json/.md/.html."""
    from qcal.bench import robustness as _robustness

    return _robustness(*args, **kwargs)


__all__ = ["AdaQuantConfig", "AdaQuantMode", "Budget", "allocate_bits", "CalibrationError", "CheckpointError", "ConfigError", "ExportError", "KeepFloatConfig", "Observer",
           "QcalError", "QuantConfig", "Target", "UntrustedCheckpointError", "__version__", "quantize",
           "robustness"]
