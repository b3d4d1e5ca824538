"""AdaQuant and int8/float bit allocation on the fall-detection YOLOv8s (ORT CPU).

Calibration: bundled vtest frames 0-359 (the first --calib of them); evaluation: bundled frames 360-479 (never
calibrated on), fidelity mAP50-95 vs the FP32 model's own detections, clean and under QRID conditions.
Rows: INT8 (qcal pipeline), INT8 after AdaQuant (sequential, W8A8, weights refined before export), and an
int8/fp16 allocation at a latency budget halfway between all-INT8 and all-FP32 (per-layer latency from ONNX
Runtime's profiler; fp16 layers are float16 in the QDQ graph), with predicted and measured latency; the same
allocation from sensitivities measured on the deployed ONNX model (one layer kept fp16 at a time in the INT8 QDQ
model, ONNX Runtime output error vs FP32 on --onnx-samples calibration frames), predicted vs measured.

    nice -n 10 .venv/bin/python benchmarks/adaquant_yolo.py                  # writes results/adaquant_yolo.*
    nice -n 10 .venv/bin/python benchmarks/adaquant_yolo.py --latency-only   # re-time the saved models
    nice -n 10 .venv/bin/python benchmarks/adaquant_yolo.py --no-adaquant --out benchmarks/results/adaquant_yolo_onnx_sens
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from exporters.quant_table import atomic_write_text  # noqa: E402

CONDITIONS = ("noise_medium", "blur_medium", "mixed")


def fidelity(adapter, paths: dict[str, Path], images, threads: int) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    """condition -> model -> mAP50-95 vs FP32 detections on the same (degraded) images."""
    from calib_sets.presets import named_condition
    from qcal.eval.detection import coco_map, pseudo_labels
    from qcal.eval.evaluate import detect_all

    out: dict[str, dict[str, float]] = {}
    nc = max(len(adapter.class_names), 1)
    for cond in ("clean", *CONDITIONS):
        imgs = images if cond == "clean" else [named_condition(cond)(im, seed=i) for i, im in enumerate(images)]
        hw = [im.shape[:2] for im in imgs]
        dets = {k: detect_all(adapter, p, imgs, threads, False, k) for k, p in paths.items()}
        gt = [pseudo_labels(d) for d in dets["fp32"]]
        out[cond] = {k: round(float(coco_map(gt, d, hw, nc).to_dict()["map50_95"]), 4)
                     for k, d in dets.items() if k != "fp32"}
        print(cond, out[cond])
    return out


def latency(paths: dict[str, Path], feeds, runs: int, threads: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from qcal.eval.latency import measure_latencies

    lat = measure_latencies({k: str(p) for k, p in paths.items()}, feeds, threads=threads, runs=runs)
    return {k: round(v.median_ms, 2) for k, v in lat.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--calib", type=int, default=8, help="calibration frames (AdaQuant and ranges)")
    ap.add_argument("--eval", type=int, default=40, help="evaluation frames from bundled 360-479")
    ap.add_argument("--iters", type=int, default=50, help="AdaQuant iterations per layer (paper: 1000)")
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument("--no-allocation", action="store_true", help="only INT8 vs INT8 + AdaQuant")
    ap.add_argument("--no-adaquant", action="store_true", help="skip the AdaQuant row (allocations only)")
    ap.add_argument("--onnx-samples", type=int, default=4, help="calibration frames for ONNX sensitivity (0: skip)")
    ap.add_argument("--models", default=str(ROOT / "out" / "adaquant_yolo_models"),
                    help="where the ONNX models are kept for --latency-only (not committed: 40+ MB)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "adaquant_yolo"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    import calib_sets
    import qcal
    from benchmarks.provenance import provenance
    from qcal.cli import demo_checkpoint
    from qcal.models.yolo import YoloAdapter
    from qcal.placement.alloc import Budget, allocate
    from qcal.quant.precision import Precision

    out = Path(args.out)
    models = Path(args.models)
    res_path = out.with_suffix(".json")
    adapter = YoloAdapter.load(demo_checkpoint(), trust_checkpoint=True, imgsz=args.imgsz)
    ev = calib_sets.load("bundled:vtest[360:480]")
    import cv2

    # QRID values are defined at model resolution: resize (long side = imgsz) before degrading.
    def fit(im):  # type: ignore[no-untyped-def]
        f = args.imgsz / max(im.shape[:2])
        return cv2.resize(im, (round(im.shape[1] * f), round(im.shape[0] * f)), interpolation=cv2.INTER_AREA)

    images = [fit(s.image) for s in ev][: args.eval]
    if args.latency_only:
        res = json.loads(res_path.read_text())
        paths = {k: models / f"{k}.onnx" for k in ("fp32", "int8", "int8_adaquant", "mixed", "mixed_onnx")
                 if k in res["latency_ms"]}
        res["latency_ms"] = latency(paths, adapter.prepare(images[0]).feeds, args.latency_runs, args.threads)
        res["latency_command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        _write(out, res)
        return
    calib = "bundled:vtest[0:360]"
    base = qcal.QuantConfig(imgsz=args.imgsz, calib_size=args.calib,
                            keep_float=qcal.KeepFloatConfig(sensitivity_samples=0))
    res: dict = {"seconds": {}}
    t0 = time.perf_counter()
    plain = qcal.quantize(adapter, calib=calib, config=base, progress=True)
    res["seconds"]["int8"] = round(time.perf_counter() - t0, 1)
    models.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": models / "fp32.onnx", "int8": models / "int8.onnx"}
    if not args.no_adaquant:
        t0 = time.perf_counter()
        ada_cfg = base.replace(passes=("adaquant",), adaquant=qcal.AdaQuantConfig(iters=args.iters, batch=4))
        ada = qcal.quantize(adapter, calib=calib, config=ada_cfg, progress=True)
        res["seconds"]["int8_adaquant"] = round(time.perf_counter() - t0, 1)
        res["adaquant_layers"] = ada.passes[0].per_layer
        paths["int8_adaquant"] = models / "int8_adaquant.onnx"
        paths["int8_adaquant"].write_bytes(Path(ada.out.int8_path).read_bytes())
    for k, src in (("fp32", plain.out.fp32_path), ("int8", plain.out.int8_path)):
        paths[k].write_bytes(Path(src).read_bytes())
    res["config"] = {"imgsz": args.imgsz, "calib_frames": args.calib, "eval_frames": len(images),
                     "adaquant_iters": args.iters, "adaquant_batch": 4, "conditions": list(CONDITIONS),
                     "adaquant_weight_bits": 7 if plain.out.profile.reduce_range else 8}
    res["command"] = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(__file__).name}", *sys.argv[1:]])
    res.update(provenance())
    res["noisy_machine"] = True
    if args.no_allocation:
        res["fidelity_map50_95"] = fidelity(adapter, paths, images, args.threads)
        res["latency_ms"] = latency(paths, adapter.prepare(images[0]).feeds, args.latency_runs, args.threads)
        _write(out, res)
        return
    # Allocation: measure once (budget 1.0 is always feasible), then solve at the halfway latency budget.
    t0 = time.perf_counter()
    probe = qcal.allocate_bits(adapter, calib, budget=Budget(latency=1.0), choices=["int8", "fp16"], config=base,
                               latency_runs=args.latency_runs, threads=args.threads, progress=True)
    from qcal.placement.alloc import LayerCost

    costs = {n: LayerCost(c["params"], c["macs"], c["latency_ms"]) for n, c in probe.measured["layer_costs"].items()}
    fp_total = sum(c.latency_ms["fp32"] for c in costs.values())
    r8 = sum(c.latency_ms["int8"] for c in costs.values()) / fp_total
    budget = round((r8 + 1.0) / 2, 3)
    plan = allocate(probe.sensitivity, costs, [Precision.INT8, Precision.FP16], Budget(latency=budget))
    from qcal.passes.allocate import float_nodes_config

    mixed_cfg, float_nodes = float_nodes_config(base, plan.choices, probe.measured["layer_nodes"])
    mixed = qcal.quantize(adapter, calib=calib, config=mixed_cfg, progress=True)
    res["seconds"]["allocation"] = round(time.perf_counter() - t0, 1)
    paths["mixed"] = models / "mixed.onnx"
    paths["mixed"].write_bytes(Path(mixed.out.int8_path).read_bytes())
    plans = {"mixed": plan}
    if args.onnx_samples > 0:   # the same IP on sensitivities measured in the deployed QDQ model
        from qcal.passes.onnx_sensitivity import onnx_sensitivity, output_error

        t0 = time.perf_counter()
        feeds = [adapter.prepare(s.image).feeds for s in calib_sets.load(calib).take(args.onnx_samples)]
        sens = onnx_sensitivity(plain.out, probe.measured["layer_nodes"], feeds, [Precision.INT8, Precision.FP16],
                                workdir=models, threads=args.threads)
        for n in costs:
            sens.setdefault(n, {"int8": 0.0, "fp16": 0.0})
        plans["mixed_onnx"] = allocate(sens, costs, [Precision.INT8, Precision.FP16], Budget(latency=budget))
        onnx_cfg, _ = float_nodes_config(base, plans["mixed_onnx"].choices, probe.measured["layer_nodes"])
        (models / "onnx_sensitivity.json").write_text(json.dumps(sens))   # kept in case a later step fails
        mixed_onnx = qcal.quantize(adapter, calib=calib, config=onnx_cfg)   # owns its temporary folder: keep it
        paths["mixed_onnx"] = models / "mixed_onnx.onnx"
        paths["mixed_onnx"].write_bytes(Path(mixed_onnx.out.int8_path).read_bytes())
        res["seconds"]["onnx_sensitivity_allocation"] = round(time.perf_counter() - t0, 1)
        base_err = output_error(paths["fp32"], paths["int8"], feeds, args.threads)
        res["output_error_vs_fp32"] = {"int8": base_err}
        for k, pl in plans.items():   # predicted (sum of sensitivities) vs measured change of the output error
            err = output_error(paths["fp32"], paths[k], feeds, args.threads)
            res["output_error_vs_fp32"][k] = err
            pl.measured["measured_output_error_increase"] = err - base_err
        res["onnx_sensitivity"] = sens
        res["torch_sensitivity"] = probe.sensitivity
    res["fidelity_map50_95"] = fidelity(adapter, paths, images, args.threads)
    res["latency_ms"] = latency(paths, adapter.prepare(images[0]).feeds, args.latency_runs, args.threads)
    res["allocation"] = {"budget_latency_ratio": budget, "all_int8_predicted_ratio": round(r8, 4),
                         "predicted_latency_ratio": round(plan.cost_ratio, 4),
                         "measured_latency_ratio": round(res["latency_ms"]["mixed"] / res["latency_ms"]["fp32"], 4),
                         "measured_int8_latency_ratio": round(res["latency_ms"]["int8"] / res["latency_ms"]["fp32"], 4),
                         "predicted_output_error_increase": plan.predicted_loss_increase,
                         "float_layers": [n for n, p in plan.choices.items() if p.is_float],
                         "float_nodes": float_nodes, "layers": len(plan.choices),
                         "sensitivity_measured_on": "torch"}
    if "mixed_onnx" in plans:
        res["allocation"]["measured_output_error_increase"] = plan.measured["measured_output_error_increase"]
        po = plans["mixed_onnx"]
        res["allocation_onnx"] = {
            "budget_latency_ratio": budget, "predicted_latency_ratio": round(po.cost_ratio, 4),
            "measured_latency_ratio": round(res["latency_ms"]["mixed_onnx"] / res["latency_ms"]["fp32"], 4),
            "predicted_output_error_increase": po.predicted_loss_increase,
            "measured_output_error_increase": po.measured["measured_output_error_increase"],
            "float_layers": [n for n, p in po.choices.items() if p.is_float], "layers": len(po.choices),
            "sensitivity_measured_on": "onnx", "onnx_samples": args.onnx_samples}
    _write(out, res)


def _write(out: Path, res: dict) -> None:
    atomic_write_text(out.with_suffix(".json"), json.dumps(res, indent=1))
    md = ["# AdaQuant and int8/fp16 allocation on the fall-detection YOLOv8s", "", f"Command: `{res['command']}`  ",
          f"Machine: {res['machine']['cpu_model']} ({','.join(res['machine']['flags'])}); shared and loaded "
          "(noisy_machine: latency is indicative; re-time with --latency-only).", "",
          f"{res['config']['calib_frames']} calibration frames, {res['config']['eval_frames']} evaluation frames at "
          f"{res['config']['imgsz']} px, AdaQuant {res['config']['adaquant_iters']} iterations per layer (paper: 1000).",
          "",
          f"AdaQuant simulated {res['config'].get('adaquant_weight_bits', 8)}-bit weights.", ""]
    a = res.get("allocation")
    cols = list(next(iter(res["fidelity_map50_95"].values())))   # the models measured, in order
    md += ["| condition | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    md += [f"| {c} | " + " | ".join(f"{r[k]:.4f}" for k in cols) + " |" for c, r in res["fidelity_map50_95"].items()]
    layers = res.get("adaquant_layers", {})
    if layers:
        md += ["", f"AdaQuant restored {int(sum(v['reverted'] for v in layers.values()))} of {len(layers)} layers "
               "(no lower calibration MSE than round-to-nearest in simulation)."]
    md += ["", "Fidelity: mAP50-95 against the FP32 model's detections on the same images.",
           "", "| model | median latency ms |", "|---|---|"] + [f"| {k} | {v} |" for k, v in res["latency_ms"].items()]
    md += [] if a is None else ["", f"Allocation at latency budget {a['budget_latency_ratio']} of FP32 (profiled all-INT8: "
           f"{a['all_int8_predicted_ratio']}): predicted {a['predicted_latency_ratio']}, measured "
           f"{a['measured_latency_ratio']} (all-INT8 measured {a['measured_int8_latency_ratio']}); "
           f"{len(a['float_layers'])} of {a['layers']} layers kept float.", ""]
    if "allocation_onnx" in res:
        md += ["## Predicted vs measured: torch-simulated vs ONNX-measured sensitivities", "",
               f"Output error = relative squared error vs FP32 per output channel on "
               f"{res['allocation_onnx']['onnx_samples']} calibration frames (all-INT8: "
               f"{res['output_error_vs_fp32']['int8']:.5f}). Same latency budget, same IP, same costs.", "",
               "| plan | sensitivity from | float (fp16) layers | predicted latency | measured latency | "
               "predicted error change | measured error change | clean fidelity |", "|---|---|---|---|---|---|---|---|"]
        for k, al in (("mixed", a), ("mixed_onnx", res["allocation_onnx"])):
            md.append(f"| {k} | {al['sensitivity_measured_on']} | {len(al['float_layers'])} | "
                      f"{al['predicted_latency_ratio']} | {al['measured_latency_ratio']} | "
                      f"{al['predicted_output_error_increase']:+.5f} | {al['measured_output_error_increase']:+.5f} | "
                      f"{res['fidelity_map50_95']['clean'][k]:.4f} |")
        md.append("")
    atomic_write_text(out.with_suffix(".md"), "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
