"""qcal INT8 vs peer INT8 tools on the fall-detection YOLOv8s at 640, under clean and QRID-degraded inputs.

Every tool quantizes from the same 22 calibration frames (`bundled:vtest[0:320:5]`: the bundled set keeps every 3rd
frame, so frames 0, 15, ..., 315; letterboxed by the same preprocessing) in its own subprocess (quantize seconds and peak RSS from os.wait4). Evaluation: vtest.avi
frames 480-799, every 8th by default (40 frames no tool calibrated on; `--eval-every 2`: 160 frames), under the QRID conditions, through `qcal.robustness`
(the product's matrix), so every variant is scored by the same code. Fidelity per condition = mAP50-95 against
FP32's own detections on the same degraded frame (`agreement_map50_95` in the report).

    .venv/bin/pip install "nncf>=2.12"                     # peer only; not a qcal dependency
    .venv/bin/python benchmarks/robustness_peers.py        # writes benchmarks/results/robustness_peers.{json,md}
    .venv/bin/python benchmarks/robustness_peers.py --latency-only    # re-time saved models on a quiet machine
vtest.avi: `apt-get download opencv-doc && dpkg -x opencv-doc_*.deb /tmp/ocvdoc` (or set VTEST=path).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.spine import checkpoint, head_decode_nodes, ort_peer, vtest  # noqa: E402

CALIB = "bundled:vtest[0:320:5]"
MIXED = ROOT / "benchmarks" / "recipes" / "vtest64-qrid.toml"   # the same 22 frames, half QRID-degraded
ROBUST = ROOT / "benchmarks" / "recipes" / "qcal-robust.toml"   # blend mix chosen on the (degraded) calibration probes
PEERS = ["ort_minmax", "ort_percentile", "ort_entropy", "ultralytics_int8", "nncf_int8"]
RESULTS = ROOT / "benchmarks" / "results" / "robustness_peers"
EVAL_START, EVAL_STOP = 480, 800


def held_out(every: int) -> Any:
    """The evaluation frames: vtest.avi 480-799 every `every`-th (no tool calibrated on frames after 319)."""
    import calib_sets

    return calib_sets.Source.video(vtest(), start=EVAL_START, stop=EVAL_STOP, every=every)


def calib_images() -> list[Any]:
    import calib_sets

    return [s.image for s in calib_sets.load(CALIB).resized(640)]


def quantize_ort(method: str, fp32: Path, out: Path) -> None:
    """The spine benchmark's ORT peer (head decode excluded, u8/s8, reduce_range only without VNNI) with another
    calibrator.
    CalibMaxIntermediateOutputs bounds ORT's memory (it otherwise keeps every activation of every frame)."""
    ort_peer(fp32, out, calib_images(), method, {"CalibMaxIntermediateOutputs": 16})


