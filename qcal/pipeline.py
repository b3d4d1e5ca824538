"""The quantization pipeline: FP32 ONNX -> streaming calibration -> measured float placement -> QuantTable
-> QDQ ONNX. Every step's decisions are returned for the report."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from exporters import PROFILES, QdqProfile, QuantTable, TensorQuant, export_qdq
from exporters.qdq import quantizable_op_types
from qcal.calibrate import CalibrationStats, calibrate, make_session
from qcal.config import QuantConfig, Target
from qcal.errors import ExportError
from qcal.graph import GraphInfo, analyse, tensors_to_calibrate, with_outputs
from qcal.machine import machine_info
from qcal.models.base import ModelAdapter
from qcal.placement import FloatDecision, no_compute_downstream, range_mismatch, sensitivity_decisions
from qcal.quant.qparams import compute_qparams, qrange, sqnr_db


@dataclass
class PipelineOutput:
    fp32_path: Path
    int8_path: Path
    table: QuantTable
    profile: QdqProfile
    decisions: list[FloatDecision]
    node_sqnr_drop: dict[str, float]
    calibration: CalibrationStats
    seconds: dict[str, float]
    blend_search: dict[float, float] | None = None   # blend observer: alpha -> model-output SQNR (dB)
    blend_alpha: float | None = None                 # blend observer: the alpha used (the best single one)
    blend_groups: list[dict[str, Any]] | None = None  # blend_groups > 1: each group's tensors and chosen alpha


def resolve_profile(config: QuantConfig) -> QdqProfile:
    profile = PROFILES[config.target.value]
    if config.target is Target.ORT_CPU:
        reduce = (not machine_info().has_vnni) if config.reduce_range is None else config.reduce_range
        share = "" if config.share_concat_ranges == "off" else config.share_concat_ranges
        profile = profile.replace(reduce_range=reduce, share_concat_ranges=share)
    return profile.replace(per_channel=config.per_channel)


def _feeds(adapter: ModelAdapter, images: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    for img in images:
        yield adapter.prepare(img).feeds


def build_table(stats: CalibrationStats, profile: QdqProfile, decisions: list[FloatDecision],
                meta: Mapping[str, object]) -> QuantTable:
    signed = profile.activation_dtype == "int8"
    qmin, qmax = qrange(8, signed=signed, symmetric=profile.activation_symmetric)
    tensors = {}
    for name, (lo, hi) in stats.ranges.items():
        scale, zp = compute_qparams(lo, hi, qmin, qmax, symmetric=profile.activation_symmetric)
        tensors[name] = TensorQuant(profile.activation_dtype, (float(scale),), (int(zp),),
                                    rmin=float(min(lo, 0.0)), rmax=float(max(hi, 0.0)))
    return QuantTable(tensors, tuple(d.node for d in decisions), {d.node: f"{d.rule}: {d.reason}" for d in decisions},
                      profile.name, dict(meta))


def tensor_sqnr(info: GraphInfo, qdq_path: Path, feeds: list[dict[str, np.ndarray]], threads: int) -> dict[str, float]:
    """SQNR of every quantized activation of the QDQ model against the same tensor in FP32."""
    qdq = onnx.load(str(qdq_path))
    suffix = "_DequantizeLinear_Output"  # ORT's name for the dequantized copy of tensor t
    pairs = [(n.output[0], n.output[0][: -len(suffix)]) for n in qdq.graph.node
             if n.op_type == "DequantizeLinear" and n.output[0].endswith(suffix)]
    pairs = [(q, t) for q, t in pairs if t in info.float_tensors]
    qs = make_session(with_outputs(qdq, [q for q, _ in pairs]).SerializeToString(), threads, arena=False)
    fs = make_session(with_outputs(info.model, [t for _, t in pairs]).SerializeToString(), threads, arena=False)
    noise = np.zeros(len(pairs))
    signal = np.zeros(len(pairs))
    for feed in feeds:
        qo = qs.run([q for q, _ in pairs], feed)
        fo = fs.run([t for _, t in pairs], feed)
        for i, (a, b) in enumerate(zip(qo, fo, strict=True)):
            noise[i] += float(np.sum((a.astype(np.float64) - b) ** 2))
            signal[i] += float(np.sum(b.astype(np.float64) ** 2))
    return {t: 10.0 * float(np.log10(max(s, 1e-30) / max(n, 1e-30))) for (_, t), n, s in zip(pairs, noise, signal,
                                                                                              strict=True)}


def output_sqnr(fp32_path: Path, qdq_path: Path, feeds: list[dict[str, np.ndarray]], threads: int) -> float:
    """Mean SQNR over the model outputs' channels (axis 1): YOLO's box coordinates and class scores count
    alike, whatever their scale."""
    fs, qs = make_session(fp32_path.read_bytes(), threads), make_session(qdq_path.read_bytes(), threads)
    per: list[float] = []
    for feed in feeds:
        for f, q in zip(fs.run(None, feed), qs.run(None, feed), strict=True):
            if f.ndim >= 2 and f.shape[1] <= 1024:
                per += [sqnr_db(f[:, c], q[:, c]) for c in range(f.shape[1])]
            else:
                per.append(sqnr_db(f, q))
    return float(np.mean(per))


def verified(info: GraphInfo, stats: CalibrationStats, profile: QdqProfile, decisions: list[FloatDecision],
             candidates: list[FloatDecision], feeds: list[dict[str, np.ndarray]], fp32_path: Path, probe: Path,
             meta: Mapping[str, object], min_gain_db: float, threads: int) -> list[FloatDecision]:
    """Greedy: keep a candidate in float only if the whole model's output SQNR rises by min_gain_db."""
    if not candidates:
        return []
    kept: list[FloatDecision] = []
    best = output_sqnr(fp32_path, probe, feeds, threads)
    trial = probe.with_name("trial.int8.onnx")
    for c in candidates:
        export_qdq(fp32_path, build_table(stats, profile, decisions + kept + [c], meta), profile, trial)
        score = output_sqnr(fp32_path, trial, feeds, threads)
        if score >= best + min_gain_db:
            kept.append(FloatDecision(c.node, c.op_type, c.rule, f"{c.reason}; keeping it in float raised the "
                                      f"output SQNR {best:.2f} -> {score:.2f} dB"))
            best = score
    trial.unlink(missing_ok=True)
    return kept


