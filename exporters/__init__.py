"""Deployment artifacts from a QuantTable: QDQ ONNX per target profile, FP16 ONNX, metadata, atomic writes.

This package imports onnx/onnxruntime only (never qcal): a QuantTable in, artifacts out.
"""

from exporters.errors import ExporterError
from exporters.onnx_io import atomic_save, read_metadata, stamp_metadata
from exporters.profiles import PROFILES, QdqProfile
from exporters.qdq import export_qdq, read_quant_table
from exporters.quant_table import QuantTable, TensorQuant

__all__ = ["ExporterError", "PROFILES", "QdqProfile", "QuantTable", "TensorQuant", "atomic_save", "export_qdq",
           "read_metadata", "read_quant_table", "stamp_metadata"]
