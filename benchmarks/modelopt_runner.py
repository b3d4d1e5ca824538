"""Runs NVIDIA ModelOpt's ONNX INT8 PTQ in ModelOpt's own virtual environment (a subprocess of
benchmarks/tensorrt_profile.py; it imports nothing of qcal). Prints one JSON line: seconds, peak RSS, output path.

    /work/venvs/modelopt/bin/python benchmarks/modelopt_runner.py --onnx fp32.onnx --calib calib.npy \
        --out modelopt.int8.onnx --method entropy --high-precision fp32
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--calib", required=True, help=".npy of the calibration inputs, N x 3 x H x W float32")
    ap.add_argument("--input-name", default="images")
    ap.add_argument("--out", required=True)
    ap.add_argument("--method", default="entropy", choices=["entropy", "max"])
    ap.add_argument("--high-precision", default="fp32", choices=["fp32", "fp16"])
    a = ap.parse_args()
    import modelopt
    import numpy as np
    from modelopt.onnx.quantization import quantize

    data = np.load(a.calib)
    t0 = time.perf_counter()
    quantize(a.onnx, quantize_mode="int8", calibration_data={a.input_name: data}, calibration_method=a.method,
             calibration_eps=["cpu"], output_path=a.out, high_precision_dtype=a.high_precision, log_level="WARNING")
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "out": a.out, "method": a.method,
                      "high_precision_dtype": a.high_precision, "modelopt_version": modelopt.__version__,
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


if __name__ == "__main__":
    main()
