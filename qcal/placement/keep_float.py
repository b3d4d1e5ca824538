"""Which nodes stay in float, decided by measurement on the calibration set.

1. Range mismatch: a Concat whose inputs' observed ranges differ by more than `range_ratio` cannot share one
   scale (YOLO's final Concat mixes box pixels 0-640 with class probabilities 0-1: one uint8 scale of 2.5
   rounds every probability to 0).
2. No compute downstream: nodes from which no compute-heavy node (Conv/Gemm/MatMul above 1% of the model's
   MACs) can be reached run only cheap element-wise work on the way to the outputs. Quantizing them buys no
   speed and only adds error (a YOLO head's box decode: stride multiply, anchor add, distribution softmax).
3. Sensitivity: one run of the fully quantized model beside FP32 on a few calibration samples gives each
   quantized tensor's SQNR; a node whose output SQNR falls far below its inputs' injects the most noise.
   These drops are reported; the `max_nodes` worst nodes of low compute are candidates that the pipeline
   keeps in float only where that measurably improves the model's output (pipeline.verified).
Every decision carries its reason, which goes into the report and the QuantTable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from qcal.simulation.graph import GraphInfo

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class FloatDecision:
    node: str
    op_type: str
    rule: str          # "range_mismatch" | "no_compute_downstream" | "sensitivity" | "user" | "fp16"
    reason: str


def range_mismatch(info: GraphInfo, minmax: dict[str, tuple[float, float]], ratio: float) -> list[FloatDecision]:
    out = []
    for n in info.model.graph.node:
        if n.op_type != "Concat":
            continue
        spans = [(t, max(abs(minmax[t][0]), abs(minmax[t][1]))) for t in n.input if t in minmax]
        if len(spans) < 2:
            continue
        lo, hi = min(spans, key=lambda s: s[1]), max(spans, key=lambda s: s[1])
        if hi[1] > ratio * max(lo[1], 1e-12):
            out.append(FloatDecision(n.name, n.op_type, "range_mismatch",
                                     f"inputs span |x|<={hi[1]:.3g} ({hi[0]}) and |x|<={lo[1]:.3g} ({lo[0]}): "
                                     f"ratio {hi[1] / max(lo[1], 1e-12):.0f} > {ratio:g}, one scale would crush "
                                     "the small input"))
    return out


def no_compute_downstream(info: GraphInfo, min_share: float = 0.01) -> list[FloatDecision]:
    macs = {name: info.macs(n) for name, n in info.nodes.items()}
    total = max(sum(macs.values()), 1)
    heavy = {name for name, m in macs.items() if m >= min_share * total}
    # Walk backwards from heavy nodes: everything upstream of one can feed compute.
    feeds_compute: set[str] = set()
    queue = deque(heavy)
    while queue:
        name = queue.popleft()
        if name in feeds_compute:
            continue
        feeds_compute.add(name)
        for t in info.nodes[name].input:
            p = info.producer.get(t)
            if p is not None and p not in feeds_compute:
                queue.append(p)
    out = []
    for n in info.model.graph.node:
        if n.name not in feeds_compute and n.op_type not in ("Constant", "Shape"):
            out.append(FloatDecision(n.name, n.op_type, "no_compute_downstream",
                                     f"no Conv/Gemm/MatMul above {min_share:.0%} of the MACs is reachable from it: "
                                     "quantizing it saves no time and only adds error"))
    return out


def sensitivity_decisions(info: GraphInfo, tensor_sqnr: dict[str, float], max_nodes: int, min_drop_db: float,
                          exclude: set[str], max_share: float = 0.02) -> tuple[list[FloatDecision], dict[str, float]]:
    """Rank nodes by the SQNR their quantized output loses against their quantized inputs."""
    macs = {name: info.macs(n) for name, n in info.nodes.items()}
    total = max(sum(macs.values()), 1)
    drops: dict[str, float] = {}
    for n in info.model.graph.node:
        if n.name in exclude or not n.output or n.output[0] not in tensor_sqnr:
            continue
        ins = [tensor_sqnr[t] for t in n.input if t in tensor_sqnr]
        if not ins:
            continue
        drops[n.name] = min(ins) - tensor_sqnr[n.output[0]]
    ranked = sorted(drops.items(), key=lambda kv: -kv[1])
    chosen: list[FloatDecision] = []
    for name, drop in ranked:
        if len(chosen) >= max_nodes or drop < min_drop_db:
            break
        if macs[name] > max_share * total:
            continue  # too much compute to give up for one node's noise
        chosen.append(FloatDecision(name, info.nodes[name].op_type, "sensitivity",
                                    f"quantizing it loses {drop:.1f} dB SQNR against its inputs "
                                    "(measured on the calibration set)"))
    return chosen, drops