def choose_blend(info: GraphInfo, stats: CalibrationStats, profile: QdqProfile, decisions: list[FloatDecision],
                 alphas: tuple[float, ...], feeds: list[dict[str, np.ndarray]], fp32_path: Path, probe: Path,
                 meta: Mapping[str, object], threads: int,
                 groups: int = 1) -> tuple[CalibrationStats, float, dict[float, float], list[dict[str, Any]] | None]:
    """The blend observer's alpha (0: MSE ranges, 1: percentile ranges) with the best model-output SQNR on the
    probe samples; ties go to the first alpha listed. With groups > 1, then one alpha per contiguous group of
    tensors (graph order), each group in turn, a change kept only when it raises the SQNR (coordinate search);
    the last value lists the groups: first/last tensor, size, alpha and the SQNR after choosing it."""
    def score(alpha: float | Mapping[str, float]) -> float:
        export_qdq(fp32_path, build_table(stats.blended(alpha), profile, decisions, meta), profile, probe)
        return output_sqnr(fp32_path, probe, feeds, threads)

    scores = {a: score(a) for a in alphas}
    best = max(scores, key=lambda a: scores[a])
    if groups <= 1:
        return stats.blended(best), best, scores, None
    assert stats.endpoints is not None
    names = list(stats.endpoints)
    per_tensor = dict.fromkeys(names, best)
    current, rows = scores[best], []
    for idx in np.array_split(np.arange(len(names)), min(groups, len(names))):
        members = [names[i] for i in idx]
        keep = best   # each group is visited once, so it still holds the best single alpha
        for a in alphas:
            if a == best:
                continue
            trial = score({**per_tensor, **dict.fromkeys(members, a)})
            if trial > current:
                current, keep = trial, a
        per_tensor.update(dict.fromkeys(members, keep))
        rows.append({"first": members[0], "last": members[-1], "tensors": len(members), "alpha": keep,
                     "output_sqnr_db": round(current, 3)})
    return stats.blended(per_tensor), best, scores, rows


