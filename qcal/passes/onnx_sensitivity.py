"""Per-layer sensitivity measured on the deployed ONNX model itself, one layer at a time.

The torch sensitivities (qcal.passes.sensitivity) simulate zero-point-0 activations and min/max weight scales;
ONNX Runtime's quantizer writes asymmetric uint8 activations from the observer's ranges and 7-bit weights on
CPUs without VNNI, and on the fall-detection YOLOv8s the torch numbers did not predict the deployed model. Here
each layer's float choice is measured where it will run: the all-INT8 QDQ model of the pipeline, re-exported
with that one layer's node kept float (and converted to float16 for "fp16"), run by ONNX Runtime on a few
calibration samples. The loss is the same as the torch one without labels: the output's relative squared error
against FP32 per output channel (axis 1), averaged over channels. Sensitivity = loss(layer at choice, others as
in the INT8 model) - loss(INT8 model); it can be negative (keeping a layer float usually helps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from exporters import export_qdq
from exporters.float16 import convert_nodes_fp16
from qcal.calibration.calibrate import make_session
from qcal.calibration.pipeline import PipelineOutput, build_table
from qcal.placement.alloc import AllocationError
from qcal.placement.keep_float import FloatDecision
from qcal.quant.precision import Precision
from qcal.simulation.graph import analyse


def reference_outputs(fp32_path: Path, feeds: Sequence[Mapping[str, np.ndarray]], threads: int = 1) -> list[np.ndarray]:
    """The FP32 model's first output per feed (float64): computed once, compared against every probe."""
    fs = make_session(Path(fp32_path).read_bytes(), threads)
    return [np.asarray(fs.run(None, dict(feed))[0], np.float64) for feed in feeds]


def relative_error(refs: Sequence[np.ndarray], model_path: Path, feeds: Sequence[Mapping[str, np.ndarray]],
                   threads: int = 1) -> float:
    """Relative squared error of the model's first output vs `refs` per channel (axis 1), averaged over channels."""
    ms = make_session(Path(model_path).read_bytes(), threads)
    noise: np.ndarray | float = 0.0
    signal: np.ndarray | float = 0.0
    for ref, feed in zip(refs, feeds, strict=True):
        got = np.asarray(ms.run(None, dict(feed))[0], np.float64)
        dims = tuple(d for d in range(ref.ndim) if d != 1)
        noise = noise + ((got - ref) ** 2).sum(axis=dims)
        signal = signal + (ref**2).sum(axis=dims)
    return float(np.mean(np.asarray(noise) / np.maximum(np.asarray(signal), 1e-30)))


def output_error(fp32_path: Path, model_path: Path, feeds: Sequence[Mapping[str, np.ndarray]], threads: int = 1) -> float:
    """Relative squared error of the model's first output vs FP32 per channel (axis 1), averaged over channels."""
    return relative_error(reference_outputs(fp32_path, feeds, threads), model_path, feeds, threads)


def onnx_sensitivity(out: PipelineOutput, layer_nodes: Mapping[str, str], feeds: Sequence[Mapping[str, np.ndarray]],
                     choices: Sequence[Precision], *, workdir: Path, threads: int = 1,
                     progress: bool = True) -> dict[str, dict[str, float]]:
    """layer -> choice -> output-error change vs the pipeline's INT8 model (int8 is 0: that model itself).

    out: the pipeline's result (FP32 path, calibration statistics, profile, its own float decisions).
    layer_nodes: torch layer name -> ONNX node name (qcal.passes.allocate.onnx_nodes_of_layers)."""
    unsupported = [p.value for p in choices if p not in (Precision.INT8, Precision.FP16, Precision.FP32)]
    if unsupported:
        raise AllocationError(f"ONNX sensitivity measures what ONNX Runtime deploys (int8, fp16, fp32); "
                              f"{unsupported} only exist in torch simulation: measure them in torch.")
    info = analyse(onnx.load(str(out.fp32_path)))
    ops = {n.name: n.op_type for n in info.model.graph.node}
    meta = dict(out.table.meta)
    refs = reference_outputs(out.fp32_path, feeds, threads)   # FP32 runs once, not once per probe
    base = relative_error(refs, out.int8_path, feeds, threads)
    probe = Path(workdir) / "sensitivity.probe.onnx"
    result: dict[str, dict[str, float]] = {}
    for layer, node in tqdm(layer_nodes.items(), desc="onnx sensitivity", disable=not progress, leave=False):
        result[layer] = {}
        for p in choices:
            if p is Precision.INT8:
                result[layer][p.value] = 0.0
                continue
            kept = [*out.decisions, FloatDecision(node, ops.get(node, "?"), "user", "sensitivity probe")]
            export_qdq(out.fp32_path, build_table(info, out.calibration, out.profile, kept, meta), out.profile, probe)
            if p is Precision.FP16:
                convert_nodes_fp16(probe, [node])
            result[layer][p.value] = relative_error(refs, probe, feeds, threads) - base
    probe.unlink(missing_ok=True)
    return result
