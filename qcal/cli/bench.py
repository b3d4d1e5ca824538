"""`qcal bench`: the precision x degradation robustness matrix (or a sweep file of them) from the command line.
Arguments are checked before torch is imported; the work is qcal.bench.robustness / qcal.bench.sweep."""

from __future__ import annotations

import argparse
import sys

from qcal.config import QuantConfig
from qcal.errors import QcalError


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from qcal.config import BENCH_PRECISIONS as DEFAULT_PRECISIONS

    b = sub.add_parser(
        "bench", help="the robustness matrix: every precision under every degradation, with a report",
        description="Quantize CHECKPOINT with each calibration recipe asked for, evaluate every precision under "
        "every condition, and write report.json (for `qcal check`), report.md and report.html (plots) to -o. "
        "A killed run resumes from its finished cells when given the same -o.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="precisions: fp32, fp16, int8-dynamic (ORT dynamic uint8), int8-clean (static, --calib with its "
        "degradations removed),\n  int8-mixed (static, --calib as given if it is a recipe with a [mix], else "
        "--calib + the QRID mix),\n  int8:NAME=RECIPE (static on any recipe/source), onnx:[NAME=]PATH (any ONNX "
        "file with the FP32 model's input/output)\nconditions: qrid (clean + 7 QRID conditions), a list "
        "(noise_low,blur_medium,jpeg_l3), or a TOML file of [conditions.NAME] steps = [...]\n"
        "example: qcal bench best.pt --trust-checkpoint --calib calib_sets/recipes/vtest-qrid.toml "
        "--eval 'bundled:vtest[360:480]' -o report/")
    b.add_argument("checkpoint", help="path of a YOLO .pt checkpoint, or a sweep file (.toml: models x recipes x "
                   "conditions x precisions, one report per model under -o; see qcal/bench/sweep.py)")
    b.add_argument("--calib", help="calibration recipe (.toml) or source for the int8-* precisions")
    b.add_argument("--eval", help="(required without a sweep file) evaluation images (never overlapping the calibration sets; "
                   "labels are used when every image has them, else fidelity vs FP32 detections)")
    b.add_argument("--conditions", default="qrid", help="degradation conditions (default: qrid)")
    b.add_argument("--precisions", default=DEFAULT_PRECISIONS, help=f"comma list (default: {DEFAULT_PRECISIONS})")
    b.add_argument("-o", "--out", default="report", help="report folder; also holds the resumable cell cache")
    b.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling the checkpoint")
    b.add_argument("--config", help="a TOML config for the static INT8 precisions (see `qcal config`)")
    b.add_argument("--latency-runs", type=int, default=30, help="timed runs per precision (0: skip latency)")
    b.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for calibration comparisons")
    b.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the cells run: cpu (ONNX "
                   "Runtime) or cuda (torch execution of the same ONNX files, INT8 as fake quantization)")
    b.add_argument("--runtime", choices=["ort", "torch"], help="cell runtime (default: ort on cpu, torch on cuda)")
    b.add_argument("--executor", default="serial", choices=["serial", "ray"], help="where the cells run: serial "
                   "(this process, default) or ray (one Ray task per cell declaring --threads CPUs; pip install qcal[ray]; "
                   "docs/SCALE.md)")
    b.add_argument("--address", help="with --executor ray: join the Ray cluster at HOST:PORT (`ray start --head` "
                   "there; -o must be on a path every node can read) instead of starting a local Ray")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.add_argument("--allow-outside-recipe-root", action="store_true", help="let paths written inside a .toml "
                   "recipe (--calib, --eval) point outside the recipe's folder (only for recipes you trust)")


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

    cfg = QuantConfig.load(args.config) if args.config else QuantConfig()
    report = robustness(args.checkpoint, eval=args.eval, calib=args.calib, conditions=args.conditions,
                        precisions=args.precisions, out=args.out, config=cfg,
                        trust_checkpoint=args.trust_checkpoint, latency_runs=args.latency_runs,
                        bootstrap=args.bootstrap, threads=args.threads, progress=not args.no_progress, command=cmd,
                        device=args.device, runtime=args.runtime, executor=args.executor, address=args.address,
                        allow_outside_root=args.allow_outside_recipe_root)
    print(report.summary())
    print(f"\nwrote {', '.join(str(p) for p in report.paths.values())}")
    return 0


_SWEEP_OWNS = {"calib": None, "eval": None, "config": None, "conditions": "qrid", "latency_runs": 30,
               "bootstrap": 1000, "threads": 2, "device": "cpu", "runtime": None}


def run_sweep_file(args: argparse.Namespace, cmd: str) -> int:
    from qcal.bench.sweep import Sweep, run_sweep
    from qcal.config import BENCH_PRECISIONS as DEFAULT_PRECISIONS
    from qcal.errors import ConfigError

    given = [k for k, v in {**_SWEEP_OWNS, "precisions": DEFAULT_PRECISIONS}.items() if getattr(args, k) != v]
    if given:
        raise ConfigError(f"qcal bench {args.checkpoint}: {['--' + k.replace('_', '-') for k in given]} belong in the "
                          "sweep file (keys of the same names; [config] for --config); with a sweep file the command "
                          "line takes only -o, --executor, --address, --trust-checkpoint and --no-progress.")
    reports = run_sweep(Sweep.load(args.checkpoint), args.out, trust_checkpoint=args.trust_checkpoint,
                        executor=args.executor, address=args.address, progress=not args.no_progress, command=cmd)
    for name, report in reports.items():
        print(f"== {name}\n{report.summary()}\n")
    print(f"wrote {len(reports)} report(s) under {args.out} (sweep.json indexes them)")
    return 0
