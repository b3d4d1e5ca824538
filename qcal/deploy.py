"""TensorRT deployment verbs: calibration caches beside a tensorrt export, `engine(...)` and the CLI's `lint`
and `engine` subcommands.

    qcal lint out/model.int8.onnx --target tensorrt          # rule by rule; exit 1 on a violation
    qcal engine out/model.int8.onnx -o out/model.engine --fp16-fallback
    qcal engine out/model.fp32.onnx --cache out/calib.cache --calib SRC -o out/model.engine   # implicit, TRT <= 10

Where TensorRT does not import, `engine` builds nothing and prints (and records) the trtexec line that builds
the same engine on the device.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.errors import ExporterError
from exporters.quant_table import QuantTable, atomic_write_text
from exporters.tensorrt import (
    EngineOptions,
    TensorRTMissingError,
    build_engine,
    engine_path,
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
           lint: bool = True) -> EngineReport:
    """Build a TensorRT engine where TensorRT imports; always return (and write beside the engine, as
    <engine>.build.json) the equivalent trtexec line. A cache is checked against its stamp first: the FP32 ONNX
    at hand, the calibration set at hand (`calib`, required with a cache) and config_hash when given."""
    import calib_sets

    opts = options or EngineOptions()
    src = Path(onnx_path)
    if not src.is_file():
        raise ExportError(f"model {src} does not exist: pass the ONNX file `qcal quantize` wrote.")
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
    eng = engine_path(src, out, opts, cache)
    line = trtexec_command(src, eng, opts, cache=cache)
    version = trt_version()
    report = EngineReport(str(src), str(eng), mode, line, False, version, lint_res, stamp)
    if version is None:
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
            report.extra = {"size_mb": round(r.size_mb, 3)}
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


# --- CLI ---------------------------------------------------------------------------------------------------
def add_lint(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("lint", help="check a Q/DQ ONNX model against TensorRT's explicit-quantization rules",
                       description="Rule-by-rule conformance (rule id, source in NVIDIA's docs, offending node, fix). "
                       "Exit 0: conforming; 1: violations; 2: the model cannot be read.")
    p.add_argument("model", help="the Q/DQ ONNX file")
    p.add_argument("--target", default="tensorrt", choices=["tensorrt"], help="rule set (only tensorrt)")
    p.add_argument("--json", help="also write the full result as JSON here")
    p.add_argument("--limit", type=int, default=50, help="violations printed (all go to --json)")


def run_lint(args: argparse.Namespace) -> int:
    try:
        res = lint_tensorrt(args.model)
    except (ExporterError, OSError) as e:
        print(f"qcal: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # onnx raises DecodeError & co. on a file that is not a model
        print(f"qcal: error: {args.model} is not a readable ONNX model: {e}", file=sys.stderr)
        return 2
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(res.to_dict(), indent=1))
    print(res.summary(limit=args.limit))
    return 0 if res.ok else 1


def add_engine(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("engine", help="build a TensorRT engine (or print the trtexec line where TensorRT is absent)",
                       description="Explicit: MODEL is the Q/DQ ONNX (linted first). Implicit (TensorRT <= 10): "
                       "MODEL is the FP32 ONNX, --cache the calibration cache qcal wrote and --calib the set it was "
                       "made from; a cache whose stamp does not match is refused. The engine is named "
                       "<out stem>.<content hash>.engine; <engine>.build.json records the trtexec line.")
    p.add_argument("model", help="Q/DQ ONNX (explicit) or FP32 ONNX with --cache (implicit)")
    p.add_argument("-o", "--out", required=True, help="engine path (the content hash is added to its name)")
    p.add_argument("--fp16-fallback", action="store_true", help="allow FP16 for layers left in float")
    p.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit in MiB (default 1024)")
    p.add_argument("--timing-cache", help="timing cache file (read if present, written after the build)")
    p.add_argument("--cache", help="native TensorRT calibration cache (implicit INT8)")
    p.add_argument("--calib", help="the calibration set the cache must come from (required with --cache)")
    p.add_argument("--config", help="the qcal config TOML the cache must come from (checked when given)")
    p.add_argument("--no-lint", action="store_true", help="build a Q/DQ model even if it breaks lint rules")


def run_engine(args: argparse.Namespace) -> int:
    from qcal.config import QuantConfig

    cfg_hash = QuantConfig.load(args.config).hash() if args.config else None
    opts = EngineOptions(fp16=args.fp16_fallback, workspace_mb=args.workspace_mb, timing_cache=args.timing_cache)
    rep = engine(args.model, args.out, options=opts, cache=args.cache, calib=args.calib, config_hash=cfg_hash,
                 lint=not args.no_lint)
    print(f"mode: {rep.mode}; TensorRT: {rep.trt_version or 'not installed'}")
    if rep.cache_stamp:
        print(f"cache stamp matches: calibration set {rep.cache_stamp['calib_hash'][:12]}, "
              f"FP32 ONNX {rep.cache_stamp.get('onnx_sha256', '?')[:12]}")
    print(("built " + rep.engine) if rep.built else rep.note)
    print(f"trtexec equivalent:\n  {rep.trtexec}")
    print(f"report: {rep.engine}.build.json")
    return 0
