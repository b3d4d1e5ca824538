"""One engine: the INT8 model qcal optimizes is exactly the model it ships (issue 21's bars).

Given the output folders of `qcal quantize` before and after (same command, same machine), on the fall-detection
YOLOv8s at 640:
  * weight_codes_equal / activation_params_equal: quant_table.json (+ .arrays.npz) vs the parameters read back from
    model.int8.onnx, bit for bit;
  * sim_vs_ort_code_agreement: the simulator (TorchRunner over the FP32 model + the loaded table) vs ONNX Runtime
    running model.int8.onnx with graph optimizations off: the fraction of identical integer codes over every
    QuantizeLinear output; sim_vs_ort_exact_max_rel_err: max |output difference| / output range;
    sim_vs_ort_code_agreement is op by op (each op reads ONNX Runtime's own inputs); *_free_running lets each
    runtime feed itself, where a code that one float rounding flips spreads through the layers that follow.
    control_sim_vs_sim_other_conv_*: the simulator against itself with torch's other conv algorithm (native
    instead of oneDNN): how far two implementations of the same arithmetic drift apart free-running;
  * sim_vs_ort_kernels_sqnr_db: simulator outputs vs ONNX Runtime's fused int8 kernels (default session);
  * fidelity_clean_{before,after}: mAP50-95 of each INT8 model against FP32's own detections on the
    robustness_peers evaluation frames (vtest 480-799, every 8th: 40 frames; --every 2: 160), clean, with a paired
    bootstrap 95% interval of after - before (frames resampled);
  * quantize seconds of both (wall time of the whole `qcal quantize` process, measured by the caller).

    .venv/bin/python benchmarks/one_engine.py --before /tmp/before --after /tmp/after   # see --help
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.spine import checkpoint  # noqa: E402


def code_agreement(folder: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    import onnx
    import onnxruntime as ort

    from exporters import QuantTable
    from exporters.qdq import Q_SUFFIX
    from qcal.simulation.graph import with_outputs
    from qcal.simulation.probe import channel_sqnr
    from qcal.simulation.sim import TorchRunner

    table = QuantTable.load(folder / "quant_table.json")
    fp32 = onnx.load(str(folder / "model.fp32.onnx"))
    int8 = onnx.load(str(folder / "model.int8.onnx"))
    sim = TorchRunner(fp32, table=table)
    qnames = [n.output[0] for n in sim.model.graph.node if n.op_type == "QuantizeLinear"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(with_outputs(int8, []).SerializeToString(), so, providers=["CPUExecutionProvider"])
    m = with_outputs(int8, [])
    for q in qnames:   # Q outputs are uint8/int8: declare them with their own type
        tq = table.tensors[q.removesuffix(Q_SUFFIX)]
        m.graph.output.append(onnx.helper.make_tensor_value_info(q, 2 if tq.dtype == "uint8" else 3, None))
    exact = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fused = ort.InferenceSession(int8.SerializeToString(), providers=["CPUExecutionProvider"])
    same = total = forced_same = 0
    rel, sq = [], []
    dq_names = [n.output[0] for n in sim.model.graph.node if n.op_type == "DequantizeLinear"
                and n.input[0] in set(qnames)]
    pre = {n.output[0]: n.input[0] for n in sim.model.graph.node if n.op_type == "QuantizeLinear"}
    outs = [o.name for o in int8.graph.output]
    import torch

    ctl_same = within1 = 0
    ctl_rel: list[float] = []
    med_rel: list[float] = []
    for f in feeds:
        got = sim.run_capture(f, qnames + outs)
        ref = exact.run(qnames + outs, f)
        # the control: the same simulator with another conv algorithm (torch's native conv instead of oneDNN) --
        # two implementations of the same Q/DQ arithmetic that differ only in float summation order
        with torch.backends.mkldnn.flags(enabled=False):
            other = sim.run_capture(f, qnames + outs)
        for name, r in zip(qnames, ref[: len(qnames)], strict=True):
            g = got[name].cpu().numpy()
            same += int(np.sum(g == r.astype(np.float32)))
            within1 += int(np.sum(np.abs(g - r.astype(np.float32)) <= 1))
            ctl_same += int(np.sum(g == other[name].cpu().numpy()))
            total += r.size
        for name, r in zip(outs, ref[len(qnames):], strict=True):
            span = max(float(r.max() - r.min()), 1e-12)
            ctl_rel.append(float(np.abs(got[name].cpu().numpy() - other[name].cpu().numpy()).max() / span))
            med_rel.append(float(np.median(np.abs(got[name].cpu().numpy() - r)) / span))
        # one op at a time: every node reads ONNX Runtime's own dequantized inputs; its output's codes compared
        m_all = with_outputs(m, dq_names + [pre[q] for q in qnames])
        allv = dict(zip(dq_names + [pre[q] for q in qnames], ort.InferenceSession(
            m_all.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
            dq_names + [pre[q] for q in qnames], f), strict=True))
        forced = sim.run_forced(f, {k: allv[k] for k in dq_names}, qnames)
        for name, r in zip(qnames, ref[: len(qnames)], strict=True):
            forced_same += int(np.sum(forced[name].cpu().numpy() == r.astype(np.float32)))
        for name, r in zip(outs, ref[len(qnames):], strict=True):
            g = got[name].cpu().numpy()
            rel.append(float(np.abs(g - r).max() / max(float(r.max() - r.min()), 1e-12)))
        sq.append(channel_sqnr(fused.run(None, f), [got[o].cpu().numpy() for o in outs]))
    return {"sim_vs_ort_code_agreement": forced_same / total, "sim_vs_ort_code_agreement_free_running": same / total,
            "sim_vs_ort_codes_within_1_free_running": within1 / total,
            "control_sim_vs_sim_other_conv_code_agreement_free_running": ctl_same / total,
            "quantized_values_compared": total,
            "sim_vs_ort_exact_max_rel_err": max(rel), "sim_vs_ort_exact_median_rel_err": float(np.median(med_rel)),
            "control_sim_vs_sim_other_conv_max_rel_err": max(ctl_rel),
            "sim_vs_ort_kernels_sqnr_db": float(np.mean(sq))}


def params_equal(folder: Path) -> dict[str, bool]:
    from exporters import QuantTable, read_quant_table
    from exporters.qdq import same_params

    table = QuantTable.load(folder / "quant_table.json")
    back = read_quant_table(folder / "model.int8.onnx")
    return {"weight_codes_equal": same_params(table, back, ("weight", "bias")),
            "activation_params_equal": same_params(table, back, ("activation",)),
            "weights_in_table": sum(t.kind == "weight" for t in table.tensors.values()),
            "activations_in_table": sum(t.kind == "activation" for t in table.tensors.values())}


def int8_dets(adapter: Any, folder: Path, images: list[np.ndarray]) -> list[Any]:
    from qcal.eval.evaluate import detect_all

    return detect_all(adapter, folder / "model.int8.onnx", images, 2, False, "int8")


def fidelity(adapter: Any, dets: list[Any], images: list[np.ndarray], fp32_dets: list[Any],
             frames: list[int] | None = None) -> float:
    """mAP50-95 of `dets` against FP32's own detections (pseudo labels), on `frames` (indices; default all)."""
    from qcal.eval.detection import coco_map, pseudo_labels

    idx = list(range(len(images))) if frames is None else frames
    return round(coco_map([pseudo_labels(fp32_dets[i]) for i in idx], [dets[i] for i in idx],
                          [images[i].shape[:2] for i in idx], len(adapter.class_names)).map50_95, 4)


