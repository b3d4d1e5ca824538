"""The one result protocol: what `qcal.quantize` returns for every model kind.

Every result -- a detector or torch module (qcal.api.QuantResult), an in-memory LLM (qcal.llm.LLMQuantResult), an
LLM quantized layer by layer (qcal.llm.offload_io.OffloadedLLMResult) -- has

    result.kind          "vision" | "llm" | "llm-offloaded" (the registry key qcal.robustness dispatches on)
    result.table         the QuantTable it ships (exporters.quant_table: one schema for every kind)
    result.summary()     a few human-readable lines
    result.to_dict()     what report.json holds
    result.export(dir)   the whole output set, written at once (exporters.outset)
    result.evaluate(..)  accuracy on held-out data (mAP for detectors, perplexity and KL for LLMs)

`is_result(x)` tells whether x is one (a structural check, no import of the heavy kinds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from exporters.quant_table import QuantTable

KINDS = ("vision", "llm", "llm-offloaded")


@runtime_checkable
class Result(Protocol):
    kind: str

    @property
    def table(self) -> QuantTable: ...

    def summary(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...

    def export(self, directory: Any) -> dict[str, Path]: ...

    def evaluate(self, eval: Any) -> Any: ...


def is_result(x: object) -> bool:
    """Whether `x` is a qcal quantization result (any kind)."""
    return isinstance(x, Result) and getattr(x, "kind", None) in KINDS


__all__ = ["KINDS", "Result", "is_result"]
