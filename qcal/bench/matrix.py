"""The precision x condition matrix: build every model artifact, run every cell, measure, compare.

Accuracy is measured against real labels when every evaluation sample carries them, otherwise against the FP32
model's own confident detections on the CLEAN image (fidelity): a degraded cell then says how much of what FP32
finds on a clean frame survives the degradation and the precision together. Per cell: mAP50-95 / mAP50
(pycocotools), detection ECE and confidence gap, relative drop vs the same precision on clean and vs FP32 on the
same condition. Per precision: latency (median/p90, interleaved in one run), size. Degradation-aware vs clean
calibration: a bootstrap interval over images of the mAP difference per condition.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import calib_sets
from calib_sets.degrade import Condition
from exporters.dynamic import export_dynamic
from exporters.float16 import export_fp16
from qcal.bench.cells import CellOutput, CellStore, file_sha256, key_of
from qcal.bench.executors import CellJob, CellRunner, CellsFailedError, Executor, SerialExecutor
from qcal.bench.spec import Precision, calibration_set, condition_dict, condition_name
from qcal.config import QuantConfig
from qcal.errors import CalibrationError
from qcal.eval.bootstrap import ImageEvals, bootstrap_diff, image_evals
from qcal.eval.confidence import detection_ece
from qcal.eval.detection import coco_map, pseudo_labels
from qcal.eval.latency import measure_latencies
from qcal.models.base import Detections, ModelAdapter
from qcal.version import __version__

BASELINE = "int8-clean"   # degradation-aware precisions are compared against this one


def labels_to_detections(labels: np.ndarray, hw: tuple[int, int]) -> Detections:
    """YOLO labels (N x 5: cls cx cy w h, normalised) -> pixel xyxy ground truth of an h x w image."""
    h, w = hw
    cx, cy, bw, bh = labels[:, 1] * w, labels[:, 2] * h, labels[:, 3] * w, labels[:, 4] * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
    return Detections(boxes, np.ones(len(labels), np.float32), labels[:, 0].astype(np.int64))


def static_model_key(model_hash: str, cfg: QuantConfig, calib_hash: str) -> str:
    """Cache key of a statically quantized model: code version, FP32 model, calibration set content and the
    config with its machine-dependent choices resolved (QuantConfig.hash hashes cfg.resolved()), so a cache
    filled on a VNNI host is not reused on an AVX2-only one."""
    return key_of({"v": __version__, "model": model_hash, "config": cfg.hash(), "calib": calib_hash})


def build_models(adapter: ModelAdapter, precisions: Sequence[Precision], store: CellStore, cfg: QuantConfig,
                 eval_set: calib_sets.CalibSet, *, progress: bool, threads: int,
                 log: Callable[[str], None], imgsz: int | None = None,
                 allow_outside_root: bool = False) -> dict[str, dict[str, Any]]:
    """Every precision's ONNX file (built once, reused on resume) -> {name: info}. Calibration images are resized
    to `imgsz` (default: the config's)."""
    from qcal.api import quantize

    fp32 = store.model_path("fp32")
    fp32_key = key_of({"v": __version__, "model": adapter.model_hash(), "opset": cfg.opset, "imgsz": cfg.imgsz})
    if not store.model_ready("fp32", fp32_key):
        log("exporting FP32 ONNX")
        tmp = fp32.with_name(".fp32.tmp.onnx")
        adapter.export_onnx(tmp, opset=cfg.opset)
        tmp.replace(fp32)
        store.record_model("fp32", fp32_key)
    fp32_sha = store.model_info("fp32")["sha256"]
    infos: dict[str, dict[str, Any]] = {}
    for p in precisions:
        path = store.model_path(p.name)
        if p.kind == "fp32":
            info = store.model_info("fp32")
        elif p.kind in ("fp16", "dynamic"):
            key = key_of({"v": __version__, "fp32": fp32_sha, "kind": p.kind})
            if not store.model_ready(p.name, key):
                log(f"building {p.name}")
                (export_fp16 if p.kind == "fp16" else export_dynamic)(fp32, path)
                store.record_model(p.name, key)
            info = store.model_info(p.name)
        elif p.kind == "static":
            cs = calibration_set(p, imgsz or cfg.imgsz, allow_outside_root=allow_outside_root)
            shared = calib_sets.overlap(cs, eval_set, by="both")
            if shared:
                raise CalibrationError(f"{p.name}: {len(shared)} evaluation image(s) are also in its calibration "
                                       f"set (e.g. {shared[0].key_b}); evaluate on images calibration never saw.")
            key = static_model_key(adapter.model_hash(), cfg, cs.content_hash)
            if not store.model_ready(p.name, key):
                log(f"quantizing {p.name} on {len(cs)} calibration samples ({cs.content_hash[:12]})")
                r = quantize(adapter, calib=cs, config=cfg, progress=progress, threads=threads)
                shutil.copyfile(r.out.int8_path, path.with_name(f".{p.name}.tmp"))
                path.with_name(f".{p.name}.tmp").replace(path)
                store.record_model(p.name, key, {"calib_hash": r.calib_hash, "calib_samples": len(r.calib),
                                                 "quantize_seconds": round(r.quantize_seconds, 2),
                                                 "float_nodes": len(r.table.float_nodes)})
            info = store.model_info(p.name)
        else:   # onnx: the user's file, referenced where it is
            path = Path(str(p.path))
            info = {"key": file_sha256(path), "sha256": file_sha256(path)}
        infos[p.name] = {**info, "file": str(path if p.kind != "fp32" else fp32),
                         "size_mb": round(Path(path if p.kind != "fp32" else fp32).stat().st_size / 2**20, 3),
                         "spec": p.to_dict()}
    return infos


def run_cells(adapter: ModelAdapter, models: dict[str, dict[str, Any]], conditions: Sequence[Condition | None],
              images: list[np.ndarray], eval_hash: str, store: CellStore, *, threads: int,
              progress: bool, runtime: str = "ort", device: str = "cpu",
              executor: Executor | None = None) -> dict[str, dict[str, CellOutput]]:
    """Detections of every (precision, condition) cell; cached cells are loaded, not rerun; the rest run on
    `executor` (default: serial, in this process) and are saved as each finishes.

    runtime "ort": ONNX Runtime on CPU; "torch": qcal.simulation.sim's torch execution of the same ONNX files (Q/DQ as fake
    quantization) on `device` (cpu or cuda)."""
    thresholds = {k: getattr(adapter, k, None) for k in ("conf", "iou", "max_det")}
    backend = {} if runtime == "ort" else {"runtime": runtime, "device": device}   # ORT keys stay as before
    out: dict[str, dict[str, CellOutput]] = {name: {} for name in models}
    todo: list[tuple[str, Condition | None, str]] = []
    for c in conditions:
        for name, info in models.items():
            key = key_of({"v": __version__, "model": info["sha256"], "cond": condition_dict(c), "eval": eval_hash,
                          "post": thresholds, **backend})
            cached = store.load(key)
            if cached is not None and len(cached) == len(images):
                out[name][condition_name(c)] = cached
            else:
                todo.append((name, c, key))
    runner = CellRunner(adapter, images, runtime=runtime, device=device, threads=threads)
    jobs = [CellJob(k, n, c, models[n]["file"]) for n, c, k in todo]

    def save(job: CellJob, dets: CellOutput) -> None:   # in the driver, as each cell finishes
        store.save(job.key, dets)
        out[job.precision][condition_name(job.condition)] = dets
    failures = (executor or SerialExecutor()).run(runner, jobs, save, progress=progress)
    if failures:
        raise CellsFailedError(failures)
    return out


def score_cells(cells: dict[str, dict[str, list[Detections]]], reference: list[Detections],
                hw: list[tuple[int, int]], num_classes: int) -> tuple[dict[str, dict[str, dict[str, Any]]],
                                                                      dict[str, dict[str, ImageEvals]]]:
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    evals: dict[str, dict[str, ImageEvals]] = {}
    # Agreement with FP32 on the SAME condition isolates what quantization adds to the degradation's own loss.
    fp32_same = {c: [pseudo_labels(d) for d in dets] for c, dets in cells.get("fp32", {}).items()}
    for name, by_cond in cells.items():
        metrics[name], evals[name] = {}, {}
        for cond, dets in by_cond.items():
            m = coco_map(reference, dets, hw, num_classes)
            cal = detection_ece(reference, dets)
            metrics[name][cond] = {"map50_95": round(m.map50_95, 4), "map50": round(m.map50, 4),
                                   "ece": round(cal.ece, 4), "conf_gap": round(cal.gap, 4),
                                   "detections": m.pred_boxes}
            if cond in fp32_same:
                agree = coco_map(fp32_same[cond], dets, hw, num_classes)
                metrics[name][cond]["agreement_map50_95"] = round(agree.map50_95, 4)
            evals[name][cond] = image_evals(reference, dets, hw, num_classes)
    for row in metrics.values():
        for cond, cell in row.items():
            clean = row.get("clean", {}).get("map50_95")
            fp = metrics.get("fp32", {}).get(cond, {}).get("map50_95")
            cell["rel_drop_vs_clean"] = rel_drop(clean, cell["map50_95"])
            cell["rel_drop_vs_fp32"] = rel_drop(fp, cell["map50_95"])
    return metrics, evals


def rel_drop(ref: float | None, x: float) -> float | None:
    if ref is None or not np.isfinite(ref) or ref <= 0:
        return None
    return round((ref - x) / ref, 4)


def compare_calibrations(evals: dict[str, dict[str, ImageEvals]], precisions: Sequence[Precision],
                         resamples: int) -> list[dict[str, Any]]:
    """Each static precision other than int8-clean vs int8-clean, per condition, with a bootstrap interval."""
    if BASELINE not in evals or resamples <= 0:
        return []
    out = []
    for p in precisions:
        if p.kind != "static" or p.name == BASELINE:
            continue
        for cond, ev in evals[p.name].items():
            iv = bootstrap_diff(ev, evals[BASELINE][cond], resamples=resamples, seed=0)
            out.append({"a": p.name, "b": BASELINE, "condition": cond, **iv.to_dict()})
    return out


def measure(adapter: ModelAdapter, models: dict[str, dict[str, Any]], image: np.ndarray, *, runs: int,
            threads: int) -> dict[str, dict[str, float]]:
    if runs <= 0:
        return {}
    lat = measure_latencies({k: v["file"] for k, v in models.items()}, adapter.prepare(image).feeds,
                            threads=threads, runs=runs)
    return {k: {"median_ms": round(v.median_ms, 2), "p90_ms": round(v.p90_ms, 2)} for k, v in lat.items()}


def timed(seconds: dict[str, float], key: str) -> Callable[[], None]:
    t0 = time.perf_counter()

    def done() -> None:
        seconds[key] = round(time.perf_counter() - t0, 2)
    return done
