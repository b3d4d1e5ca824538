"""The QuantTable: every quantization decision of a model, and the one contract between the engine and the writers.

One schema for every model kind (YOLO, torch module, LLM, offloaded LLM). Per tensor:
  * kind "activation": dtype, scale and zero point (per tensor), the calibrated range rmin/rmax;
  * kind "weight" / "bias": dtype, bits, scale(s) and zero point(s) per tensor, per channel on `axis`, or per
    block of `group_size` along `axis` (ONNX's blocked DequantizeLinear layout: the scale has the weight's rank
    with dim `axis` divided by group_size), and the exact integer codes in the layout of the ONNX initializer.
The simulator dequantizes these codes; the exporters write them bit for bit; `read_quant_table` reads them back
from an exported graph and the two compare equal.

On disk: `quant_table.json` (format qcal.quant_table/2) holds everything small inline; arrays of more than
INLINE values (weight codes always, group-wise scales) go to `quant_table.arrays.npz` beside it, named in the JSON
with their sha256, so a table round-trips through JSON (+ npz) unchanged and a swapped array file is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from exporters.errors import ExporterError

FORMAT = "qcal.quant_table/2"
DTYPES = ("int8", "uint8", "int4", "uint4", "int16", "uint16", "int32", "float16", "float32")
KINDS = ("activation", "weight", "bias")
INLINE = 4096   # arrays with at most this many values are written into the JSON itself
_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int4": (-8, 7), "uint4": (0, 15), "int16": (-(2**15), 2**15 - 1),
          "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1)}
_NP = {"int8": np.int8, "uint8": np.uint8, "int4": np.int8, "uint4": np.uint8, "int16": np.int16,
       "uint16": np.uint16, "int32": np.int32}


def dtype_range(dtype: str) -> tuple[int, int]:
    """The integer range ONNX QuantizeLinear saturates to for this dtype."""
    if dtype not in _RANGE:
        raise ExporterError(f"dtype {dtype!r} is not an integer type; choose one of {sorted(_RANGE)}.")
    return _RANGE[dtype]


@dataclass(frozen=True, eq=False)
class TensorQuant:
    """Quantization of one tensor (see the module docstring). Arrays compare bit for bit."""

    dtype: str
    scale: Any                     # float32 array (1,) per tensor, (C,) per channel, blocked: weight rank
    zero_point: Any                # integer array, the scale's shape
    axis: int | None = None
    rmin: float | None = None
    rmax: float | None = None
    kind: str = "activation"
    bits: int = 0                  # 0: the dtype's width; 7 for reduce_range int8 weights, 4 for int4
    group_size: int | None = None
    codes: Any = None              # weights/biases: integer codes (np.ndarray), the initializer's layout

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ExporterError(f"TensorQuant dtype {self.dtype!r}: choose one of {DTYPES}.")
        if self.kind not in KINDS:
            raise ExporterError(f"TensorQuant kind {self.kind!r}: choose one of {KINDS}.")
        s = np.atleast_1d(np.asarray(self.scale, dtype=np.float32))
        z = np.atleast_1d(np.asarray(self.zero_point)).astype(np.int64)
        if s.size == 0 or s.shape != z.shape:
            raise ExporterError(f"TensorQuant needs one zero point per scale (at least one): scale {s.shape}, "
                                f"zero point {z.shape}.")
        if not np.all(np.isfinite(s)) or not np.all(s > 0):
            raise ExporterError(f"TensorQuant scales must be finite and > 0, got {s.reshape(-1)[:4]}...")
        object.__setattr__(self, "scale", s)
        object.__setattr__(self, "zero_point", z)
        width = {"int8": 8, "uint8": 8, "int4": 4, "uint4": 4, "int16": 16, "uint16": 16, "int32": 32}
        object.__setattr__(self, "bits", int(self.bits) or width.get(self.dtype, 16))
        if self.dtype in ("int4", "uint4"):
            object.__setattr__(self, "bits", 4)
        if self.codes is not None:
            c = np.asarray(self.codes)
            if not np.issubdtype(c.dtype, np.integer):
                raise ExporterError(f"TensorQuant codes must be integers, got {c.dtype}.")
            lo, hi = dtype_range(self.dtype)
            if c.size and (int(c.min()) < lo or int(c.max()) > hi):
                raise ExporterError(f"TensorQuant codes span {int(c.min())}..{int(c.max())}, outside {self.dtype}.")
            object.__setattr__(self, "codes", c.astype(_NP[self.dtype]))
        if self.group_size is not None and (self.axis is None or self.group_size < 1):
            raise ExporterError("a group-wise TensorQuant needs an axis and group_size >= 1.")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def replace(self, **kw: Any) -> TensorQuant:
        return replace(self, **kw)

    def expanded(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Scale and zero point broadcast against a tensor of `shape` (per tensor, per channel or blocked)."""
        s, z = self.scale, self.zero_point
        if self.axis is None or s.size == 1 and self.group_size is None:
            return s.reshape(()), z.reshape(())
        ax = self.axis % len(shape)
        if self.group_size is None:
            view = [1] * len(shape)
            view[ax] = -1
            return s.reshape(view), z.reshape(view)
        s = np.repeat(s, self.group_size, axis=ax).take(range(shape[ax]), axis=ax)
        z = np.repeat(z, self.group_size, axis=ax).take(range(shape[ax]), axis=ax)
        return s, z

    def dequantized(self) -> np.ndarray:
        """codes -> float32 values, (q - z) * s exactly as ONNX DequantizeLinear computes them."""
        if self.codes is None:
            raise ExporterError("this TensorQuant has no codes to dequantize (an activation, or a table loaded "
                                "without its arrays file).")
        s, z = self.expanded(self.codes.shape)
        return ((self.codes.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorQuant):
            return NotImplemented
        same = (self.dtype, self.axis, self.rmin, self.rmax, self.kind, self.bits, self.group_size) == \
               (other.dtype, other.axis, other.rmin, other.rmax, other.kind, other.bits, other.group_size)
        return bool(same and _same(self.scale, other.scale) and _same(self.zero_point, other.zero_point)
                    and ((self.codes is None and other.codes is None) or
                         (self.codes is not None and other.codes is not None and _same(self.codes, other.codes))))

    __hash__ = None  # type: ignore[assignment]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@dataclass(frozen=True)
class QuantTable:
    tensors: dict[str, TensorQuant]
    float_nodes: tuple[str, ...] = ()
    float_reasons: dict[str, str] = field(default_factory=dict)
    target: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def activations(self) -> dict[str, TensorQuant]:
        return {k: v for k, v in self.tensors.items() if v.kind == "activation"}

    def weights(self) -> dict[str, TensorQuant]:
        return {k: v for k, v in self.tensors.items() if v.kind in ("weight", "bias")}

    def replace(self, **kw: Any) -> QuantTable:
        return replace(self, **kw)

    # --- serialisation: JSON plus a dict of named arrays ---------------------------------------------
    def to_dict(self, arrays: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """The JSON form; arrays larger than INLINE values go to `arrays` (by name) and are referenced by sha256.
        Without `arrays`, every array is written inline."""
        def put(name: str, a: np.ndarray) -> Any:
            if arrays is None or a.size <= INLINE:
                return {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.reshape(-1).tolist()}
            arrays[name] = a
            return {"dtype": str(a.dtype), "shape": list(a.shape), "npz": name, "sha256": _sha(a)}

        tensors = {}
        for k, v in sorted(self.tensors.items()):
            d: dict[str, Any] = {"kind": v.kind, "dtype": v.dtype, "bits": v.bits, "axis": v.axis,
                                 "group_size": v.group_size, "rmin": v.rmin, "rmax": v.rmax,
                                 "scale": put(f"{k}::scale", v.scale), "zero_point": put(f"{k}::zero_point",
                                                                                          v.zero_point)}
            if v.codes is not None:
                d["codes"] = put(f"{k}::codes", v.codes)
            tensors[k] = d
        return {"format": FORMAT, "target": self.target, "float_nodes": list(self.float_nodes),
                "float_reasons": dict(self.float_reasons), "meta": self.meta, "tensors": tensors}

    @classmethod
    def from_dict(cls, d: dict[str, Any], arrays: Any = None) -> QuantTable:
        fmt = d.get("format") if isinstance(d, dict) else None
        if fmt == "qcal.quant_table/1":
            return _from_v1(d)
        if fmt != FORMAT:
            raise ExporterError(f"not a qcal quant table (format={fmt!r}); expected {FORMAT!r}.")

        def get(spec: Any, name: str) -> np.ndarray:
            if "data" in spec:
                return np.asarray(spec["data"], dtype=spec["dtype"]).reshape(spec["shape"])
            if arrays is None or spec["npz"] not in arrays:
                raise ExporterError(f"quant table array {spec['npz']!r} is missing: keep the .arrays.npz file "
                                    "beside the table JSON.")
            a = np.asarray(arrays[spec["npz"]])
            if _sha(a) != spec["sha256"]:
                raise ExporterError(f"quant table array {spec['npz']!r} does not match its sha256: the arrays file "
                                    "belongs to another table; re-export both together.")
            return a

        try:
            tensors = {k: TensorQuant(dtype=v["dtype"], scale=get(v["scale"], k), zero_point=get(v["zero_point"], k),
                                      axis=v.get("axis"), rmin=v.get("rmin"), rmax=v.get("rmax"), kind=v["kind"],
                                      bits=v.get("bits", 0), group_size=v.get("group_size"),
                                      codes=get(v["codes"], k) if "codes" in v else None)
                       for k, v in d["tensors"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise ExporterError(f"quant table entry is malformed: {e!r}") from e
        return cls(tensors, tuple(d.get("float_nodes", ())), dict(d.get("float_reasons", {})), d.get("target", ""),
                   dict(d.get("meta", {})))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> Path:
        """Write `path` (JSON) and, when there are large arrays, `<stem>.arrays.npz` beside it (each atomically)."""
        p = Path(path)
        arrays: dict[str, np.ndarray] = {}
        text = json.dumps(self.to_dict(arrays), indent=1)
        npz = arrays_path(p)
        if arrays:
            buf = io.BytesIO()
            np.savez(buf, **arrays)  # type: ignore[arg-type]
            atomic_write_bytes(npz, buf.getvalue())
        else:
            npz.unlink(missing_ok=True)
        atomic_write_text(p, text)
        return p

    @classmethod
    def load(cls, path: str | Path) -> QuantTable:
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ExporterError(f"quant table {p} does not exist.") from None
        except json.JSONDecodeError as e:
            raise ExporterError(f"quant table {p} is not valid JSON: {e}") from e
        npz = arrays_path(p)
        if npz.is_file():
            with np.load(npz, allow_pickle=False) as arrays:
                return cls.from_dict(d, dict(arrays))
        return cls.from_dict(d)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantTable):
            return NotImplemented
        return (self.float_nodes, self.float_reasons, self.target, self.meta) == \
            (other.float_nodes, other.float_reasons, other.target, other.meta) and \
            sorted(self.tensors) == sorted(other.tensors) and all(self.tensors[k] == other.tensors[k]
                                                                  for k in self.tensors)

    __hash__ = None  # type: ignore[assignment]


def arrays_path(table_json: Path) -> Path:
    return table_json.with_name(table_json.name.removesuffix(".json") + ".arrays.npz")


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + np.ascontiguousarray(a).tobytes()).hexdigest()


def _from_v1(d: dict[str, Any]) -> QuantTable:
    """Tables written before 0.2 (activations only, scales inline) still load."""
    try:
        tensors = {k: TensorQuant(v["dtype"], v["scale"], v["zero_point"], v.get("axis"), v.get("rmin"), v.get("rmax"),
                                  v.get("kind", "activation")) for k, v in d["tensors"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise ExporterError(f"quant table entry is malformed: {e!r}") from e
    return QuantTable(tensors, tuple(d.get("float_nodes", ())), dict(d.get("float_reasons", {})), d.get("target", ""),
                      dict(d.get("meta", {})))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
