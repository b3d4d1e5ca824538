"""The public verb: quantize(model, calib, ...) -> QuantResult. Everything the run decided is on the result."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from exporters.outset import OutputSet, file_sha256
from exporters.quant_table import QuantTable
from qcal.calibration.diagnostics import coverage, range_stability
from qcal.calibration.pipeline import PipelineOutput
from qcal.calibration.pipeline import run as run_pipeline
from qcal.config import QuantConfig, Target
from qcal.errors import CalibrationError
from qcal.eval.evaluate import Evaluation, evaluate_detector
from qcal.models import load_model
from qcal.models.base import ModelAdapter
from qcal.reporting.schema import clean_report
from qcal.runtime.machine import machine_info
from qcal.version import __version__

# The files of an exported set, by role (report.json's `precisions` name the two models by these file names).
ARTIFACTS = {"fp32": "model.fp32.onnx", "int8": "model.int8.onnx", "table": "quant_table.json",
             "report_json": "report.json", "report_md": "report.md"}


@dataclass
class QuantResult:
    """A quantized detector or torch module (qcal.result.Result, kind "vision")."""

    kind: ClassVar[str] = "vision"
    config: QuantConfig
    adapter: ModelAdapter
    calib: Any                        # the calib_sets.CalibSet used (content hash, manifest, coverage)
    out: PipelineOutput
    quantize_seconds: float
    evaluation: Evaluation | None = None
    passes: list[Any] = field(default_factory=list)   # qcal.passes.PassReport, one per configured pass
    _workdir: Any = field(default=None, repr=False)   # TemporaryDirectory owning the artifacts

    @property
    def augmenter(self) -> Any:
        """The learned MetaAug T (qcal.augment.Augmenter) when the adaquant pass ran with augment=; else None."""
        return next((r.augmenter for r in self.passes if getattr(r, "augmenter", None) is not None), None)

    @property
    def calib_hash(self) -> str:
        return str(self.calib.content_hash)

    @property
    def skipped(self) -> list[str]:
        """The calibration inputs the set left out as unreadable (calib_sets.CalibSet.skipped: each names the file
        or the frames, and why)."""
        return [str(x) for x in getattr(self.calib, "skipped", ())]

    @property
    def table(self) -> QuantTable:
        return self.out.table

    @property
    def float_nodes(self) -> dict[str, str]:
        return dict(self.out.table.float_reasons)

    def _precisions(self) -> list[dict[str, Any]]:
        """The two models as report.json's `precisions` (the schema qcal bench writes): FP32 and its INT8."""
        o = self.out
        return [{"name": "fp32", "file": ARTIFACTS["fp32"], "sha256": file_sha256(o.fp32_path),
                 "size_mb": round(o.fp32_path.stat().st_size / 2**20, 3), "spec": {"name": "fp32", "kind": "fp32"}},
                {"name": "int8", "file": ARTIFACTS["int8"], "sha256": file_sha256(o.int8_path),
                 "size_mb": round(o.int8_path.stat().st_size / 2**20, 3), "spec": {"name": "int8", "kind": "static"},
                 "calib_hash": self.calib_hash, "calib_samples": o.calibration.samples,
                 "quantize_seconds": round(self.quantize_seconds, 2), "float_nodes": len(o.table.float_nodes)}]

    def to_dict(self) -> dict[str, Any]:
        """report.json: schema qcal.robustness/1 (qcal.reporting.schema; what `qcal check` gates: FP32 and INT8 on
        the clean condition once evaluated, `cells` empty before) plus everything the quantization decided."""
        o = self.out
        evaluation = self.evaluation.to_dict() if self.evaluation else None
        task = "classify" if getattr(self.adapter, "task", "") == "classify" else "detect"
        schema = clean_report(task=task, precisions=self._precisions(), evaluation=evaluation)
        return {
            "schema": schema.pop("schema"),
            "qcal_version": __version__,
            "model": {"source": self.adapter.source, "family": self.adapter.family, "sha256": self.adapter.model_hash()},
            "target": self.config.target.value,
            "profile": {k: v for k, v in o.profile.__dict__.items()},
            "config": self.config.resolved().to_dict(),
            "config_hash": self.config.hash(),
            "calibration": {"set_hash": self.calib_hash, "samples": o.calibration.samples,
                            "observer": o.calibration.observer, "seconds": round(o.calibration.seconds, 2),
                            "observer_state_mb": round(o.calibration.state_bytes / 2**20, 2),
                            "blend_alpha": o.blend_alpha,
                            "blend_search": None if o.blend_search is None else
                            {"chosen_alpha": o.blend_alpha,
                             "output_sqnr_db": {str(a): round(v, 3) for a, v in o.blend_search.items()},
                             "groups": o.blend_groups}},
            "range_stability": range_stability(o.calibration),
            "coverage": coverage(self.calib),
            "skipped": self.skipped,
            "kept_in_float": [{"node": d.node, "op": d.op_type, "rule": d.rule, "reason": d.reason}
                              for d in o.decisions],
            "sensitivity_top": [{"node": k, "sqnr_drop_db": round(v, 2)} for k, v in
                                sorted(o.node_sqnr_drop.items(), key=lambda kv: -kv[1])[:10]],
            "attribution": None if o.attribution is None else
            {"samples": self.config.keep_float.attribution_samples,
             "tensors": [{"tensor": k, "kind": o.table.tensors[k].kind, "alone_db": round(v["alone_db"], 3),
                          "float_gain_db": round(v["float_gain_db"], 3)} for k, v in o.attribution.items()]},
            "quantized_tensors": len(o.table.tensors),
            "seconds": {**{k: round(v, 2) for k, v in o.seconds.items()}, "total": round(self.quantize_seconds, 2)},
            "evaluation": evaluation,
            "passes": [r.to_dict() for r in self.passes],
            "machine": machine_info().to_dict(),
            **schema,
        }

    def summary(self) -> str:
        from qcal.reporting.report import summary_table

        return summary_table(self.to_dict())

    def export(self, directory: str | Path | OutputSet, *, extra: dict[str, str] | None = None) -> dict[str, Path]:
        """Write model.fp32.onnx, model.int8.onnx, quant_table.json, report.json and report.md as one whole set
        (exporters.outset: staged beside `directory`, manifest qcal-set.json last, then switched in; a failure
        leaves the previous set as it was); for target tensorrt also calib.cache and ort_trt/calibration.flatbuffers
        (each with a .qcal.json stamp); when MetaAug ran, metaaug_samples.png. `extra`: more text files of the
        set (name -> content). `directory` may be an OutputSet already opened (and locked) before the work."""
        from qcal.runtime.output import open_output, write_set

        if isinstance(directory, OutputSet):
            return write_set(directory, lambda s: self._write(s, extra or {}))
        with open_output(directory, expected_bytes=3 * self.out.fp32_path.stat().st_size) as s:
            return write_set(s, lambda s: self._write(s, extra or {}))

    def _write(self, s: OutputSet, extra: dict[str, str]) -> dict[str, str]:
        """Write every artifact into the staging folder of `s`; the names of the set, by role."""
        from qcal.reporting.report import report_markdown

        names = dict(ARTIFACTS)
        shutil.copyfile(self.out.fp32_path, s.path(names["fp32"]))
        shutil.copyfile(self.out.int8_path, s.path(names["int8"]))
        self.out.table.save(s.path(names["table"]))
        data = self.to_dict()
        if data["attribution"]:   # per-tensor error attribution: one bar per tensor, graph order
            from qcal.reporting.report import attribution_png

            names["attribution"] = "attribution.png"
            attribution_png(data["attribution"], s.path(names["attribution"]))
            data["attribution"]["plot"] = names["attribution"]
        if self.augmenter is not None:   # MetaAug ran: x | T(x) | |T(x) - x| of a few calibration images
            names["metaaug_samples"] = "metaaug_samples.png"
            data["metaaug_samples"] = self._metaaug_samples(s.path(names["metaaug_samples"]))
        s.path(names["report_json"]).write_text(json.dumps(data, indent=1))
        s.path(names["report_md"]).write_text(report_markdown(data))
        for name, text in extra.items():
            names[name] = name
            s.path(name).write_text(text)
        if self.config.target is Target.TENSORRT:   # calib.cache + ort_trt/calibration.flatbuffers, stamped
            from qcal.runtime.deploy import write_caches

            written = write_caches(self.out.table, s.path("."), s.path(names["fp32"]), calib_hash=self.calib_hash,
                                   config_hash=self.config.hash(), model_sha256=self.adapter.model_hash(),
                                   calib_size=self.config.calib_size)
            names.update({k: os.path.relpath(v, s.path(".")) for k, v in written.items()})
        return names

    def _metaaug_samples(self, path: Path, n: int = 4) -> dict[str, Any]:
        """Write the first n calibration inputs as x | T(x) | amplified |T(x) - x| (qcal.augment.samples)."""
        from itertools import islice

        from qcal.augment.samples import write_samples_png
        from qcal.passes.apply import calib_tensor

        x = calib_tensor(self.adapter, (s.image for s in islice(self.calib, n)))
        gain = write_samples_png(path, x, self.augmenter(x))
        return {"file": path.name, "samples": len(x), "diff_gain": round(gain, 3), "t_hash": self.augmenter.hash}

    def evaluate(self, eval_set: Any, *, latency_runs: int = 30, threads: int = 2,
                 progress: bool = True, spec: str | None = None) -> Evaluation:
        """FP32 vs INT8 on eval_set (anything calib_sets.load takes); refuses sets that share content with
        the calibration set (compared by source content hash and source key, degraded copies included).
        `spec`: how the set was given, for report.json's eval.spec (default: eval_set when a str or path)."""
        import calib_sets
        try:
            es = calib_sets.load(eval_set)
        except calib_sets.CalibSetError as e:
            raise CalibrationError(str(e)) from e
        shared = calib_sets.overlap(self.calib, es, by="both")
        if shared:
            raise CalibrationError(f"{len(shared)} evaluation image(s) are also in the calibration set "
                                   f"(e.g. {shared[0].key_b}); evaluate on images the calibration never saw.")
        try:   # a frame that does not decode is skipped and named (es.skipped); none decoding is an error
            images = [s.image for s in es]
        except calib_sets.CalibSetError as e:
            raise CalibrationError(f"evaluation set {eval_set!r}: {e}") from e
        ev = evaluate_detector(self.adapter, self.out.fp32_path, self.out.int8_path, images,
                               latency_runs=latency_runs, threads=threads, progress=progress)
        self.evaluation = replace(ev, skipped=tuple(es.skipped), set_hash=es.content_hash,
                                  spec=spec if spec is not None else
                                  str(eval_set) if isinstance(eval_set, (str, Path)) else None)
        return self.evaluation