def quantize_ultralytics(out: Path) -> None:
    """Ultralytics' own `export(format='onnx', int8=True)`, calibrated on the same frames (as a YOLO dataset)."""
    import cv2
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as d:
        img_dir = Path(d) / "images" / "val"
        img_dir.mkdir(parents=True)
        for i, img in enumerate(calib_images()):
            cv2.imwrite(str(img_dir / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        (Path(d) / "data.yaml").write_text(f"path: {d}\ntrain: images/val\nval: images/val\nnames: {{0: Normal, 1: Fall}}\n")
        ckpt = Path(d) / "best.pt"
        ckpt.write_bytes(checkpoint().read_bytes())
        f = YOLO(str(ckpt)).export(format="onnx", int8=True, data=str(Path(d) / "data.yaml"), imgsz=640,
                                   batch=1, fraction=1.0)
        Path(f).replace(out)


def quantize_nncf(fp32: Path, out: Path) -> None:
    import nncf
    import onnx

    from qcal.models.yolo import YoloAdapter

    a, model = YoloAdapter(None, "peer"), onnx.load(str(fp32))
    data = nncf.Dataset(calib_images(), lambda img: a.prepare(img).feeds)
    q = nncf.quantize(model, data, subset_size=64, ignored_scope=nncf.IgnoredScope(names=head_decode_nodes(model)))
    onnx.save(q, str(out))


def run_tool(name: str, work: Path) -> dict[str, Any]:
    """Quantize with one tool in a fresh subprocess; seconds and peak RSS (GB) of that process."""
    t = time.perf_counter()
    if name.startswith("qcal_"):
        calib, out, extra = {"qcal_int8": (CALIB, "qcal", []), "qcal_int8_mixed": (str(MIXED), "qcal_mixed", []),
                             "qcal_int8_robust": (str(MIXED), "qcal_robust", ["--config", str(ROBUST)])}[name]
        cmd = [str(Path(sys.executable).with_name("qcal")), "quantize", str(checkpoint()), "--calib", calib,
               "--calib-size", "64", "--trust-checkpoint", "--no-progress", "-o", str(work / out), *extra]
    else:
        cmd = [sys.executable, __file__, "--tool", name, "--work", str(work)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ,
                            "OMP_NUM_THREADS": "2", "NNCF_CI": "1", "YOLO_OFFLINE": "1"})
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{name} failed:\n{err[-3000:]}")
    return {"quantize_seconds": round(time.perf_counter() - t, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3)}


def model_paths(work: Path) -> dict[str, Path]:
    return {"qcal_int8": work / "qcal" / "model.int8.onnx", **{p: work / f"{p}.onnx" for p in PEERS},
            "qcal_int8_mixed": work / "qcal_mixed" / "model.int8.onnx",
            "qcal_int8_robust": work / "qcal_robust" / "model.int8.onnx"}


def tool_main(name: str, work: Path) -> None:
    os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "yolo_cfg"))
    fp32, out = work / "qcal" / "model.fp32.onnx", model_paths(work)[name]
    if name.startswith("ort_"):
        quantize_ort({"ort_minmax": "MinMax", "ort_percentile": "Percentile", "ort_entropy": "Entropy"}[name], fp32, out)
    elif name == "ultralytics_int8":
        quantize_ultralytics(out)
    elif name == "nncf_int8":
        quantize_nncf(fp32, out)