def paired_interval(adapter: Any, before: list[Any], after: list[Any], images: list[np.ndarray],
                    fp32_dets: list[Any], reps: int = 200) -> list[float]:
    """95% interval of fidelity(after) - fidelity(before), frames resampled with replacement (paired)."""
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(reps):
        idx = [int(i) for i in rng.integers(0, len(images), len(images))]
        diffs.append(fidelity(adapter, after, images, fp32_dets, idx) - fidelity(adapter, before, images, fp32_dets, idx))
    return [round(float(np.percentile(diffs, 2.5)), 4), round(float(np.percentile(diffs, 97.5)), 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="folder with plain/ and robust/ qcal outputs + times.txt")
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--frames", type=int, default=4, help="frames for the simulator vs ORT comparison")
    ap.add_argument("--every", type=int, default=8, help="evaluation frames: vtest 480-799, every Nth (8: 40 frames)")
    ap.add_argument("--reps", type=int, default=200, help="bootstrap resamples of the fidelity difference")
    ap.add_argument("--note", default="", help="a remark stored with the results (e.g. a run that did not finish)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "one_engine")
    a = ap.parse_args()
    from benchmarks.provenance import provenance
    from benchmarks.robustness_peers import held_out
    from qcal.eval.evaluate import detect_all
    from qcal.models.yolo import YoloAdapter

    adapter = YoloAdapter.load(checkpoint(), trust_checkpoint=True)
    images = [s.image for s in held_out(a.every)]
    fp32_dets = detect_all(adapter, a.after / "plain" / "model.fp32.onnx", images, 2, False, "fp32")
    feeds = [adapter.prepare(img).feeds for img in images[: a.frames]]
    times = {k: {ln.split()[0]: float(ln.split()[1]) for ln in (a.__dict__[k] / "times.txt").read_text().splitlines()}
             for k in ("before", "after")}
    res: dict[str, Any] = {**params_equal(a.after / "plain"), **code_agreement(a.after / "plain", feeds),
                           "plain_quantize_s": round(times["after"]["plain"], 1),
                           "plain_quantize_s_before": round(times["before"]["plain"], 1),
                           "robust_recipe_quantize_s": times["after"].get("robust"),
                           "robust_recipe_quantize_s_before": times["before"].get("robust"),
                           "eval_frames": len(images), "sim_frames": len(feeds)}
    for recipe in ("plain", "robust"):
        dets = {k: int8_dets(adapter, a.__dict__[k] / recipe, images) for k in ("before", "after")
                if (a.__dict__[k] / recipe / "model.int8.onnx").is_file()}
        tag = "" if recipe == "plain" else "_robust"
        for k, d in dets.items():
            res[f"fidelity_clean{tag}_{k}"] = fidelity(adapter, d, images, fp32_dets)
        if len(dets) == 2 and a.reps > 0:
            res[f"fidelity_clean{tag}_after_minus_before_95ci"] = paired_interval(
                adapter, dets["before"], dets["after"], images, fp32_dets, a.reps)
    if a.note:
        res["note"] = a.note
    res["command"] = " ".join(["benchmarks/one_engine.py", *sys.argv[1:]])
    res["quantize_command"] = ("qcal quantize best.pt --calib 'bundled:vtest[0:320:5]' --calib-size 64 "
                               "--trust-checkpoint --no-progress -o plain; robust: --calib "
                               "benchmarks/recipes/vtest64-qrid.toml --config benchmarks/recipes/qcal-robust.toml; "
                               "before = the same at the parent commit of the one-engine change")
    res.update(provenance())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
