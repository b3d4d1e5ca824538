"""What an allocation's "fp16" layers cost on ONNX Runtime CPU: the same float layers of the fall-detection YOLOv8s
kept FP32 vs converted to FP16 inside the QDQ graph (keep_float.fp16_nodes), timed beside FP32 and all-INT8.

Reads the float nodes of the torch-sensitivity allocation in benchmarks/results/adaquant_yolo_onnx_sens.json
and the models benchmarks/adaquant_yolo.py saved under --models (fp32, int8, mixed = the fp16 version).

    nice -n 10 .venv/bin/python benchmarks/fp16_layers_latency.py --models /tmp/aq2_yolo_models
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from exporters.quant_table import atomic_write_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=str(ROOT / "out" / "adaquant_yolo_models"))
    ap.add_argument("--alloc", default=str(ROOT / "benchmarks" / "results" / "adaquant_yolo_onnx_sens.json"))
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fp16_layers_latency"))
    args = ap.parse_args()
    import calib_sets
    import qcal
    from benchmarks.provenance import provenance
    from qcal.cli import demo_checkpoint
    from qcal.eval.latency import measure_latencies
    from qcal.models.yolo import YoloAdapter

    alloc = json.loads(Path(args.alloc).read_text())
    nodes = tuple(alloc["allocation"]["float_nodes"])
    imgsz, calib = alloc["config"]["imgsz"], alloc["config"]["calib_frames"]
    adapter = YoloAdapter.load(demo_checkpoint(), trust_checkpoint=True, imgsz=imgsz)
    cfg = qcal.QuantConfig(imgsz=imgsz, calib_size=calib,
                           keep_float=qcal.KeepFloatConfig(sensitivity_samples=0, nodes=nodes))
    r = qcal.quantize(adapter, calib="bundled:vtest[0:360]", config=cfg, progress=False)
    models = Path(args.models)
    shutil.copyfile(r.out.int8_path, models / "mixed_fp32kept.onnx")
    feeds = adapter.prepare(calib_sets.load("bundled:vtest[360:361]")[0].image).feeds
    names = {"fp32": "fp32", "int8": "int8", "float layers in FP16": "mixed", "float layers kept FP32": "mixed_fp32kept"}
    runs = []
    for _ in range(args.repeats):
        lat = measure_latencies({k: str(models / f"{v}.onnx") for k, v in names.items()}, feeds, threads=1,
                                runs=args.runs)
        runs.append({k: round(v.median_ms, 2) for k, v in lat.items()})
    res = {"float_nodes": len(nodes), "median_ms": runs, "threads": 1, "noisy_machine": True,
           "command": "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(__file__).name}", *sys.argv[1:]]),
           **provenance()}
    md = ["# FP16 vs FP32 float layers in a mixed INT8 QDQ model on ONNX Runtime CPU (YOLOv8s, 320 px)", "",
          f"Command: `{res['command']}`  ", f"Machine: {res['machine']['cpu_model']} "
          f"({','.join(res['machine']['flags'])}), 1 thread, shared and loaded (noisy_machine).", "",
          f"The same {len(nodes)} of 63 layers kept float (the torch-sensitivity allocation of "
          "`adaquant_yolo_onnx_sens`), converted to FP16 or left FP32; median ms per run, each repeat a new session.",
          "", "| model | " + " | ".join(f"repeat {i + 1}" for i in range(len(runs))) + " | ratio to FP32 (repeat 1) |",
          "|---" * (len(runs) + 2) + "|"]
    for k in names:
        md.append(f"| {k} | " + " | ".join(str(r[k]) for r in runs) + f" | {runs[0][k] / runs[0]['fp32']:.3f} |")
    res["markdown"] = md
    atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(res, indent=1))
    atomic_write_text(Path(args.out).with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