def run(adapter: ModelAdapter, images: Iterable[np.ndarray], n_images: int, config: QuantConfig, workdir: Path,
        *, metadata: dict[str, str], progress: bool = True, threads: int = 2) -> PipelineOutput:
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    fp32_path = workdir / "model.fp32.onnx"
    adapter.export_onnx(fp32_path, opset=config.opset)
    info = analyse(onnx.load(str(fp32_path)))
    onnx.save(info.model, str(fp32_path))  # with node names filled in
    seconds["export_fp32"] = time.perf_counter() - t0

    profile = resolve_profile(config)
    signed = profile.activation_dtype == "int8"
    qmin, qmax = qrange(8, signed=signed, symmetric=profile.activation_symmetric)
    tensors = tensors_to_calibrate(info, quantizable_op_types(profile))
    first: list[dict[str, np.ndarray]] = []   # kept for the sensitivity probe (a few samples only)
    n_probe = config.keep_float.sensitivity_samples

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        for f in _feeds(adapter, images):
            if len(first) < n_probe:
                first.append(f)
            yield f

    t0 = time.perf_counter()
    stats = calibrate(info, tensors, feeds(), observer=config.observer.value, symmetric=profile.activation_symmetric,
                      qmin=qmin, qmax=qmax, percentile=config.percentile, total=n_images, progress=progress,
                      threads=threads)
    seconds["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    known = set(info.nodes)
    missing = [n for n in (*config.keep_float.nodes, *config.keep_float.fp16_nodes) if n not in known]
    if missing:
        from qcal.errors import ConfigError

        raise ConfigError(f"keep_float.nodes names {missing[:5]} which are not nodes of the exported graph; "
                          f"node names look like {sorted(known)[:3]}.")
    decisions = [FloatDecision(n, info.nodes[n].op_type, "user", "named by the user") for n in config.keep_float.nodes
                 if n not in config.keep_float.fp16_nodes]
    decisions += [FloatDecision(n, info.nodes[n].op_type, "fp16", "named in keep_float.fp16_nodes: computes in float16")
                  for n in dict.fromkeys(config.keep_float.fp16_nodes)]
    decided = {d.node for d in decisions}
    for d in range_mismatch(info, stats.minmax, config.keep_float.range_ratio) + no_compute_downstream(info):
        if d.node not in decided:
            decisions.append(d)
            decided.add(d.node)
    meta = {**metadata, "observer": config.observer.value}
    drops: dict[str, float] = {}
    search: dict[float, float] | None = None
    alpha: float | None = None
    group_alphas: list[dict[str, Any]] | None = None
    probe = workdir / "probe.int8.onnx"
    if stats.endpoints is not None:
        t1 = time.perf_counter()
        alpha = config.blend_alphas[0]
        if len(config.blend_alphas) > 1 and n_probe > 0 and first:
            stats, alpha, search, group_alphas = choose_blend(info, stats, profile, decisions, config.blend_alphas,
                                                              first, fp32_path, probe, meta, threads,
                                                              config.blend_groups)
            probe.unlink(missing_ok=True)
        else:
            stats = stats.blended(alpha)
        per_group = None if group_alphas is None else ",".join(f"{g['alpha']:g}" for g in group_alphas)
        meta["observer"] = f"blend(alpha={alpha:g})" if per_group is None else f"blend(alpha per group={per_group})"
        metadata = {**metadata, "qcal.observer": meta["observer"]}
        seconds["blend_search"] = time.perf_counter() - t1
    if n_probe > 0 and first:
        export_qdq(fp32_path, build_table(stats, profile, decisions, meta), profile, probe)
        sq = tensor_sqnr(info, probe, first, threads)
        candidates, drops = sensitivity_decisions(info, sq, config.keep_float.max_nodes,
                                                  config.keep_float.min_drop_db, decided)
        decisions += verified(info, stats, profile, decisions, candidates, first, fp32_path, probe, meta,
                              config.keep_float.min_gain_db, threads)
        probe.unlink(missing_ok=True)
    seconds["placement"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    int8_path = workdir / "model.int8.onnx"
    try:
        table = export_qdq(fp32_path, build_table(stats, profile, decisions, meta), profile, int8_path,
                           metadata=metadata)
    except Exception as e:
        raise ExportError(f"QDQ export failed: {e}") from e
    if config.keep_float.fp16_nodes:   # the allocation's "fp16" layers: float16 inside the QDQ graph
        from exporters.errors import ExporterError
        from exporters.float16 import convert_nodes_fp16

        try:
            convert_nodes_fp16(int8_path, config.keep_float.fp16_nodes,
                               metadata={"qcal.fp16_nodes": ",".join(config.keep_float.fp16_nodes)})
        except ExporterError as e:
            raise ExportError(f"FP16 conversion of keep_float.fp16_nodes failed: {e}") from e
    seconds["export_int8"] = time.perf_counter() - t0
    return PipelineOutput(fp32_path, int8_path, table, profile, decisions, drops, stats, seconds, search, alpha,
                          group_alphas)


__all__ = ["PipelineOutput", "run", "resolve_profile", "build_table", "sqnr_db"]
