"""The LLM path's QuantTable (format qcal.quant_table/2): one entry per quantized Linear, read off the very
QuantLinear modules the simulation runs, so the table, the simulation and the exported graph hold one model.

Entries (names are the model's module names, as in the float decisions):
- `<layer>.weight`, kind "weight":
  * int8 (W8A8): codes (K, N) = W^T as MatMulInteger / DequantizeLinear read them (symmetric, -127..127),
    scale (N,) and zero point 0 (N,) on axis 1;
  * uint4 (W4A16): codes (N, K) in 0..15 (MatMulNBits' rows, unpacked and without its block padding), scale and
    zero point (N, ceil(K / group)) on axis 1 with group_size: ONNX's blocked layout.
- `<layer>.input`, kind "activation": the static per-tensor uint8 scale and zero point of W8A8 per-tensor, with
  the calibrated range rmin/rmax (per-token activations have no static parameters: meta "activations").
Layers left float are the table's `float_nodes`, with "<rule>: <reason>" in `float_reasons`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from exporters.llm_onnx import INPUT, WEIGHT
from exporters.quant_table import QuantTable, TensorQuant
from qcal.llm.common import FloatDecision
from qcal.quant.llm_schemes import ActQuant, QuantLinear

TARGET = "ort-cpu"


def weight_entry(q: QuantLinear) -> TensorQuant:
    """The integer weight the simulation uses (QuantLinear.weight is exactly its dequantization)."""
    if q.int4 is not None:
        i4 = q.int4
        return TensorQuant("uint4", i4.scale.numpy(), i4.zero.numpy().astype(np.int64), axis=1, kind="weight",
                           bits=4, group_size=i4.group, codes=i4.codes[:, : i4.k].numpy())
    codes, scale = q.get_buffer("w_codes"), q.get_buffer("w_scale")
    return TensorQuant("int8", scale.numpy(), np.zeros(scale.numel(), np.int64), axis=1, kind="weight", bits=8,
                       codes=codes.numpy().T)


def activation_entry(q: QuantLinear, act_range: tuple[float, float] | None) -> TensorQuant | None:
    """The static input quantization of a per-tensor W8A8 layer, None for every other layer."""
    if q.act is not ActQuant.PER_TENSOR:
        return None
    lo, hi = act_range if act_range is not None else (None, None)
    return TensorQuant("uint8", np.float32(q.act_scale), q.act_zero, kind="activation", rmin=lo, rmax=hi)


def linear_entries(name: str, q: QuantLinear, act_range: tuple[float, float] | None) -> dict[str, TensorQuant]:
    out = {name + WEIGHT: weight_entry(q)}
    a = activation_entry(q, act_range)
    if a is not None:
        out[name + INPUT] = a
    return out


def table_meta(scheme: str, activations: str, group_size: int, passes: Iterable[str], smoothed: bool,
               **extra: Any) -> dict[str, Any]:
    """The scheme-wide facts of a table (JSON types only: lists, not tuples, so a loaded table compares equal)."""
    return {"scheme": scheme, "activations": activations if scheme == "w8a8" else "none",
            "group_size": group_size if scheme == "w4a16" else None, "passes": list(passes), "smoothquant": smoothed,
            **extra}


def build_table(entries: dict[str, TensorQuant], decisions: Iterable[FloatDecision],
                meta: dict[str, Any]) -> QuantTable:
    decisions = list(decisions)
    return QuantTable(dict(entries), tuple(d.layer for d in decisions),
                      {d.layer: f"{d.rule}: {d.reason}" for d in decisions}, TARGET, meta)


def model_table(model: Any, ranges: dict[str, tuple[float, float]], decisions: Iterable[FloatDecision],
                meta: dict[str, Any]) -> QuantTable:
    """The table of an in-memory quantized model: every QuantLinear module's entries."""
    entries: dict[str, TensorQuant] = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            entries.update(linear_entries(name, m, ranges.get(name)))
    return build_table(entries, decisions, meta)


def quantized_layers(table: QuantTable) -> list[str]:
    """The Linear layers the table quantizes, in its (sorted) order."""
    return [k.removesuffix(WEIGHT) for k, v in sorted(table.tensors.items()) if v.kind == "weight"]
