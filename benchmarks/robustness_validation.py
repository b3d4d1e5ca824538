"""Validation frames for choosing a robust recipe without touching the evaluation frames of robustness_peers.py.

The peers benchmark calibrates on vtest.avi frames 0-319 and evaluates on frames 480-799. The frames between are
used by neither, so a recipe setting can be chosen on them without tuning on the evaluation frames: the blend
group count of `benchmarks/recipes/qcal-robust.toml` (stop 18), the rule of `share_concat_ranges` (stop 19; the
committed results). Two measurements, both against the FP32 model:

- output SQNR (mean over output channels, as the product's blend search scores it; plus each channel and the mean
  absolute class-score error on anchors where either model scores > 0.1) on 17 bundled frames (vtest 324-468, every
  9th) through the QRID degradation-aware mix (half clean, seed 1): `VALIDATION_MIX` below;
- fidelity mAP50-95 (against FP32's detections on the same degraded frame, `qcal.robustness`) on vtest.avi frames
  321-479, every 3rd (53 frames), under the QRID conditions.

Run robustness_peers.py first (its work folder holds the peers' models). The stop-19 variants are `qcal quantize`
runs into that folder, the plain recipe (`--calib "bundled:vtest[0:320:5]" --calib-size 64`) or the robust one
(`--calib benchmarks/recipes/vtest64-qrid.toml --config benchmarks/recipes/qcal-robust.toml`), each with
`share_concat_ranges` set to "off", "union" or "concat_output" in its config.

    .venv/bin/python benchmarks/robustness_validation.py qcal_int8=qcal robust_g8=qcal_robust_g8 robust_g16=qcal_robust
    # NAME=DIR (DIR/model.int8.onnx in the work folder) or NAME=path.onnx; peers are always included
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
from benchmarks.robustness_peers import PEERS  # noqa: E402
from benchmarks.spine import checkpoint, vtest  # noqa: E402

VALIDATION_MIX = 'name = "validation-qrid"\nsource = "bundled:vtest[324:477:9]"\nimgsz = 640\n\n' \
                 '[mix]\npreset = "qrid"\nclean = 0.5\nseed = 1\n'
FRAMES = (321, 480, 3)   # vtest.avi start, stop, every


def model_path(work: Path, spec: str) -> Path:
    p = Path(spec)
    if p.suffix == ".onnx":
        return p
    if (work / spec).is_dir():
        return work / spec / "model.int8.onnx"
    return work / f"{spec}.onnx"


def output_errors(fp32: Path, models: dict[str, Path], feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Per model: SQNR per output channel (YOLO: x, y, w, h, class scores), their mean, and the class-score MAE on
    anchors where FP32 or the model scores above 0.1 (the anchors detections are made from)."""
    from qcal.calibration.calibrate import make_session
    from qcal.quant.qparams import sqnr_db

    ref = [make_session(fp32.read_bytes(), 2).run(None, f)[0] for f in feeds]
    out: dict[str, Any] = {}
    for name, path in models.items():
        s = make_session(path.read_bytes(), 2)
        got = [s.run(None, f)[0] for f in feeds]
        per = [float(np.mean([sqnr_db(r[:, c], g[:, c]) for g, r in zip(got, ref, strict=True)]))
               for c in range(ref[0].shape[1])]
        mae = []
        for g, r in zip(got, ref, strict=True):
            m = (r[0, 4:] > 0.1) | (g[0, 4:] > 0.1)
            mae.append(float(np.abs(g[0, 4:][m] - r[0, 4:][m]).mean()) if m.any() else 0.0)
        out[name] = {"output_sqnr_db": round(float(np.mean(per)), 3), "channel_sqnr_db": [round(x, 2) for x in per],
                     "class_mae_above_0.1": round(float(np.mean(mae)), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="NAME=DIR or NAME=path.onnx (qcal models to compare)")
    ap.add_argument("--work", default="/tmp/qcal-robustness-peers", help="robustness_peers.py's work folder")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "robustness_validation"))
    ap.add_argument("--no-peers", action="store_true", help="compare only the variants given (no peers' models "
                    "needed; no margin against the best peer)")
    ap.add_argument("--fp32", default=None, help="the FP32 ONNX the variants were made from (default: the work "
                    "folder's qcal/model.fp32.onnx)")
    args = ap.parse_args()
    import calib_sets
    import qcal
    from benchmarks.provenance import provenance
    from calib_sets.recipes import Recipe
    from qcal.models import load_model

    work = Path(args.work)
    extra = {k: model_path(work, v) for k, v in (a.split("=", 1) for a in args.variants)}
    peers = [] if args.no_peers else list(PEERS)
    models = {**{p: model_path(work, p) for p in peers}, **extra}
    missing = [str(p) for p in models.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"missing models {missing}: run benchmarks/robustness_peers.py first (or fix the paths)")
    fp32 = Path(args.fp32) if args.fp32 else work / "qcal" / "model.fp32.onnx"
    adapter = load_model(checkpoint(), trust_checkpoint=True, imgsz=640)
    mix = Recipe.from_toml(VALIDATION_MIX).build()
    errors = output_errors(fp32, models, [adapter.prepare(s.image).feeds for s in mix])

    start, stop, every = FRAMES
    held = calib_sets.Source.video(vtest(), start=start, stop=stop, every=every)
    precs = ",".join(["fp32", *(f"onnx:{k}={v}" for k, v in models.items())])
    rep = qcal.robustness(checkpoint(), eval=held, conditions="qrid", precisions=precs, out=work / "validation",
                          trust_checkpoint=True, latency_runs=1, bootstrap=0, command="robustness_validation.py")
    cells, conds = rep.data["cells"], [c["name"] for c in rep.data["conditions"]]
    fid = {v: {c: round(float(cells[v][c]["agreement_map50_95"]), 4) for c in conds} for v in models}
    best = {c: max(fid[p][c] for p in peers) for c in conds} if peers else {}
    margin = {v: {c: round(fid[v][c] - best[c], 4) for c in conds} for v in extra} if peers else {}
    res = {"command": " ".join([".venv/bin/python benchmarks/robustness_validation.py", *sys.argv[1:]]),
           "sqnr_frames": {"recipe": VALIDATION_MIX, "conditions": mix.conditions()},
           "fidelity_frames": {"video": "vtest.avi", "start": start, "stop": stop, "every": every, "n": len(held)},
           "conditions": conds, "output_errors": errors, "fidelity_map50_95": fid, "margin_vs_best_peer": margin,
           **provenance()}
    write(res, Path(args.results))


