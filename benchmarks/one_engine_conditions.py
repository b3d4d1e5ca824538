"""One engine, robustness half (issue 21): is any QRID condition worse after the one-engine change than before,
beyond its interval? robustness_peers.py's evaluation frames (vtest 480-799, every 8th: 40 frames; --every 2: 160),
each degraded by every QRID condition (seed = frame index, as qcal.robustness does); fidelity = mAP50-95 of each
INT8 model against FP32's own detections on the same degraded frame; after - before with a paired bootstrap 95%
interval over the frames. Models: the before/after folders benchmarks/one_engine.py reads (plain/ and robust/).

    .venv/bin/python benchmarks/one_engine_conditions.py --before /tmp/before --after /tmp/after
    -> benchmarks/results/one_engine_conditions.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.one_engine import fidelity, int8_dets, paired_interval  # noqa: E402
from benchmarks.spine import checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--every", type=int, default=8)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--recipes", default="plain,robust")
    ap.add_argument("--conditions", default="clean,qrid", help="clean and/or QRID condition names, or qrid")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "one_engine_conditions")
    a = ap.parse_args()
    from benchmarks.provenance import provenance
    from benchmarks.robustness_peers import held_out
    from qcal.bench.spec import parse_conditions
    from qcal.eval.evaluate import detect_all
    from qcal.models.yolo import YoloAdapter

    adapter = YoloAdapter.load(checkpoint(), trust_checkpoint=True)
    samples = held_out(a.every)
    rows: list[dict[str, Any]] = []
    for cond in ([None] if "clean" in a.conditions.split(",") else []) + [
            c for c in parse_conditions(a.conditions) if c is not None]:
        name = "clean" if cond is None else cond.name
        images = [s.image if cond is None else cond(s.image, seed=i) for i, s in enumerate(samples)]
        fp32 = detect_all(adapter, a.after / "plain" / "model.fp32.onnx", images, 2, False, "fp32")
        for recipe in a.recipes.split(","):
            dets = {k: int8_dets(adapter, getattr(a, k) / recipe, images) for k in ("before", "after")}
            row = {"condition": name, "recipe": recipe,
                   **{k: fidelity(adapter, d, images, fp32) for k, d in dets.items()},
                   "after_minus_before_95ci": paired_interval(adapter, dets["before"], dets["after"], images, fp32,
                                                              a.reps)}
            row["worse_beyond_interval"] = row["after_minus_before_95ci"][1] < 0
            rows.append(row)
            print(json.dumps(row), flush=True)
    res = {"rows": rows, "frames": len(samples),
           "command": " ".join(["benchmarks/one_engine_conditions.py", *sys.argv[1:]]), **provenance()}
    md = ["# One engine: each QRID condition before vs after (issue 21)", "",
          f"`{res['command']}` at {res['git_commit'][:12]}; {len(samples)} frames (vtest 480-799); CPU flags "
          f"{res['machine']['flags']}.", "", "| condition | recipe | before | after | after - before 95% CI |",
          "|---|---|---|---|---|"]
    md += [f"| {r['condition']} | {r['recipe']} | {r['before']:.4f} | {r['after']:.4f} | "
           f"[{r['after_minus_before_95ci'][0]:+.4f}, {r['after_minus_before_95ci'][1]:+.4f}]"
           f"{' (worse)' if r['worse_beyond_interval'] else ''} |" for r in rows]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    a.out.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
