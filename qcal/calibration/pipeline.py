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
from tqdm import tqdm

from exporters import PROFILES, QdqProfile, QuantTable, TensorQuant, export_qdq
from exporters.errors import ExporterError
from exporters.qdq import float_readers, quantizable_op_types, reads_quantized
from exporters.share import share_concat_ranges, tie_same_as_input
from exporters.trt_cache import trt_scale
from qcal.calibration.calibrate import CalibrationStats, calibrate
from qcal.config import QuantConfig, Target
from qcal.errors import ExportError
from qcal.models.base import ModelAdapter
from qcal.placement.keep_float import (
    FloatDecision,
    no_compute_downstream,
    range_mismatch,
    sensitivity_decisions,
)
from qcal.quant.qparams import compute_qparams, qrange, sqnr_db
from qcal.quant.weights import initializer, quantize_bias, quantize_weight, weight_sites
from qcal.simulation.graph import GraphInfo, analyse, tensors_to_calibrate
from qcal.simulation.probe import Probe


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
    attribution: dict[str, dict[str, float]] | None = None   # tensor -> alone_db, float_gain_db (Probe.attribution)


def resolve_profile(config: QuantConfig) -> QdqProfile:
    profile = PROFILES[config.target.value]
    if config.target is Target.ORT_CPU:
        reduce = bool(config.resolved().reduce_range)   # the value the config hash records
        share = "" if config.share_concat_ranges == "off" else config.share_concat_ranges
        profile = profile.replace(reduce_range=reduce, share_concat_ranges=share)
    return profile.replace(per_channel=config.per_channel)


