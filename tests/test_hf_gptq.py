"""qcal's W4A16 (and W8 weight-only) result as a Hugging Face GPTQ checkpoint (exporters/hf_gptq.py).

The checkpoint is read back by a reader written here from GPTQ's documented layout (not the exporter's unpack):
qweight int32 (K / pf, N) with input k in row k // pf at bits * (k % pf); qzeros int32 (G, N / pf) packed along N,
v1 storing z - 1 per masked field; W[n, k] = scales[g_idx[k], n] * (u[k, n] - z[g_idx[k], n]).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from exporters.errors import ExporterError
from exporters.hf_gptq import gptq_linear, pack_int32, unpack_int32
from exporters.quant_table import TensorQuant

pytest.importorskip("transformers")


# --- an independent reader ----------------------------------------------------------------------------------

def _fields(words: np.ndarray, bits: int, along: int) -> np.ndarray:
    """int32 words -> unsigned fields, field j of each word at bit bits * j, expanded along axis `along`."""
    w = words.astype(np.int64) & 0xFFFFFFFF
    pf, mask = 32 // bits, (1 << bits) - 1
    shape = list(w.shape)
    shape[along] *= pf
    out = np.zeros(shape, np.int64)
    for j in range(pf):
        idx: list[Any] = [slice(None)] * 2
        idx[along] = slice(j, None, pf)
        out[tuple(idx)] = (w >> (bits * j)) & mask
    return out


def read_gptq(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(dequantized weights (N, K) float32 by layer, the other tensors, quantization_config)."""
    from safetensors.numpy import load_file

    t = load_file(str(folder / "model.safetensors"))
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    bits, v1 = qc["bits"], qc["checkpoint_format"] == "gptq"
    weights = {}
    for name in [k for k in t if k.endswith(".qweight")]:
        layer = name.removesuffix(".qweight")
        u = _fields(t[name], bits, 0)                                      # (K, N)
        z = _fields(t[layer + ".qzeros"], bits, 1)                         # (G, N)
        if v1:
            z = (z + 1) & ((1 << bits) - 1)
        g = t[layer + ".g_idx"].astype(np.int64)
        s = t[layer + ".scales"]
        assert s.dtype == np.float16 and t[name].dtype == np.int32 and g.shape == (u.shape[0],)
        weights[layer] = ((u - z[g]).astype(np.float32) * s.astype(np.float32)[g]).T
    rest = {k: v for k, v in t.items() if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))}
    return weights, rest, qc


# --- packing and one layer ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("axis", [0, 1])
def test_pack_unpack_round_trip_bit_exact(bits: int, axis: int) -> None:
    rng = np.random.default_rng(bits + axis)
    shape = (64, 48) if axis == 0 else (24, 96)
    codes = rng.integers(0, 1 << bits, shape)
    packed = pack_int32(codes, bits, axis)
    assert packed.dtype == np.int32 and packed.shape[axis] == shape[axis] * bits // 32
    assert np.array_equal(unpack_int32(packed, bits, axis), codes)
    assert np.array_equal(_fields(packed, bits, axis), codes)             # the layout the reader documents


def test_layout_first_code_in_low_bits() -> None:
    col = np.arange(1, 9).reshape(8, 1)                                    # inputs k = 0..7 of one output
    assert pack_int32(col, 4, 0).view(np.uint32)[0, 0] == 0x87654321
    assert pack_int32(col.T, 4, 1).view(np.uint32)[0, 0] == 0x87654321     # zeros: outputs n = 0..7


def _entry(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, group: int) -> TensorQuant:
    return TensorQuant("uint4", scale.astype(np.float32), zero, axis=1, kind="weight", bits=4, group_size=group,
                       codes=codes)


def _dequant(g: Any, fmt: str) -> np.ndarray:
    """The reader's formula on one GPTQLinear's arrays."""
    u, z = _fields(g.qweight, g.bits, 0), _fields(g.qzeros, g.bits, 1)
    if fmt == "gptq":
        z = (z + 1) & ((1 << g.bits) - 1)
    return ((u - z[g.g_idx]).astype(np.float32) * g.scales.astype(np.float32)[g.g_idx]).T


