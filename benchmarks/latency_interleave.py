"""Why qcal.eval.latency times models in blocks, not run by run: the same models, three ways, in one process.

- "run by run": every model runs once in turn (qcal's method before stop 19), ONNX Runtime's default thread
  spinning on;
- "run by run, no spinning": the same with `session.intra_op.allow_spinning = 0`;
- "blocks": `measure_latencies` (turns of 10 runs, each after two untimed runs), spinning on.

After a run ONNX Runtime's worker threads keep spinning for a while. With as many cores as threads, the previous
model's pool then competes for the cores of the model being timed.

    .venv/bin/python benchmarks/robustness_peers.py        # first: the models in /tmp/qcal-robustness-peers
    .venv/bin/python benchmarks/latency_interleave.py      # -> benchmarks/results/latency_interleave.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from exporters.quant_table import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "latency_interleave"
MODELS = {"qcal_int8": "qcal/model.int8.onnx", "qcal_int8_robust": "qcal_robust/model.int8.onnx",
          "ort_minmax": "ort_minmax.onnx"}


def run_by_run(paths: dict[str, Path], feeds: dict[str, np.ndarray], threads: int, runs: int,
               spinning: bool) -> dict[str, float]:
    from qcal.eval.latency import timing_session

    sessions = {name: timing_session(p, threads, spinning=spinning) for name, p in paths.items()}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for name, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds)
            times[name].append((time.perf_counter() - t) * 1e3)
    return {k: round(float(np.median(v)), 2) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/qcal-robustness-peers", help="the peers benchmark's models")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from benchmarks.provenance import provenance
    from qcal.eval.latency import measure_latencies

    paths = {k: Path(args.work) / v for k, v in MODELS.items()}
    feeds = {"images": np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)}
    res = {"latency_median_ms": {
        "run by run": run_by_run(paths, feeds, args.threads, args.runs, spinning=True),
        "run by run, no spinning": run_by_run(paths, feeds, args.threads, args.runs, spinning=False),
        "blocks": {k: round(v.median_ms, 2) for k, v in measure_latencies(
            {k: str(v) for k, v in paths.items()}, feeds, threads=args.threads, warmup=3, runs=args.runs).items()}},
        "runs": args.runs, "threads": args.threads, **provenance(),
        "command": ".venv/bin/python benchmarks/latency_interleave.py " + " ".join(sys.argv[1:])}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS.with_suffix(".json"), json.dumps(res, indent=1) + "\n")
    md = ["# Timing several ONNX Runtime models in one process: run by run vs blocks", "",
          f"Command: `{res['command']}` ({args.threads} threads, {args.runs} timed runs per model and method)", "",
          "| method | " + " | ".join(MODELS) + " |", "|---|" + "---|" * len(MODELS)]
    md += [f"| {m} | " + " | ".join(f"{row[k]:.1f} ms" for k in MODELS) + " |"
           for m, row in res["latency_median_ms"].items()]
    md += ["", f"Machine: {res['machine']}", ""]
    atomic_write_text(RESULTS.with_suffix(".md"), "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
