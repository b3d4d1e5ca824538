"""The bit-allocation verb: measure per-layer sensitivity and cost, solve the integer program, and say which
ONNX nodes stay float when the plan is exported.

Sensitivity is measured in torch simulation on the calibration set (task loss with labels, else the output's
relative error vs FP32), one layer at a time with every other layer at the base precision. Costs: size (weight
bits x params) and BOPs from the layer shapes; latency per layer and choice from ONNX Runtime's profiler on the
all-base QDQ model and the FP32 model (qcal.passes.latency). Float choices (fp16/fp32) stay float in the QDQ
ONNX: the plan lists their ONNX nodes, which QuantConfig.keep_float.nodes takes; "fp16" ones are also named in
keep_float.fp16_nodes, which the pipeline converts to float16 inside the QDQ graph (exporters.float16).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from qcal.config import KeepFloatConfig, QuantConfig
from qcal.placement.alloc import (
    Allocation,
    AllocationConfigError,
    Budget,
    LayerCost,
    allocate,
    candidates,
    check_choices,
    parse_choices,
)
from qcal.placement.alloc import refine as refine_plans
from qcal.quant.fakequant import Precision
from qcal.quant.qmodules import QuantModel, torch_layer_costs
from qcal.runtime.output import workdir


def onnx_nodes_of_layers(onnx_path: Path, qmodel: QuantModel) -> dict[str, str]:
    """torch layer name -> ONNX node name (Conv/Gemm/MatMul), matched by equal weight initializers."""
    m = onnx.load(str(onnx_path))
    inits = {i.name: i for i in m.graph.initializer}
    by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits:
            w = numpy_helper.to_array(inits[n.input[1]])
            by_shape.setdefault(tuple(w.shape), []).append((n.name, w))
    out: dict[str, str] = {}
    for name, lay in qmodel.layers.items():
        w = lay.weight.detach().numpy()
        cands = by_shape.get(tuple(w.shape), []) + by_shape.get(tuple(w.T.shape), []) if w.ndim == 2 else \
            by_shape.get(tuple(w.shape), [])
        for node, arr in cands:
            if arr.shape == w.shape and np.allclose(arr, w, atol=1e-6) or \
                    arr.shape == w.T.shape and np.allclose(arr, w.T, atol=1e-6):
                out[name] = node
                break
    return out


def float_nodes_config(cfg: QuantConfig, choices: dict[str, Precision],
                       nodes: dict[str, str]) -> tuple[QuantConfig, list[str]]:
    """cfg with the ONNX nodes of the float-choice layers kept float (keep_float.nodes), the fp16 ones also
    computed in float16 (keep_float.fp16_nodes); and the float nodes."""
    float_nodes = [nodes[n] for n, p in choices.items() if p.is_float and n in nodes]
    half = {nodes[n] for n, p in choices.items() if p is Precision.FP16 and n in nodes}
    kept = tuple(sorted(set(cfg.keep_float.nodes) | set(float_nodes)))
    fp16 = tuple(sorted(set(cfg.keep_float.fp16_nodes) | half))
    return cfg.replace(keep_float=KeepFloatConfig(**{**cfg.keep_float.__dict__, "nodes": kept,
                                                     "fp16_nodes": fp16})), float_nodes


def allocate_bits(model: Any, calib: Any = None, *, budget: Budget, choices: Sequence[str | Precision] = ("int8", "fp16"),
                  base: str | Precision | None = None, labels: Any = None, config: QuantConfig | None = None,
                  example_input: Any = None, trust_checkpoint: bool = False, latency_runs: int = 20,
                  threads: int = 1, measure_on: str = "torch", onnx_samples: int = 4, refine: int = 4,
                  progress: bool = True) -> Allocation:
    """Choose a precision per layer (Conv/Linear) minimising the summed measured sensitivity under `budget`.

    measure_on: "torch" (simulation on the whole calibration set; any choice, labels allowed) or "onnx" (the
    deployed QDQ model in ONNX Runtime, one layer kept float at a time, on the first `onnx_samples` calibration
    samples; int8/fp16/fp32 choices, output error vs FP32: qcal.passes.onnx_sensitivity).

    refine: when > 0, the `refine` best plans of the integer program and every uniform plan within the budget
    are each measured jointly (all layers at their choices at once, same loss as the sensitivities) and the one
    with the lowest measured loss is returned; measured["refinement"] lists them. Only with measure_on="torch"
    (the ONNX measurement keeps the integer program's optimum); 0: the optimum, unmeasured.

    The returned Allocation's `measured["float_nodes"]` are the ONNX nodes its float layers become, and
    `export_config` a QuantConfig keeping them float: `qcal.quantize(model, calib, config=plan.export_config)`.
    """
    import torch

    import calib_sets
    from qcal.errors import CalibrationError
    from qcal.models import load_model
    from qcal.passes.apply import calib_tensor
    from qcal.passes.sensitivity import joint_loss, measure

    cfg = config or QuantConfig()
    if measure_on not in ("torch", "onnx"):
        raise AllocationConfigError(f"measure_on={measure_on!r}: choose 'torch' or 'onnx'.")
    for name, value, lo, eg in (("refine", refine, 0, "4 (0: no refinement)"), ("threads", threads, 1, "1"),
                                ("latency_runs", latency_runs, 1, "20"), ("onnx_samples", onnx_samples, 1, "4")):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise AllocationConfigError(f"{name}={value!r}: must be an integer >= {lo}; give e.g. {name}={eg}.")
    if not isinstance(budget, Budget):
        raise AllocationConfigError(f"budget={budget!r}: give a qcal.placement.alloc.Budget, e.g. Budget(size=0.5).")
    deployable = measure_on == "onnx"   # the ONNX measurement runs int8 QDQ and float layers only
    opts = [Precision(c) for c in parse_choices(choices, deployable=deployable)] if isinstance(choices, str) \
        else check_choices(choices, deployable=deployable)
    if base is None:
        base_p = next((p for p in opts if not p.is_float), opts[0])
    else:
        base_p = check_choices([base], what="base")[0]
    if base_p not in opts:
        raise AllocationConfigError(f"base {base_p.value!r} must be one of the choices {[p.value for p in opts]}; "
                                    "add it to choices or drop base.")
    adapter: Any = load_model(model, trust_checkpoint=trust_checkpoint, imgsz=cfg.imgsz, example_input=example_input)
    try:
        cs = calib_sets.load(calib if calib is not None else "bundled:vtest")
    except calib_sets.CalibSetError as e:
        raise CalibrationError(str(e)) from e
    cs = cs.take(min(len(cs), cfg.calib_size))
    x = calib_tensor(adapter, (s.image for s in cs))
    module = adapter.float_module()
    bank: dict[Precision, QuantModel] = {}
    for p in opts:
        q = QuantModel(module, p, x[:1])
        q.calibrate(x)
        bank[p] = q
    y = torch.as_tensor(labels) if labels is not None else None
    fp = QuantModel(module, Precision.FP32, x[:1])
    fp.calibrate(x[:1])
    joint = joint_loss(bank, x, base_p, labels=y, fp_model=None if y is not None else fp) \
        if measure_on == "torch" else None
    sens = measure(bank, x, opts, base_p, loss=joint, progress=progress) if joint is not None else {}
    costs = torch_layer_costs(bank[base_p], x[:1])
    with workdir("alloc") as tmp:
        fp32_path = Path(tmp) / "model.fp32.onnx"
        refined = adapter.with_module(fp.float_module(), "alloc")
        refined.export_onnx(fp32_path, opset=cfg.opset)
        nodes = onnx_nodes_of_layers(fp32_path, fp)
        if measure_on == "onnx":
            from qcal.calibration.pipeline import run as run_pipeline
            from qcal.passes.onnx_sensitivity import onnx_sensitivity

            base_cfg = cfg.replace(keep_float=KeepFloatConfig(**{**cfg.keep_float.__dict__, "fp16_nodes": ()}))
            out = run_pipeline(refined, (s.image for s in cs), len(cs), base_cfg, Path(tmp), metadata={},
                               progress=progress, threads=threads)
            feeds = [refined.prepare(s.image).feeds for s in cs.take(min(len(cs), onnx_samples))]
            sens = onnx_sensitivity(out, nodes, feeds, opts, workdir=Path(tmp), threads=threads, progress=progress)
            for n in costs:   # layers with no ONNX node of their own (listed in unmatched_layers): nothing measured
                sens.setdefault(n, {p.value: 0.0 for p in opts})
        if budget.kind == "latency":
            from qcal.passes.latency import layer_latencies

            lat = layer_latencies(refined, cs, cfg, nodes, opts, runs=latency_runs, threads=threads,
                                  workdir=Path(tmp), progress=progress)
            costs = {n: LayerCost(c.params, c.macs, lat.get(n, {})) for n, c in costs.items()}
    if refine and joint is not None:
        plan = refine_plans(candidates(sens, costs, opts, budget, k=refine), joint)
    else:
        plan = allocate(sens, costs, opts, budget)
    plan.export_config, float_nodes = float_nodes_config(cfg, plan.choices, nodes)
    plan.measured["float_nodes"] = float_nodes
    plan.measured["fp16_nodes"] = list(plan.export_config.keep_float.fp16_nodes)
    plan.measured["layer_nodes"] = nodes
    plan.measured["sensitivity_measured_on"] = measure_on
    plan.measured["unmatched_layers"] = [n for n in plan.choices if n not in nodes]
    plan.measured["layer_costs"] = {n: {"params": c.params, "macs": c.macs, "latency_ms": dict(c.latency_ms)}
                                    for n, c in costs.items()}
    return plan