def write(res: dict[str, Any], results: Path) -> None:
    from exporters.quant_table import atomic_write_text

    conds = res["conditions"]
    md = ["# Validation frames (neither calibration nor evaluation of robustness_peers.py)", "",
          f"Command: `{res['command']}`", "",
          f"## Output error on {len(res['sqnr_frames']['conditions'])} QRID-mixed frames (vtest 324-468 every 9th)", "",
          "| variant | output SQNR dB (mean of channels) | x | y | w | h | class scores | class MAE (> 0.1) |",
          "|---|---|---|---|---|---|---|---|"]
    for v, e in res["output_errors"].items():
        ch = e["channel_sqnr_db"]
        md.append(f"| {v} | {e['output_sqnr_db']:.2f} | " + " | ".join(f"{x:.2f}" for x in ch[:4])
                  + f" | {' / '.join(f'{x:.2f}' for x in ch[4:])} | {e['class_mae_above_0.1']:.4f} |")
    md += ["", f"## Fidelity mAP50-95 vs FP32, vtest.avi frames 321-479 every 3rd ({res['fidelity_frames']['n']} "
           "frames), QRID conditions", "", "| variant | " + " | ".join(conds) + " | min margin vs best peer |",
           "|---|" + "---|" * (len(conds) + 1)]
    for v, row in res["fidelity_map50_95"].items():
        m = res["margin_vs_best_peer"].get(v)
        md.append(f"| {v} | " + " | ".join(f"{row[c]:.4f}" for c in conds)
                  + f" | {'' if m is None else format(min(m.values()), '+.4f')} |")
    md += ["", f"Machine: {res['machine']}", ""]
    atomic_write_text(results.with_suffix(".json"), json.dumps(res, indent=1) + "\n")
    atomic_write_text(results.with_suffix(".md"), "\n".join(md))


if __name__ == "__main__":
    main()
