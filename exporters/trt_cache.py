"""Calibration caches for implicit-INT8 TensorRT (<= 10) and ONNX Runtime's TensorRT execution provider.

Native TensorRT cache (what IInt8Calibrator.write_calibration_cache produces and trtexec --calib reads):

    TRT-8601-EntropyCalibration2          header: TensorRT version, calibrator
    images: 3c010a14                      one line per tensor: ONNX tensor name, big-endian hex float32 scale

The scale is amax / 127 (symmetric int8). ORT's TensorRT EP table is written by onnxruntime.quantization's
own `write_calibration_table` (calibration.flatbuffers / .cache / .json; the value is amax). Each cache gets a
sidecar `<file>.qcal.json` (TensorRT never reads it) with the calibration set's content hash, qcal's config
hash, the model hash and the cache file's own sha256: `check_stamp` refuses a cache whose sidecar does not
match what is at hand and says which hash differs.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporters.errors import ExporterError
from exporters.quant_table import QuantTable, TensorQuant, atomic_write_text

CALIBRATORS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
STAMP_KEYS = ("calib_hash", "config_hash", "model_sha256")
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")


class StaleCacheError(ExporterError):
    """A calibration cache was made for another model, calibration set or config."""


def amax_scales(table: QuantTable) -> dict[str, float]:
    """Per activation tensor, the symmetric int8 scale (amax / 127) TensorRT's cache holds.

    A tensorrt-profile table already holds that scale; another table (e.g. ort-cpu's uint8) is converted from
    its calibrated range.
    """
    out: dict[str, float] = {}
    for name, tq in sorted(table.activations().items()):
        if tq.dtype == "int8" and tq.zero_point.tolist() == [0] and tq.scale.size == 1:
            out[name] = _f32(float(tq.scale[0]))
        elif tq.rmin is not None and tq.rmax is not None:
            out[name] = _f32(max(abs(tq.rmin), abs(tq.rmax), 1e-12) / 127.0)
        else:
            raise ExporterError(f"tensor {name!r}: {tq.dtype} zero point {tq.zero_point.tolist()[:1]} without a range "
                                "cannot become a symmetric TensorRT scale; calibrate with target=tensorrt.")
    if not out:
        raise ExporterError("the quant table has no activations: nothing to write to a calibration cache.")
    return out


def _f32(x: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", x))[0])


def trt_scale(scale: float) -> float:
    """The float32 scale TensorRT derives (float32 amax / 127) from the amax written for `scale`: `scale` itself
    for all but ~1% of float32 values, else its nearest reachable neighbour (amax / 127 steps over some float32
    values). A tensorrt table holds only such scales, so every calibration file qcal writes reads back to it."""
    return _f32(_amax_f32(scale) / 127.0)


def _amax_f32(scale: float) -> float:
    """The float32 amax whose float32 amax / 127 is exactly `scale` (what TensorRT derives from a dynamic range):
    float32(scale * 127) or one of its float32 neighbours."""
    import numpy as np

    a = np.float32(scale * 127.0)
    for cand in (a, np.nextafter(a, np.float32(np.inf)), np.nextafter(a, np.float32(0))):
        if _f32(float(cand) / 127.0) == scale:
            return float(cand)
    return float(a)   # no float32 amax maps back exactly (never seen): the nearest one


def _table_from_scales(scales: Mapping[str, float], meta: dict[str, Any]) -> QuantTable:
    return QuantTable({k: TensorQuant("int8", (s,), (0,), rmin=-s * 127.0, rmax=s * 127.0)
                       for k, s in scales.items()}, target="tensorrt", meta=meta)


# --- native TensorRT cache ------------------------------------------------------------------------------
def write_trt_cache(table: QuantTable, path: str | Path, *, stamp: Mapping[str, str],
                    calibrator: str = "EntropyCalibration2", trt_version: int = 8601) -> Path:
    """Write the native cache (atomically) and its .qcal.json sidecar; returns the cache path."""
    _require_stamp(stamp)
    if calibrator not in CALIBRATORS:
        raise ExporterError(f"calibrator {calibrator!r}: choose one of {CALIBRATORS}.")
    lines = [f"TRT-{trt_version}-{calibrator}"]
    for name, s in amax_scales(table).items():
        if "\n" in name or ": " in name:
            raise ExporterError(f"tensor name {name!r} cannot be written to a TensorRT cache line.")
        lines.append(f"{name}: {struct.pack('>f', s).hex()}")
    p = Path(path)
    atomic_write_text(p, "\n".join(lines) + "\n")
    write_stamp(p, stamp, kind="tensorrt-native")
    return p


def read_trt_cache(path: str | Path) -> QuantTable:
    """Native cache -> QuantTable of int8 symmetric activations (exact: the hex is the float32 scale)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExporterError(f"calibration cache {p} does not exist.") from None
    rows = [r for r in text.splitlines() if r.strip()]
    m = _HEADER.match(rows[0].strip()) if rows else None
    if m is None:
        raise ExporterError(f"{p} is not a TensorRT calibration cache: the first line should look like "
                            f"'TRT-8601-EntropyCalibration2', got {rows[0][:60] if rows else 'nothing'!r}.")
    scales: dict[str, float] = {}
    for i, row in enumerate(rows[1:], start=2):
        lm = _LINE.match(row.rstrip())
        if lm is None:
            raise ExporterError(f"{p} line {i}: expected 'tensor: 8-hex-digit float32', got {row[:80]!r}.")
        scales[lm.group(1)] = float(struct.unpack(">f", bytes.fromhex(lm.group(2)))[0])
    return _table_from_scales(scales, {"trt_version": int(m.group(1)), "calibrator": m.group(2)})


# --- ONNX Runtime TensorRT EP table ----------------------------------------------------------------------
def write_ort_trt_table(table: QuantTable, directory: str | Path, *, stamp: Mapping[str, str]) -> Path:
    """calibration.flatbuffers (+ .cache, .json) for ORT's TensorRT EP (trt_int8_calibration_table_name), by
    onnxruntime.quantization.write_calibration_table; returns the flatbuffers path (stamped)."""
    import numpy as np
    from onnxruntime.quantization.calibrate import TensorData
    from onnxruntime.quantization.quant_utils import write_calibration_table

    _require_stamp(stamp)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cache = {k: TensorData(lowest=np.float32(-a), highest=np.float32(a))
             for k, a in ((k, _amax_f32(s)) for k, s in amax_scales(table).items())}
    with tempfile.TemporaryDirectory(dir=d, prefix=".ort-trt-") as tmp:
        write_calibration_table(cache, dir=tmp)
        for name in ("calibration.json", "calibration.cache", "calibration.flatbuffers"):
            (Path(tmp) / name).replace(d / name)
    fb = d / "calibration.flatbuffers"
    write_stamp(fb, stamp, kind="ort-tensorrt-ep")
    return fb


def read_ort_trt_table(path: str | Path) -> QuantTable:
    """calibration.flatbuffers (ORT TensorRT EP) -> QuantTable of int8 symmetric activations."""
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    p = Path(path)
    if not p.is_file():
        raise ExporterError(f"ORT TensorRT calibration table {p} does not exist.")
    try:
        t = TrtTable.GetRootAsTrtTable(p.read_bytes(), 0)
        pairs = [(t.Dict(i).Key().decode(), t.Dict(i).Value().decode()) for i in range(t.DictLength())]
        scales = {k: _f32(_f32(float(v)) / 127.0) for k, v in pairs}   # TensorRT: float32 amax, then / 127
    except Exception as e:  # flatbuffers raises struct/index errors on a foreign file
        raise ExporterError(f"{p} is not an ORT TensorRT calibration table (flatbuffers): {e!r}") from e
    return _table_from_scales(scales, {"format": "ort-tensorrt-ep"})


# --- hash sidecar ----------------------------------------------------------------------------------------
def stamp_path(cache: str | Path) -> Path:
    p = Path(cache)
    return p.with_name(p.name + ".qcal.json")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _require_stamp(stamp: Mapping[str, str]) -> None:
    missing = [k for k in STAMP_KEYS if not stamp.get(k)]
    if missing:
        raise ExporterError(f"a calibration cache needs {missing} in its stamp: a cache that cannot be matched "
                            "to its model and calibration set could be reused stale.")


def write_stamp(cache: Path, stamp: Mapping[str, str], *, kind: str) -> Path:
    _require_stamp(stamp)
    data = {"format": "qcal.cache_stamp/1", "kind": kind, "cache": cache.name, "cache_sha256": file_sha256(cache),
            **{k: str(v) for k, v in stamp.items()}}
    sp = stamp_path(cache)
    atomic_write_text(sp, json.dumps(data, indent=1, sort_keys=True))
    return sp


def read_stamp(cache: str | Path) -> dict[str, str]:
    sp = stamp_path(cache)
    if not sp.is_file():
        raise StaleCacheError(f"{Path(cache).name} has no sidecar {sp.name}: nothing says which model and "
                              "calibration set it was made for. Re-create it with `qcal quantize --target tensorrt`.")
    try:
        data = json.loads(sp.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise StaleCacheError(f"{sp} is not valid JSON ({e}); re-create the cache.") from e
    if data.get("format") != "qcal.cache_stamp/1":
        raise StaleCacheError(f"{sp} is not a qcal cache stamp (format={data.get('format')!r}).")
    return {k: str(v) for k, v in data.items()}


def check_stamp(cache: str | Path, expected: Mapping[str, str]) -> dict[str, str]:
    """Refuse a cache whose file changed since stamping, or whose stamp differs from `expected` (any of
    calib_hash, config_hash, model_sha256 given). Returns the stamp."""
    p = Path(cache)
    stamp = read_stamp(p)
    if file_sha256(p) != stamp.get("cache_sha256"):
        raise StaleCacheError(f"{p.name} was modified after qcal wrote it (sha256 differs from its sidecar); "
                              "re-create it with `qcal quantize --target tensorrt`.")
    names = {"calib_hash": "calibration set", "config_hash": "qcal config", "model_sha256": "model"}
    for key in STAMP_KEYS:
        want = expected.get(key)
        if want and stamp.get(key) != want:
            raise StaleCacheError(f"stale calibration cache {p.name}: it was made for {names[key]} {key}="
                                  f"{stamp.get(key, '?')[:16]}, but the {names[key]} at hand has {want[:16]}. "
                                  "Re-calibrate (qcal quantize --target tensorrt) instead of reusing it.")
    return stamp
