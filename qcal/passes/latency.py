"""Per-layer latency of each precision choice, from ONNX Runtime's profiler.

ONNX Runtime rewrites the graph before it runs it (QDQ Conv -> QLinearConv named "<node>_token_<k>", FP32
Conv + activation -> an NCHWc node named after its output tensor), so profiled names are mapped back to the
original Conv/Gemm/MatMul: exact name, then the name without "_token_<k>", then the producer of the named
tensor, walking back through activations. Time that maps to no layer (Q/DQ, reorders, other ops) is reported
as "other". The fp16 choice is timed as the FP32 node: on CPUs without FP16 arithmetic the converted node costs
more (measured in docs/adaquant.md), so there give the allocation int8/fp32 choices.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from qcal.config import KeepFloatConfig, QuantConfig
from qcal.quant.fakequant import Precision

COMPUTE = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def attribute(profiled: str, graph: onnx.GraphProto) -> str | None:
    """The original compute node a profiled (possibly fused/renamed) node belongs to, or None."""
    nodes = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    if profiled in nodes and nodes[profiled].op_type in COMPUTE:
        return profiled
    base = re.sub(r"_token_\d+$", "", profiled)
    if base in nodes and nodes[base].op_type in COMPUTE:
        return base
    tensor = profiled.removesuffix("_nchwc")
    frontier = [producer[tensor]] if tensor in producer else []
    for _ in range(4):   # Conv -> Relu, Conv -> Sigmoid -> Mul (SiLU), Conv -> Add: a few steps back at most
        nxt = []
        for n in frontier:
            if n.op_type in COMPUTE:
                return str(n.name)
            nxt += [producer[t] for t in n.input if t in producer]
        frontier = nxt
    return None


def profile_nodes(model_path: Path, feed: dict[str, np.ndarray], *, runs: int, threads: int,
                  workdir: Path) -> dict[str, float]:
    """Mean milliseconds per run of every original compute node (plus "other") under ONNX Runtime CPU."""
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(workdir / f"prof_{model_path.stem}")
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    for _ in range(3):   # warm-up runs are profiled too: skipped below by counting runs
        s.run(None, feed)
    for _ in range(runs):
        s.run(None, feed)
    events = json.loads(Path(s.end_profiling()).read_text())
    graph = onnx.load(str(model_path)).graph
    per_run = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    # Keep the last `runs` executions: events come in run order, one per executed node per run.
    per_node: dict[str, list[float]] = defaultdict(list)
    cache: dict[str, str] = {}
    for e in per_run:
        raw = e["name"][: -len("_kernel_time")]
        if raw not in cache:
            cache[raw] = attribute(raw, graph) or "other"
        per_node[cache[raw]].append(float(e["dur"]) / 1000.0)
    total_runs = runs + 3
    return {k: float(np.sum(v[-(len(v) * runs // total_runs):]) / runs) if v else 0.0 for k, v in per_node.items()}


def layer_latencies(adapter: Any, cs: Any, cfg: QuantConfig, nodes: dict[str, str], choices: Sequence[Precision],
                    *, runs: int, threads: int, workdir: Path, progress: bool) -> dict[str, dict[str, float]]:
    """layer -> choice -> ms: int8 from the all-INT8 QDQ model, float choices from the FP32 model."""
    from qcal.calibration.pipeline import run as run_pipeline

    probe_cfg = cfg.replace(keep_float=KeepFloatConfig(**{**cfg.keep_float.__dict__, "sensitivity_samples": 0}))
    out = run_pipeline(adapter, (s.image for s in cs), len(cs), probe_cfg, workdir, metadata={},
                       progress=progress, threads=threads)
    feed = adapter.prepare(cs[0].image).feeds
    fp = profile_nodes(out.fp32_path, feed, runs=runs, threads=threads, workdir=workdir)
    q8 = profile_nodes(out.int8_path, feed, runs=runs, threads=threads, workdir=workdir)
    result: dict[str, dict[str, float]] = {}
    for layer, node in nodes.items():
        result[layer] = {}
        for p in choices:
            if p.is_float:
                result[layer][p.value] = fp.get(node, 0.0)
            elif p is Precision.INT8:
                result[layer][p.value] = q8.get(node, fp.get(node, 0.0))
        result[layer]["fp32"] = fp.get(node, 0.0)
    result["__other__"] = {"fp32": fp.get("other", 0.0), "int8": q8.get("other", 0.0)}
    return result