def _feeds(adapter: ModelAdapter, images: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    for img in images:
        yield adapter.prepare(img).feeds


def build_table(info: GraphInfo, stats: CalibrationStats, profile: QdqProfile, decisions: list[FloatDecision],
                meta: Mapping[str, object], weights: Mapping[str, TensorQuant] | None = None) -> QuantTable:
    """The whole table: activations adjacent to a quantized node (inputs only where the profile quantizes no
    outputs), their ranges shared per Concat group and tied through data-movement ops as the profile needs;
    then every quantized weighted node's weight (round to nearest, or the entry a pass gave in `weights`) and, for
    profiles with integer biases, its bias at scale s_x * s_w."""
    floats = {d.node for d in decisions}
    ops = set(quantizable_op_types(profile))
    graph = info.model.graph
    wanted: set[str] = set()
    keep = float_readers(info.model, tuple(floats)) if profile.float_nodes_read_float else floats
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    for n in graph.node:
        if n.op_type not in ops or n.name in floats:
            continue
        if profile.quantize_outputs:
            wanted.update(info.activation_inputs(n))
            wanted.update(t for t in n.output if t in info.float_tensors)
        else:   # TensorRT: Q/DQ on the inputs it fuses (exporters.qdq.reads_quantized)
            wanted.update(t for t in info.activation_inputs(n)
                          if reads_quantized(info.model, n, t, keep, made_by.get(t)))
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    ranges = {t: r for t, r in stats.ranges.items() if t in wanted and t not in constants}
    if profile.share_concat_ranges:
        ranges, _ = share_concat_ranges(info.model, ranges, floats, profile.share_concat_ranges)
    if profile.quantize_outputs:
        ranges = tie_same_as_input(info.model, ranges, floats)
    signed = profile.activation_dtype == "int8"
    qmin, qmax = qrange(8, signed=signed, symmetric=profile.activation_symmetric)
    tensors: dict[str, TensorQuant] = {}
    for name, (lo, hi) in ranges.items():
        scale, zp = compute_qparams(lo, hi, qmin, qmax, symmetric=profile.activation_symmetric)
        if profile.name == "tensorrt":   # only scales a float32 amax reaches: what TensorRT will run
            scale = np.float32(trt_scale(float(scale)))
        tensors[name] = TensorQuant(profile.activation_dtype, (float(scale),), (int(zp),),
                                    rmin=float(min(lo, 0.0)), rmax=float(max(hi, 0.0)))
    readers = {t: info.consumers.get(t, []) for t in info.initializers}
    for site in weight_sites(info.model):
        if site.node in floats or site.op_type not in ops or site.activation not in tensors:
            continue
        if any(r != site.node for r in readers.get(site.weight, [])):
            continue   # a weight shared with another node stays float
        w = (weights or {}).get(site.weight) or quantize_weight(
            initializer(info.model, site.weight), site.axis if profile.per_channel else None,
            bits=7 if profile.reduce_range else 8)
        tensors[site.weight] = w
        if site.bias and profile.quantize_bias and readers.get(site.bias) == [site.node]:
            tensors[site.bias] = quantize_bias(initializer(info.model, site.bias),
                                               float(tensors[site.activation].scale[0]), w)
    return QuantTable(tensors, tuple(d.node for d in decisions), {d.node: f"{d.rule}: {d.reason}" for d in decisions},
                      profile.name, dict(meta))


def verified(info: GraphInfo, stats: CalibrationStats, probe: Probe, decisions: list[FloatDecision],
             candidates: list[FloatDecision], meta: Mapping[str, object], min_gain_db: float) -> list[FloatDecision]:
    """Greedy: keep a candidate in float only if the whole model's simulated output SQNR rises by min_gain_db."""
    if not candidates:
        return []
    kept: list[FloatDecision] = []
    best = probe.output_sqnr(build_table(info, stats, probe.profile, decisions, meta))
    for c in candidates:
        score = probe.output_sqnr(build_table(info, stats, probe.profile, decisions + kept + [c], meta))
        if score >= best + min_gain_db:
            kept.append(FloatDecision(c.node, c.op_type, c.rule, f"{c.reason}; keeping it in float raised the "
                                      f"output SQNR {best:.2f} -> {score:.2f} dB"))
            best = score
    return kept


def choose_blend(info: GraphInfo, stats: CalibrationStats, probe: Probe, decisions: list[FloatDecision],
                 alphas: tuple[float, ...], meta: Mapping[str, object],
                 groups: int = 1) -> tuple[CalibrationStats, float, dict[float, float], list[dict[str, Any]] | None]:
    """The blend observer's alpha (0: MSE ranges, 1: percentile ranges) with the best simulated model-output SQNR
    on the probe samples; ties go to the first alpha listed. With groups > 1, then one alpha per contiguous group
    of tensors (graph order), each group in turn, a change kept only when it raises the SQNR (coordinate search);
    the last value lists the groups: first/last tensor, size, alpha and the SQNR after choosing it."""
    weights: dict[str, TensorQuant] = {}   # the weights do not depend on the ranges: quantized once

    def table(alpha: float | Mapping[str, float]) -> QuantTable:
        t = build_table(info, stats.blended(alpha), probe.profile, decisions, meta, weights)
        weights.update((k, v) for k, v in t.tensors.items() if v.kind == "weight")
        return t

    def score(alpha: float | Mapping[str, float]) -> float:
        return probe.output_sqnr(table(alpha))

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
        others = [a for a in alphas if a != best]
        trials = probe.output_sqnrs(table({**per_tensor}), [table({**per_tensor, **dict.fromkeys(members, a)})
                                                            for a in others])
        for a, trial in zip(others, trials, strict=True):
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
    probe = Probe(info.model, profile, first, threads) if n_probe > 0 and first else None
    if stats.endpoints is not None:
        t1 = time.perf_counter()
        alpha = config.blend_alphas[0]
        if len(config.blend_alphas) > 1 and probe is not None:
            stats, alpha, search, group_alphas = choose_blend(info, stats, probe, decisions, config.blend_alphas,
                                                              meta, config.blend_groups)
        else:
            stats = stats.blended(alpha)
        per_group = None if group_alphas is None else ",".join(f"{g['alpha']:g}" for g in group_alphas)
        meta["observer"] = f"blend(alpha={alpha:g})" if per_group is None else f"blend(alpha per group={per_group})"
        metadata = {**metadata, "qcal.observer": meta["observer"]}
        seconds["blend_search"] = time.perf_counter() - t1
    if probe is not None:
        sq = probe.tensor_sqnr(build_table(info, stats, profile, decisions, meta))
        candidates, drops = sensitivity_decisions(info, sq, config.keep_float.max_nodes,
                                                  config.keep_float.min_drop_db, decided)
        decisions += verified(info, stats, probe, decisions, candidates, meta, config.keep_float.min_gain_db)
    seconds["placement"] = time.perf_counter() - t0

    table = build_table(info, stats, profile, decisions, meta)
    attribution = None
    if probe is not None and config.keep_float.attribution_samples > 0:
        t0 = time.perf_counter()
        n = config.keep_float.attribution_samples
        runs = n * sum(t.kind in ("activation", "weight") for t in table.tensors.values())
        with tqdm(total=runs, desc="per-tensor attribution", unit="run", disable=not progress,
                  leave=False) as bar:
            attribution = probe.attribution(table, n, lambda done, total: bar.update(done - bar.n))
        seconds["attribution"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    int8_path = workdir / "model.int8.onnx"
    try:
        export_qdq(info.model, table, profile, int8_path, metadata=metadata)
    except ExporterError as e:
        raise ExportError(f"QDQ export failed: {e}") from e
    if config.keep_float.fp16_nodes:   # the allocation's "fp16" layers: float16 inside the QDQ graph
        from exporters.float16 import convert_nodes_fp16

        try:
            convert_nodes_fp16(int8_path, config.keep_float.fp16_nodes,
                               metadata={"qcal.fp16_nodes": ",".join(config.keep_float.fp16_nodes)})
        except ExporterError as e:
            raise ExportError(f"FP16 conversion of keep_float.fp16_nodes failed: {e}") from e
    seconds["export_int8"] = time.perf_counter() - t0
    return PipelineOutput(fp32_path, int8_path, table, profile, decisions, drops, stats, seconds, search, alpha,
                          group_alphas, attribution)


__all__ = ["PipelineOutput", "run", "resolve_profile", "build_table", "sqnr_db"]
