"""`qcal bench`: the precision x degradation robustness matrix (or a sweep file of them) from the command line.
Arguments are checked before torch is imported; the work is qcal.bench.robustness / qcal.bench.sweep."""

from __future__ import annotations

import argparse
import sys

from qcal.config import QuantConfig
from qcal.errors import QcalError


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from qcal.cli import options as o
    from qcal.config import BENCH_PRECISIONS as DEFAULT_PRECISIONS

    b = o.add_subcommand(
        sub, "bench", help="the robustness matrix: every precision under every degradation, with a report",
        description="Quantize CHECKPOINT with each calibration recipe asked for, evaluate every precision under "
        "every condition, and write report.json (for `qcal check`), report.md and report.html (plots) to -o. "
        "A killed run resumes from its finished cells when given the same -o.\n"
        "precisions:\n"
        "  fp32, fp16, int8-dynamic (ORT dynamic uint8),\n"
        "  int8-clean, or int8 for short (static, --calib with its degradations removed),\n"
        "  int8-mixed (static, --calib as given if it is a recipe with a [mix], else --calib + the QRID mix),\n"
        "  int8:NAME=RECIPE (static on any recipe/source),\n"
        "  onnx:[NAME=]PATH (any ONNX file with the FP32 model's input/output)\n"
        "conditions:\n"
        "  qrid (clean + 7 QRID conditions), a list (noise_low,blur_medium,jpeg_l3),\n"
        "  or a TOML file of [conditions.NAME] steps = [...]",
        examples=["qcal bench yolo.pt --trust-checkpoint --calib calib_sets/recipes/vtest-qrid.toml "
                  "--eval 'bundled:vtest[360:480]' -o report/",
                  "qcal bench yolo.pt --trust-checkpoint --calib 'bundled:vtest[0:8]' --eval 'bundled:vtest[360:368]' "
                  "--conditions noise_medium --precisions fp32,int8 -o report/",
                  "qcal bench sweep.toml -o sweep/"])
    b.add_argument("checkpoint", help="path of a YOLO .pt checkpoint, or a sweep file (.toml: models x recipes x "
                   "conditions x precisions, one report per model under -o; see qcal/bench/sweep.py)")
    o.add_calib(b, "calibration recipe (.toml) or source for the int8-* precisions")
    o.add_eval(b, "(required without a sweep file) evaluation images (never overlapping the calibration sets; "
               "labels are used when every image has them, else fidelity vs FP32 detections)")
    b.add_argument("--conditions", default="qrid", help="degradation conditions")
    b.add_argument("--precisions", help=f"comma list (default: {DEFAULT_PRECISIONS})")
    o.add_out(b, "report folder; also holds the resumable cell cache", default="report")
    o.add_trust_checkpoint(b)
    o.add_config(b, "a TOML config for the static INT8 precisions (see `qcal config`)")
    o.add_target(b, "the static INT8 precisions' target, over --config: ort-cpu or tensorrt (default: the "
                 "config's target, ort-cpu)")
    o.add_observer(b, "the static INT8 precisions' range observer, over --config: blend, mse, percentile, entropy "
                   "or minmax (default: the config's observer, blend)")
    b.add_argument("--latency-runs", type=int, default=30, help="timed runs per precision (0: skip latency)")
    b.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for calibration comparisons")
    o.add_threads(b, "ONNX Runtime threads (per cell)")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the cells run: cpu (ONNX "
                   "Runtime) or cuda (torch execution of the same ONNX files, INT8 as fake quantization)")
    b.add_argument("--runtime", choices=["ort", "torch"], help="cell runtime (default: ort on cpu, torch on cuda)")
    b.add_argument("--executor", default="serial", choices=["serial", "ray"], help="where the cells run: serial "
                   "(this process) or ray (one Ray task per cell declaring --threads CPUs; pip install qcal[ray]; "
                   "docs/SCALE.md)")
    b.add_argument("--address", help="with --executor ray: join the Ray cluster at HOST:PORT (`ray start --head` "
                   "there; -o must be on a path every node can read) instead of starting a local Ray")
    o.add_no_progress(b)
    o.add_allow_outside_recipe_root(b)


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    import shlex

    cmd = "qcal " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.checkpoint.endswith(".toml"):
        return run_sweep_file(args, cmd)
    if not args.eval:
        raise QcalError("qcal bench CHECKPOINT needs --eval (evaluation images), or give a sweep file (.toml).")
    from qcal.config.bounds import check_bench_counts

    check_bench_counts(threads=args.threads, latency_runs=args.latency_runs, bootstrap=args.bootstrap)   # pre-torch
    if args.address and args.executor != "ray":
        raise QcalError(f"--address {args.address} needs --executor ray (the serial executor runs here).")
    from qcal.models import preflight

    preflight(args.checkpoint, trust_checkpoint=args.trust_checkpoint)
    from qcal.bench import robustness
    from qcal.config import BENCH_PRECISIONS, Observer, Target

    cfg = QuantConfig.load(args.config) if args.config else QuantConfig()
    over = {k: kind(getattr(args, k)) for k, kind in (("target", Target), ("observer", Observer)) if getattr(args, k)}
    cfg = cfg.replace(**over) if over else cfg
    precisions = BENCH_PRECISIONS if args.precisions is None else args.precisions
    report = robustness(args.checkpoint, eval=args.eval, calib=args.calib, conditions=args.conditions,
                        precisions=precisions, out=args.out, config=cfg,
                        trust_checkpoint=args.trust_checkpoint, latency_runs=args.latency_runs,
                        bootstrap=args.bootstrap, threads=args.threads, progress=not args.no_progress, command=cmd,
                        device=args.device, runtime=args.runtime, executor=args.executor, address=args.address,
                        allow_outside_root=args.allow_outside_recipe_root)
    print(report.summary())
    print(f"\nwrote {', '.join(str(p) for p in report.paths.values())}")
    return 0


_SWEEP_OWNS = {"calib": None, "eval": None, "config": None, "target": None, "observer": None, "conditions": "qrid",
               "precisions": None, "latency_runs": 30, "bootstrap": 1000, "threads": 2, "device": "cpu",
               "runtime": None}


def run_sweep_file(args: argparse.Namespace, cmd: str) -> int:
    from qcal.bench.sweep import Sweep, run_sweep
    from qcal.errors import ConfigError

    given = [k for k, v in _SWEEP_OWNS.items() if getattr(args, k) != v]
    if given:
        raise ConfigError(f"qcal bench {args.checkpoint}: {['--' + k.replace('_', '-') for k in given]} belong in the "
                          "sweep file (keys of the same names; [config] for --config, --target and --observer); "
                          "with a sweep file the command line takes only -o, --executor, --address, --trust-checkpoint and --no-progress.")
    reports = run_sweep(Sweep.load(args.checkpoint), args.out, trust_checkpoint=args.trust_checkpoint,
                        executor=args.executor, address=args.address, progress=not args.no_progress, command=cmd)
    from pathlib import Path

    from exporters.outset import user_mode

    index = Path(args.out) / "sweep.json"
    if index.is_file():   # written by an atomic (mkstemp, 0600) writer; the reports' modes are set as they are written
        user_mode(index)
    for name, report in reports.items():
        print(f"== {name}\n{report.summary()}\n")
    print(f"wrote {len(reports)} report(s) under {args.out} (sweep.json indexes them)")
    return 0
