"""ONNX export of the LLM path: the decoder without KV cache (one full forward per call, inputs input_ids,
attention_mask, position_ids, output logits), FP32 and quantized, plus the QuantTable and report.

The quantized graph is the simulation model exported with its dequantized weights, then rewritten from the
QuantTable by exporters.llm_onnx into MatMulInteger (W8A8 per-token), QDQ (W8A8 per-tensor) or MatMulNBits
(W4A16); exporters.llm_onnx.read_llm_quant_table reads the table back from the result.
The legacy TorchScript exporter is used with eager attention: it handles the HF Llama graph here.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exporters.errors import ExporterError
from exporters.llm_onnx import quantize_linears
from exporters.quant_table import QuantTable, arrays_path, atomic_write_text
from qcal.errors import ExportError
from qcal.quant.llm_schemes import QuantLinear
from qcal.runtime.output import workdir


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


def export_llm(fp32_model: nn.Module, qmodel: nn.Module, table: QuantTable, report: dict[str, Any], d: Path, *,
               fp32: bool = True) -> dict[str, Path]:
    """Write model.fp32.onnx (optional), model.<scheme>.onnx, quant_table.json (+ .arrays.npz) and report.json.

    The quantized graph is `qmodel` traced with its dequantized weights, then every table weight entry is written
    in place of the MatMul whose float weight is that entry's dequantization (exporters.llm_onnx): a simulation
    that does not hold exactly the table's weights is refused, layer by layer."""
    d.mkdir(parents=True, exist_ok=True)
    scheme = str(table.meta.get("scheme", "quantized"))
    paths = {"quantized": d / f"model.{scheme}.onnx", "table": d / "quant_table.json",
             "table_arrays": arrays_path(d / "quant_table.json"), "report_json": d / "report.json"}
    if fp32:
        paths["fp32"] = d / "model.fp32.onnx"
        export_decoder(fp32_model, paths["fp32"])
    plain = _swap_plain(qmodel)
    try:
        with workdir("llm") as tmp:
            sim = Path(tmp) / "sim.onnx"
            export_decoder(qmodel, sim)
            counts = quantize_linears(sim, paths["quantized"], table)
    except ExporterError as e:
        raise ExportError(str(e)) from e
    finally:
        _restore(qmodel, plain)
    table.save(paths["table"])
    if not paths["table_arrays"].is_file():
        del paths["table_arrays"]
    atomic_write_text(paths["report_json"], json.dumps({**report, "onnx_ops": counts}, indent=1))
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


def ort_logits(path: str | Path, *, threads: int = 1, optimize: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """ids (1, T) -> logits (1, T, V) from an exported decoder in ONNX Runtime (CPU). optimize=False turns ORT's
    graph optimizations off: the arithmetic as written, no fused kernels."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
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
