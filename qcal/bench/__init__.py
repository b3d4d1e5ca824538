"""`qcal.robustness(...)`: how each precision holds up on clean and degraded inputs, beside FP32.

    report = qcal.robustness("yolo.pt", calib="calib_sets/recipes/vtest-qrid.toml", eval="held_out/",
                             conditions="qrid", precisions="fp32,fp16,int8-dynamic,int8-clean,int8-mixed",
                             out="report/", trust_checkpoint=True)
    print(report.summary())        # the table `qcal bench` prints; report/ has report.json, .md, .html

Work is resumable: rerunning with the same out/ reuses every finished model and cell (see cells.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import calib_sets
from exporters.errors import ExporterError
from exporters.outset import FolderLock, drop_manifest, write_manifest
from exporters.quant_table import atomic_write_text
from qcal.bench.cells import CellStore
from qcal.bench.classify import compare_classifier, score_classifier
from qcal.bench.executors import Executor, make_executor
from qcal.bench.matrix import (
    build_models,
    compare_calibrations,
    labels_to_detections,
    measure,
    run_cells,
    score_cells,
    timed,
)
from qcal.bench.spec import (
    DEFAULT_PRECISIONS,
    condition_dict,
    condition_name,
    parse_conditions,
    parse_precisions,
)
from qcal.config import QuantConfig
from qcal.config.bounds import check_bench_counts
from qcal.errors import CalibrationError, ConfigError, ExportError
from qcal.eval.detection import pseudo_labels
from qcal.models import load_model
from qcal.models.base import Detections
from qcal.reporting.schema import SCHEMA  # the one report schema; qcal quantize --eval writes it too
from qcal.runtime.machine import machine_info
from qcal.version import __version__


@dataclass
class RobustnessReport:
    data: dict[str, Any]
    paths: dict[str, Path]

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def summary(self) -> str:
        from qcal.bench.tables import summary_table

        return summary_table(self.data)


def _expected_bytes(model: Any, precisions: str | Sequence[str]) -> float:
    """About what the report folder holds when done: an FP32 ONNX (~2x a half-precision .pt) and one model per
    other precision (<= 2x each), plus 16 MiB of cells and reports; 0 (no check) for a module."""
    n = len(precisions.split(",")) if isinstance(precisions, str) else len(precisions)
    try:
        ckpt = Path(model).stat().st_size
    except (OSError, TypeError):
        return 0.0
    return float(2 * (n + 1) * ckpt + 16 * 2**20)


def robustness_of_result(result: Any, *, eval: Any, conditions: str | Sequence[str] | None = "qrid",
                         out: str | Path = "report", name: str = "int8-result", **kwargs: Any) -> RobustnessReport:
    """The matrix for a detector result of qcal.quantize (kind "vision"): FP32 and the result's own INT8 model, the
    file it exports, under every condition -- nothing is quantized again. Other keywords as robustness()."""
    if "precisions" in kwargs or "calib" in kwargs:
        raise ConfigError("robustness(result, ...) measures the result's own INT8 model: drop precisions=/calib= "
                          "(to compare recipes, call qcal.robustness(checkpoint, precisions=...)).")
    return robustness(result.adapter, eval=eval, conditions=conditions, out=out,
                      precisions=f"fp32,onnx:{name}={result.out.int8_path}", config=result.config, **kwargs)


def robustness(model: Any, *, eval: Any, calib: str | None = None, conditions: str | Sequence[str] | None = "qrid",
               precisions: str | Sequence[str] = DEFAULT_PRECISIONS, out: str | Path = "report",
               config: QuantConfig | None = None, trust_checkpoint: bool = False, latency_runs: int = 30,
               bootstrap: int = 1000, threads: int = 2, progress: bool = True,
               command: str | None = None, device: str = "cpu", runtime: str | None = None,
               executor: str | Executor = "serial", address: str | None = None,
               allow_outside_root: bool = False) -> RobustnessReport:
    """Evaluate every precision under every condition; write report.json/.md/.html into `out`.

    device "cuda" (or runtime "torch") runs the cells with qcal.simulation.sim's torch execution of the same ONNX files:
    FP32, FP16 and the INT8 QDQ models as fake quantization (ORT's integer-only int8-dynamic is not supported).
    Latency is always ONNX Runtime on CPU.

    executor "ray" runs the cells as Ray tasks, on a local Ray or the cluster at `address` (HOST:PORT); the report
    is the same as the serial one's except timing fields (see qcal.bench.executors).

    allow_outside_root lets paths written inside a .toml recipe (--calib, --eval) leave the recipe's folder."""
    check_bench_counts(threads=threads, latency_runs=latency_runs, bootstrap=bootstrap)
    if device == "cuda" and executor == "serial":   # a Ray cluster's nodes may have the GPU this one lacks
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: torch sees no CUDA device on this machine; use --device cpu, or run "
                              "where a GPU and a CUDA build of torch are (or with --executor ray on a GPU cluster).")
    try:   # the report folder is checked and locked before any work; a second run into it is refused
        lock = FolderLock(out, expected_bytes=_expected_bytes(model, precisions)).__enter__()
    except ExporterError as e:
        raise ExportError(str(e)) from None
    with lock:
        cfg = config or QuantConfig()
        ex = make_executor(executor, address=address, threads=threads, device=device) if isinstance(executor, str) \
            else executor
        seconds: dict[str, float] = {}
        log = (lambda msg: print(f"qcal bench: {msg}", file=sys.stderr)) if progress else (lambda msg: None)
        precs = parse_precisions(precisions, calib)
        conds = parse_conditions(conditions)
        adapter = load_model(model, trust_checkpoint=trust_checkpoint, imgsz=cfg.imgsz)
        imgsz = int(getattr(adapter, "input_size", cfg.imgsz))   # a torch module's own input size, else the config's
        try:
            es = calib_sets.load(eval, allow_outside_root=allow_outside_root).resized(imgsz)
            samples = list(es)
        except calib_sets.CalibSetError as e:
            raise CalibrationError(f"evaluation set {eval!r}: {e}") from e
        if not samples:
            raise CalibrationError(f"evaluation set {eval!r} is empty.")
        images = [s.image for s in samples]
        hw = [img.shape[:2] for img in images]
        store = CellStore(out)

        done = timed(seconds, "models")
        models = build_models(adapter, precs, store, cfg, es, progress=progress, threads=threads, log=log, imgsz=imgsz,
                              allow_outside_root=allow_outside_root)
        done()
        labelled = all(s.labels is not None for s in samples)
        done = timed(seconds, "cells")
        need_fp32 = not labelled and "fp32" not in models
        run_models = {**models, **({"fp32": {"file": str(store.model_path("fp32")),
                                             "sha256": store.model_info("fp32")["sha256"]}} if need_fp32 else {})}
        rt = runtime or ("ort" if device == "cpu" else "torch")
        cells = run_cells(adapter, run_models, conds, images, es.content_hash, store, threads=threads, progress=progress,
                          runtime=rt, device=device, executor=ex)
        done()
        done = timed(seconds, "metrics")
        if getattr(adapter, "task", "") == "classify":
            labels = np.array([int(s.labels[0, 0]) for s in samples]) if labelled else None  # type: ignore[index]
            metrics, correct = score_classifier(cells, labels)
            if need_fp32:
                metrics.pop("fp32")
            comparisons = compare_classifier(correct, precs, bootstrap)
            reference_info: dict[str, Any] = {"classes_seen": int(len(np.unique(labels))) if labels is not None else None}
            primary = "top1"
        else:
            det_cells: dict[str, dict[str, list[Detections]]] = cells  # type: ignore[assignment]
            if labelled:
                reference = [labels_to_detections(s.labels, h) for s, h in zip(samples, hw, strict=True)]  # type: ignore[arg-type]
            else:
                reference = [pseudo_labels(d) for d in det_cells["fp32"]["clean"]]
            if need_fp32:
                det_cells.pop("fp32")
            nc = max(len(adapter.class_names), 1)
            metrics, evals = score_cells(det_cells, reference, hw, nc)
            comparisons = compare_calibrations(evals, precs, bootstrap)
            reference_info = {"reference_boxes": int(sum(len(r) for r in reference))}
            primary = "map50_95"
        done()
        done = timed(seconds, "latency")
        latency = measure(adapter, models, images[0], runs=latency_runs, threads=threads)
        done()
        data = {
            "schema": SCHEMA,
            "qcal_version": __version__,
            "command": command,
            "model": {"source": adapter.source, "family": adapter.family, "sha256": adapter.model_hash()},
            "config": cfg.resolved().to_dict(), "config_hash": cfg.hash(),
            "task": "classify" if primary == "top1" else "detect", "primary_metric": primary,
            "metric": "labels" if labelled else "fidelity",
            "eval": {"spec": str(eval), "set_hash": es.content_hash, "images": len(images), **reference_info},
            "conditions": [condition_dict(c) for c in conds],
            "precisions": [{"name": k, **v} for k, v in models.items()],
            "cells": metrics,
            "latency_ms": latency,
            "size_mb": {k: v["size_mb"] for k, v in models.items()},
            "comparisons": comparisons,
            "machine": {**machine_info().to_dict(), "threads": threads},
            "runtime": {"cells": rt, "device": device},   # the executor is left out: reports are executor-independent
            "seconds": seconds,
        }
        paths = write_report(data, out)
        return RobustnessReport(data, paths)


def write_report(data: dict[str, Any], out: str | Path) -> dict[str, Path]:
    from qcal.bench.html import report_html
    from qcal.bench.tables import report_markdown

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"json": d / "report.json", "md": d / "report.md", "html": d / "report.html"}
    drop_manifest(d)   # until the manifest is back, readers (qcal check) refuse the folder: never old + new
    atomic_write_text(paths["json"], json.dumps(data, indent=1))
    atomic_write_text(paths["md"], report_markdown(data))
    atomic_write_text(paths["html"], report_html(data))
    write_manifest(d, [p.name for p in paths.values()], {"qcal_version": data.get("qcal_version", "")})
    return paths


__all__ = ["RobustnessReport", "condition_name", "robustness", "robustness_of_result", "write_report"]
