"""FP16 ONNX from an FP32 ONNX model, through onnxruntime's own float16 converter.

Inputs and outputs stay float32 (keep_io_types) so the FP16 model is a drop-in for the FP32 one; ops that
ONNX Runtime has no float16 kernel for on CPU are left in float32 by the converter's default block list.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnx

from exporters.errors import ExporterError
from exporters.onnx_io import atomic_save, stamp_metadata


def export_fp16(fp32_model: str | Path, out_path: str | Path, *, metadata: Mapping[str, str] | None = None) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src = Path(fp32_model)
    if not src.is_file():
        raise ExporterError(f"FP32 model {src} does not exist: export it first.")
    model = onnx.load(str(src))
    try:
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    except Exception as e:  # the converter raises bare exceptions on graphs it cannot handle
        raise ExporterError(f"FP16 conversion of {src.name} failed: {e}. Check the model with onnx.checker.") from e
    if metadata:
        stamp_metadata(half, {**metadata, "qcal.precision": "fp16"})
    return atomic_save(half, out_path)
