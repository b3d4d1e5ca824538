"""qcal's `tensorrt` profile beside NVIDIA ModelOpt's ONNX INT8 quantizer on the fall-detection YOLOv8s.

Same FP32 ONNX, same calibration tensors for both tools. Measured: TensorRT lint of both outputs, Q/DQ counts
per op type and nodes left in float, fidelity mAP50-95 (vs FP32 detections) per QRID condition in ONNX Runtime
simulation, the torch INT8 simulation (qcal.simulation.sim) vs ONNX Runtime on the same QDQ model, and, as a separate
cheap step, ONNX Runtime CPU latency.

    .venv/bin/python benchmarks/tensorrt_profile.py                 # everything (~15 min on 2 shared cores)
    .venv/bin/python benchmarks/tensorrt_profile.py --latency-only  # re-time the saved models only

ModelOpt runs in its own virtual environment (default /work/venvs/modelopt, `pip install
"nvidia-modelopt[onnx]"`), as a subprocess: benchmarks/modelopt_runner.py. Work files go to
benchmarks/.work/tensorrt_profile (not committed); results to benchmarks/results/tensorrt_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "tensorrt_profile"))
    ap.add_argument("--calib", default="bundled:vtest[0:360]", help="calibration source (evenly spread subset)")
    ap.add_argument("--calib-size", type=int, default=64)
    ap.add_argument("--eval", default="bundled:vtest[360:480]", help="held-out evaluation frames")
    ap.add_argument("--conditions", default="qrid")
    ap.add_argument("--modelopt-python", default="/work/venvs/modelopt/bin/python")
    ap.add_argument("--modelopt-method", default="entropy", choices=["entropy", "max"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--latency-only", action="store_true", help="only re-time the saved models, update results")
    ap.add_argument("--skip-torch", action="store_true", help="skip the torch-simulation agreement check")
    ap.add_argument("--sim-only", action="store_true", help="only redo the torch-vs-ORT agreement on saved models")
    ap.add_argument("--sim-eval", help="frames for the agreement check (default --eval); also VIDEO.avi[a:b:step]")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/tensorrt_profile.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.sim_only:
        from qcal.cli import demo_checkpoint
        from qcal.models import load_model

        data = json.loads((RESULTS / "tensorrt_profile.json").read_text())
        adapter = load_model(demo_checkpoint(), trust_checkpoint=True)
        data["torch_sim_vs_ort"] = sim_agreement(adapter, work, args.sim_eval or args.eval, args.threads)
        data["sim_command"] = cmd
        write(data)
        return
    if args.latency_only:
        data = json.loads((RESULTS / "tensorrt_profile.json").read_text())
        data.update(lint_both(work))   # cheap and deterministic: refreshed with the timing
        data["latency_ms"] = latency(work, args.threads, args.latency_runs)
        data["latency_command"] = cmd
        write(data)
        return
    data = run_all(args, work, cmd)
    data["latency_ms"] = latency(work, args.threads, args.latency_runs)
    write(data)


def _calib_set(spec: str, n: int):  # -> calib_sets.CalibSet
    import calib_sets

    cs = calib_sets.load(spec)
    idx = np.unique(np.linspace(0, len(cs) - 1, n).round().astype(int))
    return cs.subset([int(i) for i in idx])


def run_all(args: argparse.Namespace, work: Path, cmd: str) -> dict:
    import qcal
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # benchmarks/ as a package
    from benchmarks.provenance import provenance
    from qcal.cli import demo_checkpoint

    t_all = time.perf_counter()
    ckpt = demo_checkpoint()
    cs = _calib_set(args.calib, args.calib_size)
    cfg = qcal.QuantConfig(target=qcal.Target.TENSORRT, calib_size=args.calib_size)
    print(f"[1/5] qcal quantize --target tensorrt on {len(cs)} frames ({cs.content_hash[:12]})", flush=True)
    t0 = time.perf_counter()
    r = qcal.quantize(ckpt, calib=cs, config=cfg, trust_checkpoint=True, threads=args.threads)
    paths = r.export(work / "qcal")
    qcal_seconds = time.perf_counter() - t0

    print("[2/5] ModelOpt INT8 PTQ (its own venv, same FP32 ONNX and calibration tensors)", flush=True)
    calib_npy = work / "calib.npy"
    np.save(calib_npy, np.concatenate([r.adapter.prepare(s.image).feeds["images"] for s in cs]))
    mo_path = work / "modelopt.int8.onnx"
    mo_cmd = [args.modelopt_python, str(ROOT / "benchmarks" / "modelopt_runner.py"), "--onnx", str(paths["fp32"]),
              "--calib", str(calib_npy), "--out", str(mo_path), "--method", args.modelopt_method,
              "--high-precision", "fp32"]
    proc = subprocess.run(mo_cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"ModelOpt failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    mo_info = json.loads(proc.stdout.strip().splitlines()[-1])
    calib_npy.unlink()

    print("[3/5] TensorRT lint of both", flush=True)
    lints = lint_both(work)

    print(f"[4/5] fidelity per condition ({args.conditions}) in ONNX Runtime", flush=True)
    precs = f"fp32,onnx:qcal_trt_profile={paths['int8']},onnx:modelopt={mo_path}"
    ort_rep = qcal.robustness(r.adapter, eval=args.eval, conditions=args.conditions, precisions=precs,
                              out=work / "bench_ort", config=cfg, latency_runs=0, bootstrap=0, threads=args.threads)
    sim = None
    if not args.skip_torch:
        print("[5/5] torch INT8 simulation (qcal.simulation.sim, CPU) vs ONNX Runtime, clean", flush=True)
        sim = sim_agreement(r.adapter, work, args.sim_eval or args.eval, args.threads)
    cells = ort_rep.data["cells"]
    conds = [c["name"] for c in ort_rep.data["conditions"]]
    per_cond = {p: {c: cells[p][c]["map50_95"] for c in conds} for p in ("fp32", "qcal_trt_profile", "modelopt")}
    per_cond50 = {p: {c: cells[p][c]["map50"] for c in conds} for p in ("fp32", "qcal_trt_profile", "modelopt")}
    data = {
        "command": cmd,
        **lints,
        "fidelity_map50_95_clean": {"qcal_trt_profile": per_cond["qcal_trt_profile"]["clean"],
                                    "modelopt": per_cond["modelopt"]["clean"]},
        "fidelity_map50_95": per_cond,
        "fidelity_map50": per_cond50,
        "qcal": {"observer": cfg.observer.value, "kept_in_float": len(r.table.float_nodes),
                 "quantize_seconds": round(qcal_seconds, 1), "calib_hash": r.calib_hash,
                 "caches": {k: str(Path(p).relative_to(work)) for k, p in paths.items()
                            if k in ("trt_cache", "ort_trt_table")}},
        "modelopt": {**mo_info, "out": mo_path.name, "calibration_eps": ["cpu"],
                     "note": "high_precision_dtype=fp32 so both tools differ only in INT8 placement and ranges"},
        "calibration": {"spec": args.calib, "frames": len(cs), "set_hash": cs.content_hash},
        "eval": {"spec": args.eval, "images": ort_rep.data["eval"]["images"], "metric": "fidelity vs FP32 detections"},
        **provenance(threads=args.threads),
        "noisy_machine": True,
        "seconds_total": None,
    }
    if sim is not None:
        data["torch_sim_vs_ort"] = sim
    data["seconds_total"] = round(time.perf_counter() - t_all, 1)
    return data


def sim_agreement(adapter, work: Path, eval_spec: str, threads: int) -> dict:  # noqa: ANN001
    """The qcal QDQ model three ways on the clean evaluation frames, scored against ONE reference (ORT FP32
    detections): ONNX Runtime as shipped (graph optimizations on), ONNX Runtime with optimizations off (the plain
    ONNX semantics), and qcal.simulation.sim's torch execution. Also the largest output difference on the first frame."""
    import onnxruntime as ort

    import calib_sets
    from qcal.calibration.calibrate import make_session
    from qcal.eval.detection import coco_map, pseudo_labels
    from qcal.simulation.sim import TorchRunner

    if "[" in eval_spec and not eval_spec.startswith("bundled:"):   # VIDEO[a:b:step]
        path, rng = eval_spec[:-1].split("[", 1)
        a, b, step = (int(v) for v in rng.split(":"))
        from calib_sets.video import video_set

        es = video_set(path, every=step, start=a, stop=b)
    else:
        es = calib_sets.load(eval_spec)
    images = [s.image for s in es.resized(640)]
    qdq, fp32 = work / "qcal" / "model.int8.onnx", work / "qcal" / "model.fp32.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    runners = {"fp32": make_session(fp32.read_bytes(), threads), "ort": make_session(qdq.read_bytes(), threads),
               "ort_unoptimized": ort.InferenceSession(str(qdq), so, providers=["CPUExecutionProvider"]),
               "torch": TorchRunner(qdq), "ort_biases_plus_1ulp": make_session(_nudged(qdq), threads)}
    dets: dict[str, list] = {k: [] for k in runners}
    raw0: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    from tqdm import tqdm

    for i, img in enumerate(tqdm(images, desc="torch vs ORT", unit="img")):
        prep = adapter.prepare(img)
        for k, run in runners.items():
            out = run.run(None, prep.feeds)
            if i == 0:
                raw0[k] = out[0]
            dets[k].append(adapter.postprocess(out, prep))
    ref = [pseudo_labels(d) for d in dets["fp32"]]
    hw = [img.shape[:2] for img in images]
    nc = max(len(adapter.class_names), 1)
    m = {k: round(coco_map(ref, dets[k], hw, nc).map50_95, 4) for k in runners if k != "fp32"}
    return {"reference": "ONNX Runtime FP32 detections (score >= 0.25), clean", "images": len(images),
            "eval": eval_spec,
            "noise_floor": "ort_biases_plus_1ulp: the same ORT model with every Conv bias moved by one float32 ulp; "
                           "float rounding differences flip a few int8 roundings per layer and they compound",
            "abs_diff_ort_vs_nudged": round(abs(m["ort"] - m["ort_biases_plus_1ulp"]), 4),
            "map50_95": m, "abs_diff_torch_vs_ort": round(abs(m["torch"] - m["ort"]), 4),
            "abs_diff_torch_vs_ort_unoptimized": round(abs(m["torch"] - m["ort_unoptimized"]), 4),
            "abs_diff_ort_vs_ort_unoptimized": round(abs(m["ort"] - m["ort_unoptimized"]), 4),
            "bar": 0.005, "passes": abs(m["torch"] - m["ort"]) <= 0.005,
            "max_abs_output_diff_frame0": {
                "torch_vs_ort_unoptimized": float(np.abs(raw0["torch"] - raw0["ort_unoptimized"]).max()),
                "torch_vs_ort": float(np.abs(raw0["torch"] - raw0["ort"]).max()),
                "output_abs_max": float(np.abs(raw0["ort"]).max())},
            "seconds": round(time.perf_counter() - t0, 1)}


