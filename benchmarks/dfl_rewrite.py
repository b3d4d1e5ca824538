"""What the ort-cpu export's exact DFL rewrite (exporters.rewrite.softmax_weighted_sum) is worth, alone.

The fall-detection YOLOv8s's box decode runs Softmax over a non-last axis and a 1x1 Conv; qcal's ort-cpu export
rewrites it to Softmax over the last axis + MatMul. To separate that from calibration, this script applies the same
rewrite to the FP32 model and to ONNX Runtime's MinMax INT8 model (the peers benchmark's), checks the outputs are
unchanged on a real frame, and times all of them interleaved in one run beside qcal's INT8 model.

    .venv/bin/python benchmarks/robustness_peers.py       # first: builds the models in /tmp/qcal-robustness-peers
    .venv/bin/python benchmarks/dfl_rewrite.py --runs 40  # -> benchmarks/results/dfl_rewrite.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.spine import vtest  # noqa: E402
from exporters.quant_table import atomic_write_text  # noqa: E402
from exporters.rewrite import softmax_weighted_sum  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "dfl_rewrite"


def rewritten(src: Path, out: Path) -> list[str]:
    m = onnx.load(str(src))
    hit = softmax_weighted_sum(m)
    onnx.save(m, str(out))
    return hit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/qcal-robustness-peers", help="the peers benchmark's models")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import onnxruntime as ort

    import calib_sets
    from benchmarks.provenance import provenance
    from qcal.eval.latency import measure_latencies
    from qcal.models.yolo import YoloAdapter

    work = Path(args.work)
    base = {"fp32": work / "qcal" / "model.fp32.onnx", "ort_minmax": work / "ort_minmax.onnx"}
    frame = calib_sets.Source.video(vtest(), start=480, stop=481).resized(640)[0].image
    feeds = YoloAdapter(None, "peer").prepare(frame).feeds
    with tempfile.TemporaryDirectory() as d:
        models: dict[str, Path] = {}
        exact: dict[str, float] = {}
        for name, path in base.items():
            rw = Path(d) / f"{name}.rw.onnx"
            if not rewritten(path, rw):
                raise SystemExit(f"{path}: no DFL chain to rewrite")
            models[name], models[f"{name}+rewrite"] = path, rw
            a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
                    for p in (path, rw))
            exact[name] = float(np.abs(a - b).max())
        models["qcal_int8"] = work / "qcal" / "model.int8.onnx"
        lat = measure_latencies({k: str(v) for k, v in models.items()}, feeds, threads=args.threads, warmup=5,
                                runs=args.runs)
    med = {k: round(v.median_ms, 2) for k, v in lat.items()}
    res = {"latency_ms": med, "latency_p90_ms": {k: round(v.p90_ms, 2) for k, v in lat.items()},
           "x_fp32": {k: round(v / med["fp32"], 3) for k, v in med.items()},
           "rewrite_saves_ms": {k: round(med[k] - med[f"{k}+rewrite"], 2) for k in base},
           "max_abs_output_diff": exact, "runs": args.runs, "threads": args.threads,
           **provenance(),
           "command": f".venv/bin/python benchmarks/dfl_rewrite.py --runs {args.runs}"}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS.with_suffix(".json"), json.dumps(res, indent=1) + "\n")
    md = ["# The ort-cpu export's DFL rewrite, alone (fall-detection YOLOv8s, 640 px)", "",
          f"Command: `{res['command']}` (ONNX Runtime CPU, {args.threads} threads, {args.runs} interleaved runs)", "",
          "| model | latency ms p50 | p90 | x FP32 |", "|---|---|---|---|"]
    md += [f"| {k} | {v:.1f} | {res['latency_p90_ms'][k]:.1f} | {res['x_fp32'][k]:.3f} |" for k, v in med.items()]
    md += ["", f"Rewrite saves (ms): {res['rewrite_saves_ms']}; max |output difference| after the rewrite: {exact}",
           "", f"Machine: {res['machine']}", ""]
    atomic_write_text(RESULTS.with_suffix(".md"), "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