def test_v1_zero_points_zero_shifted_or_counted() -> None:
    rng = np.random.default_rng(0)
    n, k, group = 16, 64, 32
    codes = rng.integers(0, 15, (n, k))
    zero = rng.integers(1, 15, (n, k // group))
    zero[0, 0] = 0                       # codes of row 0 group 0 are <= 14: written as codes + 1, z = 1
    zero[1, 1] = 0
    codes[1, 40] = 15                    # row 1 group 1 holds a 15: cannot shift
    scale = rng.uniform(1e-3, 1e-2, (n, k // group))
    e = _entry(codes, scale, zero, group)
    want = ((codes - np.repeat(zero, group, 1)).astype(np.float32)
            * np.repeat(scale.astype(np.float16).astype(np.float32), group, 1))
    for fmt in ("gptq", "gptq_v2"):
        g = gptq_linear(e, checkpoint_format=fmt, layer="x")
        assert np.array_equal(_dequant(g, fmt), want), fmt
        assert g.scales.dtype == np.float16 and 0 < g.scale_rel_err <= 2.0**-11
    g1 = gptq_linear(e, checkpoint_format="gptq")
    assert (g1.shifted_groups, g1.v1_carry_groups) == (1, 1)
    # gptqmodel's v1 -> v2 conversion adds 0x11111111 to every int32: only the field after the carry moves
    conv = (g1.qzeros.astype(np.int64) + 0x11111111) & 0xFFFFFFFF
    z = _fields(conv.astype(np.uint32).view(np.int32), 4, 1)
    truth = _fields(g1.qzeros, 4, 1)
    truth = (truth + 1) & 15
    diff = np.argwhere(z != truth)
    assert diff.tolist() == [[1, 2]], diff                                 # group 1, output 2 (after output 1)


def test_int8_weight_only_is_symmetric_8_bit() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(-127, 128, (64, 24)).astype(np.int8)              # (K, N) as the W8A8 table holds them
    scale = rng.uniform(1e-3, 1e-2, 24)
    e = TensorQuant("int8", scale.astype(np.float32), np.zeros(24, np.int64), axis=1, kind="weight", bits=8,
                    codes=codes)
    for group in (-1, 32):
        g = gptq_linear(e, w8_group_size=group)
        assert g.bits == 8 and g.sym and g.qweight.shape == (16, 24) and g.scales.shape == (1 if group < 0 else 2, 24)
        want = (codes.astype(np.float32) * scale.astype(np.float16).astype(np.float32)).T
        assert np.array_equal(_dequant(g, "gptq"), want)


def test_refuses_what_gptq_cannot_hold() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(ExporterError, match="multiples of 8"):
        gptq_linear(_entry(rng.integers(0, 16, (12, 64)), np.full((12, 2), 0.01), np.full((12, 2), 8), 32))
    with pytest.raises(ExporterError, match="float16"):
        gptq_linear(_entry(rng.integers(0, 16, (8, 64)), np.full((8, 2), 1e-9), np.full((8, 2), 8), 32))
    with pytest.raises(ExporterError, match="checkpoint_format"):
        gptq_linear(_entry(rng.integers(0, 16, (8, 64)), np.full((8, 2), 0.01), np.full((8, 2), 8), 32),
                    checkpoint_format="v3")


# --- a tiny Llama quantized by qcal, written, read back -----------------------------------------------------

def _tiny64(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.llm_tiny import WORDS, tiny_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, attn_implementation="eager")
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def w4(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import qcal
    from calib_sets import Source
    from tests.llm_tiny import tiny_text

    d = tmp_path_factory.mktemp("gptq")
    model = _tiny64(d / "model")
    (d / "calib.txt").write_text(tiny_text(600, seed=1))
    cfg = qcal.QuantConfig(scheme="w4a16", passes=["gptq"], calib_size=8,
                           llm=qcal.LLMConfig(seq_len=32, group_size=32, keep_float_ratio=0))
    r = qcal.quantize(model, calib=Source.text(d / "calib.txt", seq_len=32, n=8), config=cfg, progress=False)
    out = d / "hf"
    paths = r.export(out, format="hf-gptq")
    return r, out, paths


def _ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(3, 64, (2, 24), generator=g)


def _sim_fp16_scales(r: Any) -> torch.nn.Module:
    """qcal's simulation with each 4-bit scale rounded to float16, the value the checkpoint stores."""
    from qcal.quant.llm_schemes import Int4Groups, QuantLinear

    m = copy.deepcopy(r.model)
    for q in m.modules():
        if isinstance(q, QuantLinear) and q.int4 is not None:
            i4 = q.int4
            i16 = Int4Groups(i4.codes, i4.scale.half().float(), i4.zero, i4.group, i4.k)
            q.weight.data.copy_(i16.dequantize())
    return m


def test_w4a16_checkpoint_holds_the_simulated_weights(w4: Any) -> None:
    from qcal.quant.llm_schemes import Int4Groups, QuantLinear

    r, out, paths = w4
    assert set(paths) >= {"weights", "config", "quantize_config", "report_json"}
    weights, rest, qc = read_gptq(out)
    assert qc == json.loads((out / "quantize_config.json").read_text())
    assert {k: qc[k] for k in ("quant_method", "bits", "group_size", "desc_act", "sym", "checkpoint_format")} == {
        "quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False, "sym": False,
        "checkpoint_format": "gptq"}
    mods = {n: m for n, m in r.model.named_modules() if isinstance(m, QuantLinear)}
    assert set(weights) == set(mods) and len(mods) == 14
    for name, q in mods.items():
        i4 = q.int4
        want = Int4Groups(i4.codes, i4.scale.half().float(), i4.zero, i4.group, i4.k).dequantize()
        assert np.array_equal(weights[name], want.numpy()), name                 # bit-exact at fp16 scales
    # everything else as it is: embeddings, norms; lm_head tied, so written once (as the embedding)
    sd = r.model.state_dict()
    assert "lm_head.weight" not in rest and "model.embed_tokens.weight" in rest
    for k, v in rest.items():
        assert np.array_equal(v, sd[k].numpy()), k
    report = json.loads((out / "report.json").read_text())["hf_gptq"]
    assert report["quantized_layers"] == 14 and report["scale_fp16_max_rel_err"] <= 2.0**-11
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is True
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(out).quantization_config["bits"] == 4
    assert AutoTokenizer.from_pretrained(out)("w1 w2").input_ids == r.lm.tokenizer("w1 w2").input_ids


def test_w4a16_checkpoint_logits_match_simulation(w4: Any) -> None:
    """A float model built from the checkpoint alone (reader's weights) gives the fp16-scale simulation's logits
    exactly; against qcal's own (float32-scale) simulation the difference is the fp16 rounding of the scales."""
    r, out, _ = w4
    weights, rest, _ = read_gptq(out)
    m = copy.deepcopy(r.lm.model)
    sd = {k: torch.from_numpy(v) for k, v in rest.items()} | {k + ".weight": torch.from_numpy(v)
                                                               for k, v in weights.items()}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    ids = _ids()
    with torch.no_grad():
        got = m(input_ids=ids, use_cache=False).logits
        sim16 = _sim_fp16_scales(r)(input_ids=ids, use_cache=False).logits
        sim = r.model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(got, sim16, atol=1e-6, rtol=0)
    rel = float((got - sim).abs().max() / sim.abs().max())
    assert 0 < rel < 1e-2, rel


def test_transformers_loads_it_with_gptqmodel(w4: Any) -> None:
    pytest.importorskip("optimum")
    pytest.importorskip("gptqmodel")
    from transformers import AutoModelForCausalLM

    r, out, _ = w4
    m = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu")
    ids = _ids()
    with torch.no_grad():
        got = m(input_ids=ids, use_cache=False).logits.float()
        sim16 = _sim_fp16_scales(r)(input_ids=ids, use_cache=False).logits
    # gptqmodel's torch kernel dequantizes in float16 (scale * (q - z) rounded), measured 9e-5 here
    assert float((got - sim16).abs().max() / sim16.abs().max()) < 5e-4


@pytest.mark.slow
def test_genai_builder_converts_it_exactly(w4: Any, tmp_path: Path) -> None:
    """onnxruntime-genai's model builder turns the folder into a GenAI model (KV cache, GroupQueryAttention) whose
    logits are the fp16-scale simulation's (lm_head and the tied embedding kept float, MatMulNBits in fp32)."""
    import subprocess
    import sys

    og = pytest.importorskip("onnxruntime_genai")
    pytest.importorskip("onnx_ir")
    r, out, _ = w4
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(out), "-o", str(tmp_path / "genai"),
           "-p", "int4", "-e", "cpu", "-c", str(tmp_path / "cache"), "--extra_options",
           "nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather", "accuracy_level=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    model = og.Model(str(tmp_path / "genai"))
    ids, outs = _ids(), []
    for row in ids:
        p = og.GeneratorParams(model)
        p.set_search_options(max_length=64)
        g = og.Generator(model, p)
        g.append_tokens(row.numpy().astype(np.int32)[None])
        outs.append(torch.from_numpy(np.array(g.get_output("logits"))))
    got = torch.cat(outs).float()
    with torch.no_grad():
        sim16 = _sim_fp16_scales(r)(input_ids=ids, use_cache=False).logits
    assert float((got - sim16).abs().max() / sim16.abs().max()) < 1e-5        # measured 2.6e-7


def test_builder_notes_name_what_the_builder_refuses(w4: Any, tmp_path: Path) -> None:
    from exporters.hf_gptq import builder_notes

    r, out, _ = w4
    stats = json.loads((out / "report.json").read_text())["hf_gptq"]
    assert stats["notes"] == [] and builder_notes(stats) == []
    notes = builder_notes({**stats, "ragged_group_layers": ["a"], "group_size": 24, "float_linears": ["b"],
                           "v1_carry_groups": 2, "checkpoint_format": "gptq_v2"})
    assert len(notes) == 5 and "multiple of group_size=24" in notes[0] and "power of 2" in notes[1]
    with pytest.warns(UserWarning, match="v1 zero points only"):
        r.export_hf(tmp_path / "v2", checkpoint_format="gptq_v2")


def test_export_format_and_w8a8_refusal(w4: Any, tmp_path: Path) -> None:
    import qcal

    r = w4[0]
    with pytest.raises(qcal.ConfigError, match="hf-gptq"):
        r.export(tmp_path / "x", format="safetensors")
    w8 = copy.copy(r)
    w8.config = qcal.QuantConfig(scheme="w8a8", llm=r.config.llm)
    with pytest.raises(qcal.ConfigError, match="weight_only=True"):
        w8.export_hf(tmp_path / "y")


def test_w8_weight_only_checkpoint(w4: Any, tmp_path: Path) -> None:
    """A w8a8 result written weight-only: 8-bit symmetric GPTQ (u = q + 128, z = 128), per output channel."""
    import qcal
    from calib_sets import Source
    from qcal.quant.llm_schemes import QuantLinear

    folder = w4[1].parent
    cfg = qcal.QuantConfig(scheme="w8a8", calib_size=4, llm=qcal.LLMConfig(seq_len=32, keep_float_ratio=0))
    r = qcal.quantize(folder / "model", calib=Source.text(folder / "calib.txt", seq_len=32, n=4), config=cfg,
                      progress=False)
    r.export_hf(tmp_path / "w8", weight_only=True)
    weights, _, qc = read_gptq(tmp_path / "w8")
    assert (qc["bits"], qc["group_size"], qc["sym"]) == (8, -1, True)
    for name, q in r.model.named_modules():
        if isinstance(q, QuantLinear):
            want = q.get_buffer("w_codes").float() * q.get_buffer("w_scale").half().float()[:, None]
            assert np.array_equal(weights[name], want.numpy()), name
