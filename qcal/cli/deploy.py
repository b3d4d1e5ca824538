"""The `qcal lint` and `qcal engine` subcommands: their parsers (light: built for every `qcal` call) and runners
(which import the TensorRT/ONNX machinery of qcal.runtime.deploy only when run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qcal.errors import QcalError


def file_target(flag: str, path: str | Path) -> Path:
    """A path a file will be written to, checked before any work: not a folder, its parent a folder or creatable
    (no file in the way)."""
    p = Path(path)
    if p.is_dir():
        raise QcalError(f"{flag} {p} is a folder; give a file path (e.g. {p / 'out.json'}).")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise QcalError(f"{flag} {p}: {parent} is a file, so no folder can be made there; choose another "
                                "path.")
            break
    return p


def _at_least(flag: str, value: int, low: int, what: str) -> None:
    if value < low:
        raise QcalError(f"{flag} {value}: must be >= {low} ({what}).")


def add_lint(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("lint", help="check a Q/DQ ONNX model against TensorRT's explicit-quantization rules",
                       description="Rule-by-rule conformance (rule id, source in NVIDIA's docs, offending node, fix). "
                       "Exit 0: conforming; 1: violations; 2: the model cannot be read.")
    p.add_argument("model", help="the Q/DQ ONNX file")
    p.add_argument("--target", default="tensorrt", choices=["tensorrt"], help="rule set (only tensorrt)")
    p.add_argument("--json", help="also write the full result as JSON here")
    p.add_argument("--limit", type=int, default=50, help="violations printed (all go to --json)")


def run_lint(args: argparse.Namespace) -> int:
    from exporters.errors import ExporterError
    from exporters.quant_table import atomic_write_text
    from exporters.trt_lint import lint_tensorrt

    _at_least("--limit", args.limit, 0, "violations printed; all of them go to --json")
    if args.json:
        file_target("--json", args.json)
    if Path(args.model).is_file() and Path(args.model).stat().st_size == 0:
        raise QcalError(f"{args.model} is empty (0 bytes): the copy or export did not finish; pass the ONNX file "
                        "`qcal quantize` wrote.")
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
    _at_least("--workspace-mb", args.workspace_mb, 1, "the builder's workspace limit in MiB, e.g. 1024")
    file_target("-o", args.out)
    if args.timing_cache:
        file_target("--timing-cache", args.timing_cache)
    from exporters.tensorrt import EngineOptions
    from qcal.config import QuantConfig
    from qcal.runtime.deploy import engine

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
