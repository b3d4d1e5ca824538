"""Deployment artifacts from a QuantTable: QDQ ONNX per target profile, FP16 ONNX, metadata, atomic writes.

This package imports onnx/onnxruntime only (never qcal): a QuantTable in, artifacts out. The names below load on
first use, so `import exporters.errors` or `exporters.outset` (what the CLI needs to refuse bad input) does not pay
for importing onnx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exporters.errors import ExporterError
    from exporters.onnx_io import atomic_save, read_metadata, stamp_metadata
    from exporters.profiles import PROFILES, QdqProfile
    from exporters.qdq import export_qdq, read_quant_table
    from exporters.quant_table import QuantTable, TensorQuant

_WHERE = {"ExporterError": "errors", "atomic_save": "onnx_io", "read_metadata": "onnx_io",
          "stamp_metadata": "onnx_io", "PROFILES": "profiles", "QdqProfile": "profiles", "export_qdq": "qdq",
          "read_quant_table": "qdq", "QuantTable": "quant_table", "TensorQuant": "quant_table"}

__all__ = ["ExporterError", "PROFILES", "QdqProfile", "QuantTable", "TensorQuant", "atomic_save", "export_qdq",
           "read_metadata", "read_quant_table", "stamp_metadata"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'exporters' has no attribute {name!r}")
    return getattr(importlib.import_module(f"exporters.{_WHERE[name]}"), name)