def quantize(model: Any, calib: Any = None, *, target: str | Target | None = None, config: QuantConfig | None = None,
             trust_checkpoint: bool = False, example_input: Any = None, eval: Any = None,
             progress: bool = True, threads: int = 2) -> QuantResult:
    """Quantize a checkpoint (YOLO .pt path or torch.nn.Module) with a calibration set; optionally evaluate.

    calib: anything `calib_sets.load` takes (folder, video, image file, TOML recipe, "bundled:vtest") or a CalibSet.
    eval: the same kinds; when given, FP32 vs INT8 fidelity and latency are measured (`result.evaluation`).
    """
    import calib_sets
    from qcal.config.bounds import check_threads

    check_threads(threads, "threads")
    cfg = config or QuantConfig()
    if target is not None:
        cfg = cfg.replace(target=Target(target))
    t0 = time.perf_counter()
    try:   # the data is described (not decoded) before the model loads: a bad path fails in a second
        cs = calib_sets.load(calib if calib is not None else "bundled:vtest")
        if eval is not None:
            calib_sets.load(eval)
    except calib_sets.CalibSetError as e:
        raise CalibrationError(str(e)) from e
    adapter = load_model(model, trust_checkpoint=trust_checkpoint, imgsz=cfg.imgsz, example_input=example_input)
    if len(cs) > cfg.calib_size:
        cs = cs.take(cfg.calib_size)
    if len(cs) == 0:
        raise CalibrationError(f"calibration set {calib!r} is empty: give a folder of images or a video.")
    reports: list[Any] = []
    if cfg.passes:   # torch passes (BN re-estimation, AdaQuant, bias correction) refine the float weights first
        from qcal.passes.apply import refine

        adapter, reports = refine(adapter, (s.image for s in cs), cfg, progress=progress)
    from qcal.runtime.output import workdir as new_workdir

    workdir = new_workdir()
    metadata = {"qcal.version": __version__, "qcal.config": json.dumps(cfg.resolved().to_dict(), sort_keys=True),
                "qcal.config_hash": cfg.hash(), "qcal.calib_hash": cs.content_hash,
                "qcal.model_sha256": adapter.model_hash(), "qcal.target": cfg.target.value}
    out = run_pipeline(adapter, (s.image for s in cs), len(cs), cfg, Path(workdir.name), metadata=metadata,
                       progress=progress, threads=threads)
    result = QuantResult(cfg, adapter, cs, out, time.perf_counter() - t0, None, reports, workdir)
    if eval is not None:
        result.evaluate(eval, threads=threads, progress=progress)
    return result
