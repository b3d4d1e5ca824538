"""The QuantTable: what is quantized, with which parameters, and which nodes stay in float.

It is plain data that serialises to JSON, so it can come from the engine, a previous run, or a native
TensorRT calibration cache. Scales are float32 values; JSON keeps them exactly (repr of a Python float
holding a float32 value round-trips).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exporters.errors import ExporterError

DTYPES = ("int8", "uint8", "int4", "uint4", "int32", "float16", "float32")


@dataclass(frozen=True)
class TensorQuant:
    """Quantization of one tensor. Per-tensor: one scale and zero point; per-channel: one per channel on `axis`.

    rmin/rmax: the calibrated real range (activations), kept so a profile can recompute parameters.
    """

    dtype: str
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    rmin: float | None = None
    rmax: float | None = None
    kind: str = "activation"  # or "weight"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ExporterError(f"TensorQuant dtype {self.dtype!r}: choose one of {DTYPES}.")
        if len(self.scale) != len(self.zero_point) or not self.scale:
            raise ExporterError("TensorQuant needs as many zero points as scales (at least one).")
        if any(not (s > 0) or s != s or s == float("inf") for s in self.scale):
            raise ExporterError(f"TensorQuant scales must be finite and > 0, got {self.scale[:4]}...")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None


@dataclass(frozen=True)
class QuantTable:
    tensors: dict[str, TensorQuant]
    float_nodes: tuple[str, ...] = ()
    float_reasons: dict[str, str] = field(default_factory=dict)
    target: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def activations(self) -> dict[str, TensorQuant]:
        return {k: v for k, v in self.tensors.items() if v.kind == "activation"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "qcal.quant_table/1",
            "target": self.target,
            "float_nodes": list(self.float_nodes),
            "float_reasons": dict(self.float_reasons),
            "meta": self.meta,
            "tensors": {k: {kk: (list(vv) if isinstance(vv, tuple) else vv) for kk, vv in asdict(v).items()}
                        for k, v in sorted(self.tensors.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantTable:
        if d.get("format") != "qcal.quant_table/1":
            raise ExporterError(f"not a qcal quant table (format={d.get('format')!r}); expected 'qcal.quant_table/1'.")
        try:
            tensors = {k: TensorQuant(dtype=v["dtype"], scale=tuple(float(s) for s in v["scale"]),
                                      zero_point=tuple(int(z) for z in v["zero_point"]), axis=v.get("axis"),
                                      rmin=v.get("rmin"), rmax=v.get("rmax"), kind=v.get("kind", "activation"))
                       for k, v in d["tensors"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ExporterError(f"quant table entry is malformed: {e!r}") from e
        return cls(tensors, tuple(d.get("float_nodes", ())), dict(d.get("float_reasons", {})),
                   d.get("target", ""), dict(d.get("meta", {})))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> QuantTable:
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ExporterError(f"quant table {p} does not exist.") from None
        except json.JSONDecodeError as e:
            raise ExporterError(f"quant table {p} is not valid JSON: {e}") from e


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