def write_results(res: dict[str, Any], results: Path) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    tmp = results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(results.with_suffix(".json"))
    conds, variants = res["conditions"], list(res["fidelity_map50_95"])
    md = ["# Robustness: qcal INT8 vs peers (fall-detection YOLOv8s, 640 px)", "", f"Command: `{res['command']}`", "",
          res["setup"], "", f"Latency: `{res.get('latency_command', res['command'])}`", "", "## Fidelity mAP50-95 vs FP32 on the same condition", "",
          "| variant | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
    for v in variants:
        md.append(f"| {v} | " + " | ".join(f"{res['fidelity_map50_95'][v][c]:.4f}" for c in conds) + " |")
    md += ["", "## mAP50-95 vs FP32 on clean frames (robust accuracy)", "",
           "| variant | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
    for v in variants:
        md.append(f"| {v} | " + " | ".join(f"{res['map50_95_vs_clean_fp32'][v][c]:.4f}" for c in conds) + " |")
    md += ["", "## Speed, size, cost of quantizing", "",
           "| variant | latency ms p50 | x FP32 | size MB | quantize s | peak RSS GB |", "|---|---|---|---|---|---|"]
    fp = res["latency_ms"]["fp32"]
    for v in variants:
        q = res["quantize"].get(v, {})
        md.append(f"| {v} | {res['latency_ms'][v]:.1f} | {res['latency_ms'][v] / fp:.2f} | {res['size_mb'][v]:.1f} | "
                  f"{q.get('quantize_seconds', '')} | {q.get('peak_rss_gb', '')} |")
    if res.get("margin_ci"):
        md += ["", f"## Fidelity margin over the best peer, 95% bootstrap interval over the {res.get('eval_frames', 40)} frames", "",
               "| variant | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
        for q, row in res["margin_ci"].items():
            md.append(f"| {q} | " + " | ".join(f"{row[c]['diff']:+.3f} [{row[c]['lo']:+.3f}, {row[c]['hi']:+.3f}] "
                                               f"({row[c]['best_peer']})" for c in conds) + " |")
    md += ["", "## Bars", ""] + [f"- {k}: {v}" for k, v in res["bars"].items()]
    md += ["", f"Machine: {res['machine']}", ""]
    results.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


def bars(res: dict[str, Any]) -> dict[str, Any]:
    """Per qcal variant: fidelity margin over the best peer on each condition, latency vs the fastest peer."""
    fid, lat, rep = res["fidelity_map50_95"], res["latency_ms"], res.get("latency_repeats_ms", {})
    peers = [v for v in fid if not v.startswith(("fp32", "qcal_"))]
    fastest = min(peers, key=lambda p: lat[p])
    out: dict[str, Any] = {"peers": peers, "fastest_peer": fastest}
    for q in (v for v in fid if v.startswith("qcal_")):
        margin = {c: round(fid[q][c] - max(fid[p][c] for p in peers), 4) for c in res["conditions"]}
        out[q] = {"fidelity_margin_vs_best_peer": margin,
                  "fidelity_ge_best_peer_every_condition": all(v >= 0 for v in margin.values()),
                  "latency_ratio_vs_fastest_peer": round(lat[q] / lat[fastest], 3),
                  "latency_ratio_per_repeat": [round(a / min(rep[p][i] for p in peers), 3)
                                               for i, a in enumerate(rep.get(q, []))],
                  "latency_le_fastest_peer": lat[q] <= lat[fastest]}
    return out


def margin_intervals(work: Path, data: dict[str, Any], res: dict[str, Any], every: int,
                     resamples: int = 1000) -> dict[str, Any]:
    """Per qcal variant and condition: fidelity minus the best peer's, with a 95% bootstrap interval over the
    evaluation frames (the same resampled frames for both), from the cached cells. Tells a real gap from noise."""
    from qcal.bench.cells import CellStore
    from qcal.bench.matrix import run_cells
    from qcal.bench.spec import parse_conditions
    from qcal.eval.bootstrap import bootstrap_diff, image_evals
    from qcal.eval.detection import pseudo_labels
    from qcal.models import load_model

    adapter = load_model(checkpoint(), trust_checkpoint=True, imgsz=640)
    es = held_out(every).resized(640)
    images = [s.image for s in es]
    hw = [img.shape[:2] for img in images]
    models = {p["name"]: p for p in data["precisions"]}
    cells = run_cells(adapter, models, parse_conditions("qrid"), images, es.content_hash, CellStore(work / "report"),
                      threads=2, progress=False)
    fid, out = res["fidelity_map50_95"], {}
    peers = [v for v in fid if not v.startswith(("fp32", "qcal_"))]
    for q in (v for v in fid if v.startswith("qcal_")):
        out[q] = {}
        for c in res["conditions"]:
            best = max(peers, key=lambda p: float(fid[p][c]))  # noqa: B023
            ref = [pseudo_labels(d) for d in cells["fp32"][c]]  # type: ignore[arg-type]
            iv = bootstrap_diff(image_evals(ref, cells[q][c], hw, 2), image_evals(ref, cells[best][c], hw, 2),  # type: ignore[arg-type]
                                resamples=resamples, seed=0)
            out[q][c] = {"best_peer": best, **{k: round(v, 4) if isinstance(v, float) else v
                                               for k, v in iv.to_dict().items()}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", help=argparse.SUPPRESS)
    ap.add_argument("--work", default="/tmp/qcal-robustness-peers", help="models and cell cache (kept for resume)")
    ap.add_argument("--latency-only", action="store_true", help="re-time the saved models; keep the accuracy")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved latency rounds (median of their medians; "
                    "each round's ratio to the fastest peer is reported)")
    ap.add_argument("--eval-every", type=int, default=8, help="evaluate vtest frames 480-799 every N-th (8: 40 frames, "
                    "2: 160 frames, about 4x the time)")
    ap.add_argument("--results", default=str(RESULTS), help="results path without suffix (.json and .md are written)")
    args = ap.parse_args()
    results = Path(args.results)
    work = Path(args.work)
    if args.tool:
        tool_main(args.tool, work)
        return
    import calib_sets
    import qcal
    from benchmarks.provenance import provenance
    from qcal.eval.latency import measure_latencies
    from qcal.models.yolo import YoloAdapter

    work.mkdir(parents=True, exist_ok=True)
    paths = model_paths(work)
    if args.latency_only:
        res = json.loads(results.with_suffix(".json").read_text())
    else:
        done = work / "quantize.json"   # resume: a tool whose model exists is not re-run
        quant: dict[str, Any] = json.loads(done.read_text()) if done.is_file() else {}
        for name in ["qcal_int8", *PEERS, "qcal_int8_mixed", "qcal_int8_robust"]:
            if name in quant and paths[name].is_file():
                continue
            print(f"quantizing: {name}", file=sys.stderr)
            quant[name] = run_tool(name, work)
            done.write_text(json.dumps(quant, indent=1))
        held = held_out(args.eval_every)
        precs = ",".join(["fp32", *(f"onnx:{k}={v}" for k, v in paths.items())])
        rep = qcal.robustness(checkpoint(), eval=held, conditions="qrid", precisions=precs, out=work / "report",
                              trust_checkpoint=True, latency_runs=5, bootstrap=0, command="robustness_peers.py")
        cells = rep.data["cells"]
        conds = [c["name"] for c in rep.data["conditions"]]
        report_data = rep.data
        res = {"conditions": conds,
               "fidelity_map50_95": {v: {c: cells[v][c]["agreement_map50_95"] for c in conds} for v in cells},
               "map50_95_vs_clean_fp32": {v: {c: cells[v][c]["map50_95"] for c in conds} for v in cells},
               "ece": {v: {c: cells[v][c]["ece"] for c in conds} for v in cells},
               "size_mb": rep.data["size_mb"], "quantize": quant,
               "setup": ("Calibration: bundled vtest frames 0-319 every 5th (the bundled set keeps every 3rd frame, so 22 frames: "
                         "0, 15, ..., 315) for every tool; ORT and NNCF "
                         "exclude the same head-decode nodes (/model.22 except cv2/cv3); ORT: QDQ, u8 activations, "
                         "s8 per-channel weights, reduce_range only on CPUs without VNNI. Evaluation: vtest.avi "
                         f"frames 480-799 every {args.eval_every}th ({len(held)} frames), QRID conditions. Latency: "
                         "ONNX Runtime CPU, 2 threads, models taking turns in blocks of 10 runs.")}
        res["eval_frames"] = len(held)
        res["margin_ci"] = margin_intervals(work, report_data, res, args.eval_every)
    models = {"fp32": work / "report" / "models" / "fp32.onnx", **paths}
    a = YoloAdapter(None, "peer")
    feeds = a.prepare(calib_sets.Source.video(vtest(), start=480, stop=481).resized(640)[0].image).feeds
    rounds = [measure_latencies({k: Path(v) for k, v in models.items()}, feeds, threads=2, warmup=5, runs=args.runs)
              for _ in range(args.repeats)]
    # each repeat is one interleaved run of every model; the reported latency is the median over repeats of
    # each repeat's median, and every repeat's ratio to the fastest peer is kept (how stable the ranking is)
    res["latency_ms"] = {k: round(float(np.median([r[k].median_ms for r in rounds])), 2) for k in models}
    res["latency_p90_ms"] = {k: round(float(np.median([r[k].p90_ms for r in rounds])), 2) for k in models}
    res["latency_repeats_ms"] = {k: [round(r[k].median_ms, 2) for r in rounds] for k in models}
    res.update(provenance())
    res["machine"]["threads"] = 2
    cmd = " ".join([".venv/bin/python benchmarks/robustness_peers.py", *sys.argv[1:]])
    if args.latency_only:   # accuracy keeps the command that measured it
        res["latency_command"] = cmd
    else:
        res["command"] = res["latency_command"] = cmd
    res["bars"] = bars(res)
    write_results(res, results)


if __name__ == "__main__":
    main()
