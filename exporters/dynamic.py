"""ONNX Runtime dynamic quantization (weights uint8 ahead of time, activations quantized at run time).

No calibration set: activation ranges are computed per inference. It is in the robustness matrix as the
"no calibration at all" baseline. Only compute ops are quantized (Conv -> ConvInteger, MatMul ->
MatMulInteger); YOLO's decode stays float because it has no Conv/MatMul.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx

from exporters.errors import ExporterError
from exporters.onnx_io import atomic_save, stamp_metadata


def export_dynamic(fp32_model: str | Path, out_path: str | Path, *, op_types: Sequence[str] = ("Conv", "MatMul"),
                   exclude_nodes: Sequence[str] = (), weight_type: str = "uint8",
                   metadata: Mapping[str, str] | None = None) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = Path(fp32_model)
    if not src.is_file():
        raise ExporterError(f"FP32 model {src} does not exist: export it first.")
    wt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}.get(weight_type)
    if wt is None:
        raise ExporterError(f"dynamic weight_type {weight_type!r}: choose 'uint8' or 'int8'.")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)   # ORT warns about pre-processing on every call; restored below
    try:
        with tempfile.TemporaryDirectory(prefix=f"qcal-{os.getpid()}-dyn-") as tmp:
            out_tmp = Path(tmp) / "dyn.onnx"
            quantize_dynamic(str(src), str(out_tmp), op_types_to_quantize=list(op_types),
                             nodes_to_exclude=list(exclude_nodes), weight_type=wt)
            model = onnx.load(str(out_tmp))
    except Exception as e:
        raise ExporterError(f"dynamic quantization of {src.name} failed: {e}") from e
    finally:
        root.setLevel(level)
    if metadata:
        stamp_metadata(model, {**metadata, "qcal.precision": "int8-dynamic"})
    return atomic_save(model, out_path)
