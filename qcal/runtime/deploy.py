"""TensorRT deployment verbs: calibration caches beside a tensorrt export, `engine(...)` and the CLI's `lint`
and `engine` subcommands.

    qcal lint out/model.int8.onnx --target tensorrt          # rule by rule; exit 1 on a violation
    qcal engine out/model.int8.onnx -o out/model.engine --fp16-fallback
    qcal engine out/model.fp32.onnx --cache out/calib.cache --calib SRC -o out/model.engine   # implicit, TRT <= 10

Where TensorRT does not import, `engine` builds nothing and prints (and records) the trtexec line that builds
the same engine on the device.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.errors import ExporterError
from exporters.quant_table import QuantTable, atomic_write_text
from exporters.tensorrt import (
    EngineOptions,
    TensorRTMissingError,
    build_engine,
    engine_key,
    implicit_supported,
    trt_version,
    trtexec_command,
)
from exporters.trt_cache import check_stamp, write_ort_trt_table, write_trt_cache
from exporters.trt_lint import lint_tensorrt
from qcal.errors import CalibrationError, ExportError

CACHE_NAME = "calib.cache"          # native TensorRT cache (implicit INT8, TensorRT <= 10)
ORT_TRT_DIR = "ort_trt"             # ORT TensorRT EP table: ort_trt/calibration.flatbuffers


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_caches(table: QuantTable, directory: Path, fp32_onnx: Path, *, calib_hash: str, config_hash: str,
                 model_sha256: str, calib_size: int) -> dict[str, Path]:
    """Both caches, stamped with the hashes a later `qcal engine` checks. Keys: ONNX tensor names of fp32_onnx."""
    stamp = {"calib_hash": calib_hash, "config_hash": config_hash, "model_sha256": model_sha256,
             "onnx_sha256": sha256_file(fp32_onnx), "calib_size": str(calib_size)}
    try:
        return {"trt_cache": write_trt_cache(table, directory / CACHE_NAME, stamp=stamp),
                "ort_trt_table": write_ort_trt_table(table, directory / ORT_TRT_DIR, stamp=stamp)}
    except ExporterError as e:
        raise ExportError(str(e)) from e


@dataclass
class EngineReport:
    onnx: str
    engine: str
    mode: str                      # explicit | implicit
    trtexec: str
    built: bool
    trt_version: str | None
    lint: dict[str, Any] | None = None
    cache_stamp: dict[str, str] | None = None
    build_seconds: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def engine(onnx_path: str | Path, out: str | Path, *, options: EngineOptions | None = None,
           cache: str | Path | None = None, calib: Any = None, config_hash: str | None = None,
           lint: bool = True, build: bool = True) -> EngineReport:
    """Build a TensorRT engine where TensorRT imports; always return (and write beside the engine, as
    <engine>.build.json) the equivalent trtexec line. A cache is checked against its stamp first: the FP32 ONNX
    at hand, the calibration set at hand (`calib`, required with a cache) and config_hash when given. The engine
    is written to `out` as given; build=False plans only (lint, stamp check, trtexec line, build.json)."""
    import calib_sets

    opts = options or EngineOptions()
    src = Path(onnx_path)
    if not src.is_file():
        raise ExportError(f"model {src} does not exist: pass the ONNX file `qcal quantize` wrote.")
    try:   # a model from a qcal set must come from a whole one (its run finished, nothing changed since)
        from exporters.onnx_io import read_metadata
        from exporters.outset import verify_member

        verify_member(src, written_by_qcal="qcal.version" in read_metadata(src))
    except ExporterError as e:
        raise ExportError(str(e)) from e
    stamp = None
    lint_res = None
    if cache is not None:
        if calib is None:
            raise CalibrationError("a calibration cache is only used together with --calib (the set it must have "
                                   "been made from): qcal checks its content hash against the cache's stamp.")
        try:
            cs = calib_sets.load(calib)
        except calib_sets.CalibSetError as e:
            raise CalibrationError(str(e)) from e
        try:
            from exporters.trt_cache import read_stamp

            n = int(read_stamp(cache).get("calib_size", len(cs)))
            expected = {"onnx_sha256": sha256_file(src), "calib_hash": cs.take(n).content_hash,
                        **({"config_hash": config_hash} if config_hash else {})}
            stamp = _check(cache, expected)
        except ExporterError as e:
            raise ExportError(str(e)) from e
        mode = "implicit"
    else:
        mode = "explicit"
        if lint:
            res = lint_tensorrt(src)
            lint_res = res.to_dict()
            if not res.ok:
                raise ExportError(f"{src.name} breaks TensorRT's Q/DQ rules:\n{res.summary(limit=10)}\n"
                                  "Fix them (or pass --no-lint to build anyway).")
    eng = Path(out)
    line = trtexec_command(src, eng, opts, cache=cache)
    version = trt_version()
    report = EngineReport(str(src), str(eng), mode, line, False, version, lint_res, stamp,
                          extra={"key": engine_key(src, opts, cache)})
    if not build:
        report.note = "plan only (--plan-only): no engine built; run the trtexec line to build it."
    elif version is None:
        report.note = "TensorRT is not installed here: no engine built; run the trtexec line on the device."
    elif mode == "implicit" and not implicit_supported(version):
        report.note = f"TensorRT {version} has no implicit INT8: build the Q/DQ model instead."
    else:
        try:
            r = build_engine(src, eng, opts, cache=cache)
        except TensorRTMissingError as e:
            report.note = str(e)
        except ExporterError as e:
            raise ExportError(str(e)) from e
        else:
            report.built, report.build_seconds = True, round(r.seconds, 2)
            report.extra["size_mb"] = round(r.size_mb, 3)
    atomic_write_text(eng.with_name(eng.name + ".build.json"), json.dumps(report.to_dict(), indent=1))
    return report


def _check(cache: str | Path, expected: dict[str, str]) -> dict[str, str]:
    stamp = check_stamp(cache, {k: v for k, v in expected.items() if k != "onnx_sha256"})
    if stamp.get("onnx_sha256") and stamp["onnx_sha256"] != expected["onnx_sha256"]:
        from exporters.trt_cache import StaleCacheError

        raise StaleCacheError(f"stale calibration cache {Path(cache).name}: it was made for the FP32 ONNX "
                              f"onnx_sha256={stamp['onnx_sha256'][:16]}, but the model at hand has "
                              f"{expected['onnx_sha256'][:16]}. Re-calibrate instead of reusing it.")
    return stamp
