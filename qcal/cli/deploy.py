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
    from qcal.cli.options import add_subcommand, add_target

    p = add_subcommand(sub, "lint", help="check a Q/DQ ONNX model against TensorRT's explicit-quantization rules",
                       description="Rule-by-rule conformance (rule id, source in NVIDIA's docs, offending node, fix). "
                       "Exit 0: conforming; 1: violations; 2: the model cannot be read.",
                       examples=["qcal lint out/model.int8.onnx --json lint.json"])
    p.add_argument("model", help="the Q/DQ ONNX file")
    add_target(p, "the rule set: tensorrt (ONNX Runtime CPU runs any Q/DQ graph, so ort-cpu has none) "
               "(default: tensorrt)")
    p.add_argument("--json", help="also write the full result as JSON here")
    p.add_argument("--limit", type=int, default=50, help="violations printed (all go to --json)")


def run_lint(args: argparse.Namespace) -> int:
    from exporters.errors import ExporterError
    from exporters.outset import user_mode
    from exporters.quant_table import atomic_write_text
    from exporters.trt_lint import lint_tensorrt

    if args.target not in (None, "tensorrt"):
        raise QcalError(f"qcal lint --target {args.target}: there are lint rules only for tensorrt (ONNX Runtime "
                        "CPU runs any Q/DQ graph); use --target tensorrt, or leave --target out.")
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
        user_mode(args.json)   # the user's umask, not mkstemp's 0600
    print(res.summary(limit=args.limit))
    return 0 if res.ok else 1


def add_engine(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from qcal.cli.options import add_calib, add_config, add_out, add_subcommand

    p = add_subcommand(sub, "engine", help="build a TensorRT engine (exit 2 where TensorRT is absent, unless "
                       "--plan-only)",
                       description="Explicit: MODEL is the Q/DQ ONNX (linted first). Implicit (TensorRT <= 10): "
                       "MODEL is the FP32 ONNX, --cache the calibration cache qcal wrote and --calib the set it was "
                       "made from; a cache whose stamp does not match is refused. The engine is written to -o as given; "
                       "<engine>.build.json records the trtexec line and the content key. Exit 0: "
                       "built (or, with --plan-only, planned); 2: nothing built (TensorRT absent or unable: the "
                       "trtexec line to run on the device is printed and recorded) or an input is unusable.",
                       examples=["qcal engine out/model.int8.onnx -o out/model.engine --fp16-fallback",
                                 "qcal engine out/model.int8.onnx -o out/model.engine --plan-only   # trtexec line"])
    p.add_argument("model", help="Q/DQ ONNX (explicit) or FP32 ONNX with --cache (implicit)")
    add_out(p, "engine path", default=None, required=True)
    p.add_argument("--fp16-fallback", action="store_true", help="allow FP16 for layers left in float")
    p.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit in MiB")
    p.add_argument("--timing-cache", help="timing cache file (read if present, written after the build)")
    p.add_argument("--cache", help="native TensorRT calibration cache (implicit INT8)")
    add_calib(p, "the calibration set the cache must come from (required with --cache)")
    add_config(p, "the qcal config TOML the cache must come from (checked when given)")
    p.add_argument("--no-lint", action="store_true", help="build a Q/DQ model even if it breaks lint rules")
    p.add_argument("--plan-only", action="store_true", help="only the plan: lint, check the cache stamp, print and "
                   "record the trtexec line, and exit 0 without building")


def run_engine(args: argparse.Namespace) -> int:
    _at_least("--workspace-mb", args.workspace_mb, 1, "the builder's workspace limit in MiB, e.g. 1024")
    file_target("-o", args.out)
    if args.timing_cache:
        file_target("--timing-cache", args.timing_cache)
    from exporters.outset import user_mode
    from exporters.tensorrt import EngineOptions
    from qcal.config import QuantConfig
    from qcal.runtime.deploy import engine

    cfg_hash = QuantConfig.load(args.config).hash() if args.config else None
    opts = EngineOptions(fp16=args.fp16_fallback, workspace_mb=args.workspace_mb, timing_cache=args.timing_cache)
    rep = engine(args.model, args.out, options=opts, cache=args.cache, calib=args.calib, config_hash=cfg_hash,
                 lint=not args.no_lint, build=not args.plan_only)
    build_json = f"{rep.engine}.build.json"
    user_mode(build_json)   # the user's umask, not mkstemp's 0600
    print(f"mode: {rep.mode}; TensorRT: {rep.trt_version or 'not installed'}")
    if rep.cache_stamp:
        print(f"cache stamp matches: calibration set {rep.cache_stamp['calib_hash'][:12]}, "
              f"FP32 ONNX {rep.cache_stamp.get('onnx_sha256', '?')[:12]}")
    print(("built " + rep.engine) if rep.built else rep.note)
    print(f"trtexec equivalent:\n  {rep.trtexec}")
    print(f"report: {build_json}")
    if not rep.built and not args.plan_only:
        raise QcalError(f"qcal engine: {rep.note} Or install TensorRT here (pip install \"qcal[tensorrt]\"), or "
                        f"pass --plan-only when the plan (the trtexec line above, {build_json}) is all you need.")
    return 0
