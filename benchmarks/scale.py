"""Scale benchmark (issue 11, part 1): the same robustness sweep run serially and as Ray tasks on this machine.

Sweep: the fall-detection YOLOv8s, fp32 + 3 calibration recipes (int8-clean, int8-mixed = vtest-qrid, int8:qrid64)
x the QRID conditions (clean + 7) = 32 cells, on held-out bundled frames. Models are built once (serial run);
the cells are then deleted and recomputed by a local Ray (2 CPUs, 1 ORT thread per task), and the two reports
are compared except timing fields. Per-task overhead: no-op cells through the same Ray executor. From the measured
per-cell cost and overhead, the wall time on 8 and 64 nodes is PREDICTED (not measured; no cluster here).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/scale.py    # -> benchmarks/results/scale.{json,md}
    .venv/bin/python benchmarks/scale.py --timing-only                   # re-time cells reusing the built models
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CALIB = "calib_sets/recipes/vtest-qrid.toml"
PRECISIONS = "fp32,int8-clean,int8-mixed,int8:qrid64=benchmarks/recipes/vtest64-qrid.toml"
EVAL = "bundled:vtest[360:480:2]"
IMGSZ, CALIB_SIZE, NOOP_TASKS, CPUS_PER_NODE = 640, 32, 200, 2


def sweep(out: Path, executor: str, address: str | None = None) -> dict[str, Any]:
    import qcal
    from qcal.cli import demo_checkpoint

    return qcal.robustness(demo_checkpoint(), eval=EVAL, calib=str(ROOT / CALIB), conditions="qrid",
                           precisions=PRECISIONS, out=out, config=qcal.QuantConfig(imgsz=IMGSZ, calib_size=CALIB_SIZE),
                           trust_checkpoint=True, latency_runs=0, bootstrap=0, threads=1, progress=True,
                           executor=executor, address=address).to_dict()


def untimed(d: dict[str, Any]) -> str:
    d = {k: v for k, v in d.items() if k not in ("seconds", "latency_ms", "command")}
    d["precisions"] = [{k: v for k, v in p.items() if k != "quantize_seconds"} for p in d["precisions"]]
    return json.dumps(d, sort_keys=True)


def task_overhead_ms() -> float:
    """Wall time per no-op cell through RayExecutor on the running local Ray (driver + scheduling + transfer)."""
    from qcal.bench.executors import CellJob, RayExecutor

    jobs = [CellJob(f"k{i}", "noop", None, "") for i in range(NOOP_TASKS)]
    RayExecutor().run(_noop, jobs[:8], lambda j, d: None, progress=False)   # warm the worker pool
    t0 = time.perf_counter()
    RayExecutor().run(_noop, jobs, lambda j, d: None, progress=False)
    return (time.perf_counter() - t0) * 1000 / NOOP_TASKS


def _noop(job: Any) -> list[Any]:
    return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/qcal-scale", help="sweep folder (models and cells)")
    ap.add_argument("--timing-only", action="store_true", help="reuse the built models; re-time the cells")
    ap.add_argument("--stage", default="all", choices=["all", "ray2node"], help="ray2node: only the two-node "
                    "loopback cluster run (needs --work from an earlier full run: its serial/ models and report)")
    args = ap.parse_args()
    if args.stage == "ray2node":
        from ray2node import stage_ray2node

        stage_ray2node(Path(args.work), sweep, untimed)
        return
    import ray


    work = Path(args.work)
    res: dict[str, Any] = {"command": "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/scale.py "
                           + " ".join(sys.argv[1:]), "noisy_machine": True}
    t0 = time.perf_counter()
    first = sweep(work / "serial", "serial")               # builds the models (skipped when already built)
    build_s = round(time.perf_counter() - t0, 2)
    shutil.rmtree(work / "serial" / "cells")
    serial = sweep(work / "serial", "serial")               # cells only, models reused
    (work / "ray").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "ray", ignore_errors=True)
    shutil.copytree(work / "serial" / "models", work / "ray" / "models")   # same models, no cells
    t0 = time.perf_counter()
    ray_run = sweep(work / "ray", "ray")                    # starts and stops a local Ray (all cores)
    ray_total = round(time.perf_counter() - t0, 2)
    ray_report = json.loads((work / "ray" / "report.json").read_text())
    same = untimed(ray_report).replace(str(work / "ray"), "OUT") == untimed(serial).replace(str(work / "serial"),
                                                                                            "OUT")
    t0 = time.perf_counter()
    rerun = sweep(work / "ray", "ray")                      # every cell cached: Ray is not even started
    rerun_s = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    ray.init(num_cpus=CPUS_PER_NODE, include_dashboard=False, log_to_driver=False)
    ray_start_s = round(time.perf_counter() - t0, 2)
    overhead = task_overhead_ms()
    ray.shutdown()

    n = sum(len(row) for row in serial["cells"].values())
    per_cell = serial["seconds"]["cells"] / n
    # What the local Ray run cost beyond its cells' compute: Ray start, worker processes importing qcal and
    # receiving the adapter and images, per-task scheduling. Measured here; assumed the same on a cluster.
    ray_local = ray_run["seconds"]["cells"]
    fixed = max(ray_local - math.ceil(n / CPUS_PER_NODE) * per_cell - n * overhead / 1000, 0.0)
    predicted = {str(nodes): round(fixed + math.ceil(n / (nodes * CPUS_PER_NODE)) * per_cell
                                   + n * overhead / 1000, 2) for nodes in (8, 64)}
    res.update({
        "sweep_cells": n, "images_per_cell": serial["eval"]["images"], "imgsz": IMGSZ,
        "precisions": [p["name"] for p in serial["precisions"]], "conditions": [c["name"] for c in serial["conditions"]],
        "models_build_s": build_s if not args.timing_only else None,
        "wall_s": {"serial": serial["seconds"]["cells"], "ray_local": ray_run["seconds"]["cells"],
                   "ray_2node": None},   # benchmarks/ray2node.py (--stage ray2node) fills it
        "ray_local_includes_ray_start": True, "ray_start_s": ray_start_s, "ray_local_total_s": ray_total,
        "rerun_all_cached_s": rerun_s, "rerun_cells_s": rerun["seconds"]["cells"],
        "per_cell_s": round(per_cell, 3), "ray_fixed_s": round(fixed, 2), "task_overhead_ms": round(overhead, 2),
        "predicted_wall_s": predicted,
        "prediction_model": "ray_fixed_s + ceil(cells / (nodes x 2 CPUs)) x per_cell_s + cells x task_overhead, "
                            "ray_fixed_s = the local Ray run's wall minus its cells' compute (Ray start, worker "
                            "imports, object transfer); a PREDICTION from this machine's measurements, not a "
                            "measurement",
        "ray_report_equals_serial": same,
        "fidelity_map50_95": {p: {c: v["map50_95"] for c, v in row.items()} for p, row in serial["cells"].items()},
        "machine": serial["machine"], "first_run_seconds": first["seconds"],
    })
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    # part 2's results (out-of-core LLM: benchmarks/ooc_llm.py; two-node Ray: --stage ray2node) are kept
    old = json.loads((out / "scale.json").read_text()) if (out / "scale.json").is_file() else {}
    res.update({k: v for k, v in old.items() if k.startswith(("ooc_", "ray_2node"))})
    res["wall_s"]["ray_2node"] = old.get("wall_s", {}).get("ray_2node")
    kept = (out / "scale.md").read_text().split("\n## ", 1)[1:] if (out / "scale.md").is_file() else []
    from benchmarks.provenance import git_commit
    from exporters.quant_table import atomic_write_text

    res["git_commit"] = git_commit()
    atomic_write_text(out / "scale.json", json.dumps(res, indent=1))
    atomic_write_text(out / "scale.md", markdown(res) + "".join("\n## " + k for k in kept))
    print(markdown(res))


def markdown(r: dict[str, Any]) -> str:
    w = r["wall_s"]
    lines = [
        "# Scale: robustness sweep, serial vs Ray (issue 11, part 1)", "",
        f"Command: `{r['command']}`  ", f"Machine: {r['machine'].get('cpu_model', '')} flags "
        f"{','.join(r['machine'].get('flags', []))}; shared with other jobs (noisy_machine: timings indicative).", "",
        f"Sweep: {len(r['precisions'])} precisions ({', '.join(r['precisions'])}) x {len(r['conditions'])} "
        f"conditions = {r['sweep_cells']} cells, {r['images_per_cell']} frames each at {r['imgsz']} px, "
        "1 ONNX Runtime thread per cell.", "",
        "| run | cells wall (s) |", "|---|---:|",
        f"| serial (in-process) | {w['serial']} |",
        f"| Ray local, 2 CPUs (includes starting Ray, {r['ray_start_s']} s) | {w['ray_local']} |",
        f"| rerun, every cell cached | {r['rerun_cells_s']} |",
        f"| Ray 2-node loopback, 1 CPU each (separate run, see below) | {w.get('ray_2node')} |", "",
        f"Per cell (serial): {r['per_cell_s']} s. Ray per-task overhead (no-op cells): {r['task_overhead_ms']} ms. "
        f"Ray fixed cost in the local run (start, worker imports, transfers): {r['ray_fixed_s']} s.  ",
        f"Ray report equals serial report except timing fields: {r['ray_report_equals_serial']}.", "",
        f"PREDICTED (not measured) wall for this sweep: 8 nodes {r['predicted_wall_s']['8']} s, 64 nodes "
        f"{r['predicted_wall_s']['64']} s; model: {r['prediction_model']}.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
