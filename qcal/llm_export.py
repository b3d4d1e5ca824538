"""ONNX export of the LLM path: the decoder without KV cache (one full forward per call, inputs input_ids,
attention_mask, position_ids, output logits), FP32 and quantized, plus the quant table and report.

The quantized graph is the simulation model exported with its dequantized weights, then rewritten by
exporters.llm_onnx into MatMulInteger (W8A8 per-token), QDQ (W8A8 per-tensor) or MatMulNBits (W4A16).
The legacy TorchScript exporter is used with eager attention: it handles the HF Llama graph here.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from exporters.errors import ExporterError
from exporters.llm_onnx import Kind, LinearQuant, quantize_linears, weight_sha1
from exporters.quant_table import atomic_write_text
from qcal.errors import ExportError
from qcal.quant.llm_schemes import ActQuant, QuantLinear

if TYPE_CHECKING:
    from qcal.llm import LLMQuantResult


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).logits


class _Plain(nn.Module):
    """A QuantLinear seen as a float Linear on its dequantized weight (what the exporter traces)."""

    def __init__(self, q: QuantLinear) -> None:
        super().__init__()
        self.weight, self.bias = q.weight, q.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


def export_decoder(model: nn.Module, path: Path, *, opset: int = 17) -> None:
    vocab = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[operator]
    ids = torch.randint(0, vocab, (1, 8))
    feeds = (ids, torch.ones_like(ids), torch.arange(8)[None])
    axes = {k: {0: "batch", 1: "seq"} for k in ("input_ids", "attention_mask", "position_ids", "logits")}
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(model), feeds, str(tmp), input_names=list(axes)[:3], output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    tmp.replace(path)


def layer_specs(model: nn.Module) -> list[LinearQuant]:
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, QuantLinear):
            continue
        sha = weight_sha1(m.weight.detach().numpy().T)
        if m.int4 is not None:
            i4 = m.int4
            out.append(LinearQuant(name, sha, "int4", i4.codes.numpy(), i4.scale.numpy(), i4.zero.numpy(),
                                   group=i4.group, k=i4.k))
        else:
            kind: Kind = "int8-dynamic" if m.act is ActQuant.PER_TOKEN else "int8-static"
            codes, scale = m.get_buffer("w_codes"), m.get_buffer("w_scale")
            out.append(LinearQuant(name, sha, kind, codes.numpy(), scale.numpy(),
                                   act_scale=m.act_scale, act_zero=m.act_zero))
    return out


def export_llm(result: LLMQuantResult, d: Path, *, fp32: bool = True) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    scheme = result.scheme.value
    paths = {"quantized": d / f"model.{scheme}.onnx", "table": d / "quant_table.json",
             "report_json": d / "report.json"}
    if fp32:
        paths["fp32"] = d / "model.fp32.onnx"
        export_decoder(result.lm.model, paths["fp32"])
    specs = layer_specs(result.model)
    plain = _swap_plain(result.model)
    try:
        with tempfile.TemporaryDirectory(prefix="qcal-llm-") as tmp:
            sim = Path(tmp) / "sim.onnx"
            export_decoder(result.model, sim)
            counts = quantize_linears(sim, paths["quantized"], specs)
    except ExporterError as e:
        raise ExportError(str(e)) from e
    finally:
        _restore(result.model, plain)
    table = {"scheme": scheme, "format": "decoder without KV cache (input_ids, attention_mask, position_ids -> "
             "logits)", "ops": counts,
             "layers": {s.name: {"kind": s.kind, "group": s.group if s.kind == "int4" else None,
                                 "weight_scale_max": float(np.max(s.scale)),
                                 **({"act_scale": s.act_scale, "act_zero": s.act_zero} if s.kind == "int8-static" else {})}
                        for s in specs},
             "float": [x.__dict__ for x in result.decisions]}
    atomic_write_text(paths["table"], json.dumps(table, indent=1))
    atomic_write_text(paths["report_json"], json.dumps(result.to_dict(), indent=1))
    return paths


def _swap_plain(model: nn.Module) -> dict[str, QuantLinear]:
    mods = dict(model.named_modules())
    swapped = {n: m for n, m in mods.items() if isinstance(m, QuantLinear)}
    for n, m in swapped.items():
        parent, _, child = n.rpartition(".")
        setattr(mods[parent], child, _Plain(m))
    return swapped


def _restore(model: nn.Module, swapped: dict[str, QuantLinear]) -> None:
    mods = dict(model.named_modules())
    for n, m in swapped.items():
        parent, _, child = n.rpartition(".")
        setattr(mods[parent], child, m)


def ort_logits(path: str | Path, *, threads: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """ids (1, T) -> logits (1, T, V) from an exported decoder in ONNX Runtime (CPU)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def run(ids: torch.Tensor) -> torch.Tensor:
        x = ids.numpy().astype(np.int64)
        feeds = {"input_ids": x, "attention_mask": np.ones_like(x),
                 "position_ids": np.arange(x.shape[1], dtype=np.int64)[None].repeat(x.shape[0], 0)}
        return torch.from_numpy(sess.run(["logits"], feeds)[0])

    return run
