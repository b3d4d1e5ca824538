"""What the ort-cpu export's shared Concat ranges (exporters.share) are worth, alone.

Quantizes the fall-detection YOLOv8s three times with the peers benchmark's calibration frames and the default
config, changing only `share_concat_ranges`: "off" (every tensor keeps its calibrated range), "union" (one range
per Concat group: the union of the members') and "concat_output" (the default: the group's Concat outputs' range).
Reports, per setting: how many Concat inputs ONNX Runtime can copy (scale and zero point equal to the output's),
output SQNR against FP32 on validation frames (vtest 324-468, every 9th: neither calibration nor the peers'
evaluation), the kernel time ONNX Runtime's profiler gives QLinearConcat, and latency with ORT MinMax's model in
the same run (models take turns in blocks of 10 runs).

    .venv/bin/python benchmarks/robustness_peers.py                 # first: ORT MinMax's model in its work folder
    .venv/bin/python benchmarks/concat_share.py --repeats 5         # -> benchmarks/results/concat_share.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.robustness_peers import CALIB  # noqa: E402
from benchmarks.spine import checkpoint, vtest  # noqa: E402
from exporters.quant_table import atomic_write_text  # noqa: E402
from exporters.share import copyable_concat_inputs  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "concat_share"
RULES = ("off", "union", "concat_output")


def concat_kernel_ms(path: Path, feeds: dict[str, np.ndarray], runs: int, threads: int, tmp: Path) -> float:
    """Mean ms per run ONNX Runtime's profiler gives QLinearConcat nodes (after 3 unprofiled-count warm-ups)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / f"prof_{path.stem}")
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(3 + runs):
        s.run(None, feeds)
    events = json.loads(Path(s.end_profiling()).read_text())
    durs = [e["dur"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
            and e.get("args", {}).get("op_name") == "QLinearConcat"]
    return float(sum(durs[len(durs) * 3 // (3 + runs):])) / 1000.0 / runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/qcal-robustness-peers", help="the peers benchmark's work folder")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5, help="latency rounds (median of their medians)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import onnxruntime as ort

    import calib_sets
    import qcal
    from benchmarks.provenance import provenance
    from qcal.calibration.pipeline import output_sqnr
    from qcal.eval.latency import measure_latencies
    from qcal.models.yolo import YoloAdapter

    work = Path(args.work)
    adapter = YoloAdapter(None, "peer")
    frames = calib_sets.Source.video(vtest(), start=324, stop=477, every=9).resized(640)
    feeds = [adapter.prepare(s.image).feeds for s in frames]
    res: dict[str, Any] = {"calibration": CALIB, "frames": len(feeds), "per_rule": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        models: dict[str, Path] = {}
        for rule in RULES:
            cfg = qcal.QuantConfig(calib_size=64, share_concat_ranges=rule)
            paths = qcal.quantize(checkpoint(), CALIB, config=cfg, trust_checkpoint=True,
                                  progress=False).export(tmp / rule)
            fp32, models[rule] = paths["fp32"], paths["int8"]
            flags = [f for c in copyable_concat_inputs(onnx.load(str(models[rule]))) for f in c]
            same, total = sum(flags), len(flags)
            res["per_rule"][rule] = {"copyable_concat_inputs": f"{same}/{total}",
                                     "output_sqnr_db": round(output_sqnr(fp32, models[rule], feeds, args.threads), 2),
                                     "qlinearconcat_kernel_ms": round(concat_kernel_ms(
                                         models[rule], feeds[0], args.runs, args.threads, tmp), 2)}
        models["ort_minmax"] = work / "ort_minmax.onnx"
        ort.set_default_logger_severity(3)
        rounds = [measure_latencies({k: str(v) for k, v in models.items()}, feeds[0], threads=args.threads,
                                    warmup=5, runs=args.runs) for _ in range(args.repeats)]
    res["latency_ms"] = {k: round(float(np.median([r[k].median_ms for r in rounds])), 2) for k in models}
    res["latency_repeats_ms"] = {k: [round(r[k].median_ms, 2) for r in rounds] for k in models}
    res["x_off"] = {k: round(v / res["latency_ms"]["off"], 3) for k, v in res["latency_ms"].items()}
    res.update(runs=args.runs, repeats=args.repeats, threads=args.threads, **provenance(),
               command=".venv/bin/python benchmarks/concat_share.py " + " ".join(sys.argv[1:]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS.with_suffix(".json"), json.dumps(res, indent=1) + "\n")
    md = ["# Shared Concat ranges in the ort-cpu export, alone (fall-detection YOLOv8s, 640 px)", "",
          f"Command: `{res['command']}`; calibration `{CALIB}` (64 samples, default config); "
          f"SQNR on {len(feeds)} validation frames; "
          f"latency: ONNX Runtime CPU, {args.threads} threads, {args.repeats} rounds of {args.runs} runs", "",
          "| share_concat_ranges | copyable Concat inputs | output SQNR dB | QLinearConcat kernel ms | latency ms p50 | x off |"
          " per-round ms |", "|---|---|---|---|---|---|---|"]
    for k in models:
        p = res["per_rule"].get(k, {})
        md.append(f"| {k} | {p.get('copyable_concat_inputs', '')} | {p.get('output_sqnr_db', '')} | "
                  f"{p.get('qlinearconcat_kernel_ms', '')} | {res['latency_ms'][k]:.1f} | {res['x_off'][k]:.3f} | "
                  f"{res['latency_repeats_ms'][k]} |")
    md += ["", f"Machine: {res['machine']}", ""]
    atomic_write_text(RESULTS.with_suffix(".md"), "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