def _nudged(qdq: Path) -> bytes:
    """The QDQ model with every Conv bias moved up by one float32 ulp (a float-rounding-sized perturbation)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(qdq))
    prod = {o: n for n in m.graph.node for o in n.output}
    biases = {n.input[2] for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    biases = {prod[b].input[0] if b in prod and prod[b].op_type == "Identity" else b for b in biases}
    for init in m.graph.initializer:
        if init.name in biases:
            a = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(np.nextafter(a, np.float32(np.inf)).astype(np.float32), init.name))
    return m.SerializeToString()


def lint_both(work: Path) -> dict:
    from exporters.trt_lint import lint_tensorrt

    res = {"qcal": lint_tensorrt(work / "qcal" / "model.int8.onnx"),
           "modelopt": lint_tensorrt(work / "modelopt.int8.onnx")}
    return {"lint_violations": {k: len(v.violations) for k, v in res.items()},
            "lint_by_kind": {k: v.by_kind() for k, v in res.items()},
            "lint_by_rule": {k: v.by_rule() for k, v in res.items()},
            "lint_details": {k: [d.to_dict() for d in v.violations] for k, v in res.items()},
            "qdq_counts": {k: v.counts for k, v in res.items()}}


def latency(work: Path, threads: int, runs: int) -> dict:
    import calib_sets
    from qcal.eval.latency import measure_latencies
    from qcal.models.yolo import letterbox

    files = {"fp32": work / "qcal" / "model.fp32.onnx", "qcal_trt_profile": work / "qcal" / "model.int8.onnx",
             "modelopt": work / "modelopt.int8.onnx"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"saved models missing ({missing}): run without --latency-only first.")
    img = next(iter(calib_sets.load("bundled:vtest[360:363]"))).image
    x = np.ascontiguousarray(letterbox(img, 640)[0].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    lat = measure_latencies({k: str(v) for k, v in files.items()}, {"images": x}, threads=threads, runs=runs)
    out = {k: {"median_ms": round(v.median_ms, 1), "p90_ms": round(v.p90_ms, 1)} for k, v in lat.items()}
    for k in out:
        out[k]["x_fp32"] = round(out[k]["median_ms"] / out["fp32"]["median_ms"], 2)
    return {"runtime": f"onnxruntime CPU, {threads} thread(s), 640x640", "runs": runs, "noisy_machine": True, **out}


def write(data: dict) -> None:
    from exporters.quant_table import atomic_write_text

    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "tensorrt_profile.json", json.dumps(data, indent=1))
    atomic_write_text(RESULTS / "tensorrt_profile.md", markdown(data))
    print(markdown(data))


def markdown(d: dict) -> str:
    conds = list(d["fidelity_map50_95"]["fp32"])
    lines = ["# qcal `tensorrt` profile vs NVIDIA ModelOpt INT8 (fall-detection YOLOv8s, 640)", "",
             f"Command: `{d['command']}`", "",
             f"Calibration: {d['calibration']['frames']} frames of `{d['calibration']['spec']}` (evenly spread; "
             f"set hash {d['calibration']['set_hash'][:12]}), the same tensors for both tools. Evaluation: "
             f"{d['eval']['images']} held-out frames `{d['eval']['spec']}`, fidelity = mAP vs the FP32 model's own "
             "detections on the clean frame. ONNX Runtime CPU simulation of the Q/DQ models.", "",
             f"Machine: {d['machine'].get('cpu_model', '?')}, flags {', '.join(d['machine'].get('flags', [])[:8])}; "
             f"{d['machine']['threads']} thread(s); shared with other jobs (noisy).", "",
             "## TensorRT lint (`qcal lint --target tensorrt`)", "",
             "| tool | violations | required (build/numerics) | placement (fusion) | by rule |",
             "|---|---|---|---|---|"]
    for k in ("qcal", "modelopt"):
        kinds = d.get("lint_by_kind", {}).get(k, {})
        lines.append(f"| {k} | {d['lint_violations'][k]} | {kinds.get('required', '?')} | "
                     f"{kinds.get('placement', '?')} | {d['lint_by_rule'][k] or '-'} |")
    lines += ["", "Placement rules (TRT008-TRT011) flag layouts TensorRT builds but cannot fuse; required rules flag "
              "models it rejects or computes differently. Violations:", ""]
    for k in ("qcal", "modelopt"):
        for v in d["lint_details"][k][:12]:
            lines.append(f"- {k}: {v['rule']} {v['op_type']} `{v['node']}`: {v['message']}")
    lines += ["", "## Fidelity mAP50-95 per condition (ONNX Runtime)", "",
              "| condition | FP32 | qcal tensorrt | ModelOpt |", "|---|---|---|---|"]
    f = d["fidelity_map50_95"]
    for c in conds:
        lines.append(f"| {c} | {f['fp32'][c]:.3f} | {f['qcal_trt_profile'][c]:.3f} | {f['modelopt'][c]:.3f} |")
    lines += ["", "## Q/DQ layout", "", "| | qcal | ModelOpt |", "|---|---|---|"]
    qc, mo = d["qdq_counts"]["qcal"], d["qdq_counts"]["modelopt"]
    lines.append(f"| QuantizeLinear / DequantizeLinear | {qc['QuantizeLinear']} / {qc['DequantizeLinear']} | "
                 f"{mo['QuantizeLinear']} / {mo['DequantizeLinear']} |")
    for op in sorted(set(qc["quantized_inputs_by_op"]) | set(mo["quantized_inputs_by_op"])):
        lines.append(f"| quantized inputs of {op} | {qc['quantized_inputs_by_op'].get(op, 0)} | "
                     f"{mo['quantized_inputs_by_op'].get(op, 0)} |")
    for op in sorted(set(qc["float_nodes_by_op"]) | set(mo["float_nodes_by_op"])):
        lines.append(f"| {op} nodes left in float | {qc['float_nodes_by_op'].get(op, 0)} | "
                     f"{mo['float_nodes_by_op'].get(op, 0)} |")
    lines += ["", f"qcal: observer {d['qcal']['observer']}, {d['qcal']['kept_in_float']} nodes kept in float by "
              f"measurement, quantize {d['qcal']['quantize_seconds']} s. ModelOpt {d['modelopt']['modelopt_version']}: "
              f"{d['modelopt']['method']} calibration, {d['modelopt']['seconds']} s, peak RSS "
              f"{d['modelopt']['peak_rss_gb']} GB ({d['modelopt']['note']})."]
    if "torch_sim_vs_ort" in d:
        t = d["torch_sim_vs_ort"]
        m, mx = t["map50_95"], t["max_abs_output_diff_frame0"]
        lines += ["", "## Torch INT8 simulation vs ONNX Runtime (same QDQ model, clean, one reference)", "",
                  f"Fidelity mAP50-95 against {t['reference']} on {t['images']} frames: ONNX Runtime "
                  f"{m['ort']:.4f}, ONNX Runtime with graph optimizations off {m['ort_unoptimized']:.4f}, torch "
                  f"(qcal.simulation.sim, CPU) {m['torch']:.4f}. |torch - ORT| = {t['abs_diff_torch_vs_ort']:.4f} (bar "
                  f"{t['bar']}: {'pass' if t['passes'] else 'FAIL'}); |torch - ORT unoptimized| = "
                  f"{t['abs_diff_torch_vs_ort_unoptimized']:.4f}. Noise floor: the same ORT model with Conv biases "
                  f"moved by one float32 ulp scores {m.get('ort_biases_plus_1ulp', float('nan')):.4f} "
                  f"(|diff| {t.get('abs_diff_ort_vs_nudged', float('nan')):.4f}). Largest raw output difference on frame 0 "
                  f"(outputs up to {mx['output_abs_max']:.0f}): torch vs ORT unoptimized {mx['torch_vs_ort_unoptimized']:.2e}, "
                  f"torch vs ORT {mx['torch_vs_ort']:.2e}."]
    if "torch_sim_vs_ort_bundled_40_frames" in d:
        b = d["torch_sim_vs_ort_bundled_40_frames"]
        lines += ["", f"On the {b['images']} bundled evaluation frames the same check gave ORT {b['map50_95']['ort']:.4f} "
                  f"vs torch {b['map50_95']['torch']:.4f} (|diff| {b['abs_diff_torch_vs_ort']:.4f}, "
                  f"{'pass' if b['passes'] else 'outside the bar'}): with 40 frames the difference is dominated by "
                  "the float-rounding noise shown above."]
    if "latency_ms" in d:
        lat = d["latency_ms"]
        lines += ["", f"## Latency ({lat['runtime']}, {lat['runs']} runs, noisy machine)", "",
                  "| model | median ms | p90 ms | x FP32 |", "|---|---|---|---|"]
        for k in ("fp32", "qcal_trt_profile", "modelopt"):
            lines.append(f"| {k} | {lat[k]['median_ms']} | {lat[k]['p90_ms']} | {lat[k]['x_fp32']} |")
        lines += ["", "Both INT8 models carry TensorRT's layout (Q/DQ on op inputs only): ONNX Runtime on CPU "
                  "cannot fuse them into integer kernels, so they are not expected to be faster than FP32 here."]
    lines += ["", f"Total wall time: {d.get('seconds_total')} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
