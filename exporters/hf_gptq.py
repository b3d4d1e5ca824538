"""A Hugging Face GPTQ checkpoint from an LLM QuantTable: the folder transformers loads (through optimum and
gptqmodel) and onnxruntime-genai's model builder converts (`-i <folder>`, quantized_model.GPTQModel).

The format, per quantized Linear `<layer>` with K inputs, N outputs, `bits` in {4, 8}, pf = 32 / bits codes per
int32 and G = ceil(K / group_size) groups along K (group_size -1: one group, per output channel):
- `<layer>.qweight` int32 (K / pf, N): unsigned code u[k, n] of input k sits in row k // pf at bit 4 * (k % pf)
  (bits * (k % pf) for 8 bits): packed along the input dimension, low bits first;
- `<layer>.qzeros` int32 (G, N / pf): zero point z[g, n] in column n // pf at bit bits * (n % pf), packed along the
  output dimension. checkpoint_format "gptq" (v1, AutoGPTQ's) stores z - 1 in each field, masked to `bits` bits
  (z = 0 is stored as 2**bits - 1); "gptq_v2" (gptqmodel's) stores z itself;
- `<layer>.scales` float16 (G, N); `<layer>.g_idx` int32 (K,), the group of each input: k // group_size
  (desc_act false: qcal's act-order keeps its groups fixed, so the groups are contiguous);
- `<layer>.bias` as it is.
The weight is W[n, k] = scales[g_idx[k], n] * (u[k, n] - z[g_idx[k], n]). Everything else (embeddings, norms,
lm_head, layers kept in float) is written as given. config.json carries `quantization_config` (quant_method
"gptq", bits, group_size, desc_act false, sym, checkpoint_format); quantize_config.json holds the same dict for
loaders that read it there (gptqmodel, AutoGPTQ).

From qcal's table: 4-bit entries (uint4 codes (N, K), scale/zero (N, G) on axis 1, group_size) are asymmetric
(sym false); 8-bit entries (int8 codes (K, N), symmetric, scale (N,)) become u = q + 128 with z = 128 (sym true),
weight-only. Scales are rounded to float16 (the format's type): each dequantized weight moves by at most 2**-11
of itself (the rounding is reported); a scale that float16 cannot hold (0 or inf after rounding) is refused.

Readers of v1 differ on z = 0: onnxruntime-genai's builder adds 1 per masked field (exact), gptqmodel adds
0x11111111 to each int32 (a field holding 15 carries into the next one). So for v1 each group with z = 0 whose
codes are all <= 2**bits - 2 is written as codes + 1 and z = 1 (the same weights, exactly); groups where that is
impossible are counted in the stats (`v1_carry_groups`): gptqmodel would shift the next zero point of those by
one; write "gptq_v2" for gptqmodel/transformers when it is not 0 (the builder reads v1 only).

Converting with onnxruntime-genai 0.18 (it also needs the `onnx-ir` package, which it does not declare):
    python -m onnxruntime_genai.models.builder -i DIR -o OUT -p int4 -e cpu -c CACHE \
        --extra_options nodes_to_exclude=/lm_head/MatMul,/model/embed_tokens/Gather accuracy_level=1
(`-p int4` for the 8-bit checkpoint too: the bits come from quantization_config). Without nodes_to_exclude the
builder re-quantizes the float lm_head (and a tied embedding) to int4 round-to-nearest itself; its CPU default
accuracy_level=4 quantizes MatMulNBits inputs to int8 on the fly. It needs every decoder Linear quantized and
each input size a multiple of group_size (`builder_notes` says which of these a written checkpoint misses).

Imports nothing of qcal (numpy and safetensors only).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exporters.errors import ExporterError
from exporters.quant_table import QuantTable, TensorQuant, atomic_write_text

WEIGHT = ".weight"
FORMATS = ("gptq", "gptq_v2")
WEIGHTS_FILE = "model.safetensors"


# --- packing ------------------------------------------------------------------------------------------------

def pack_int32(values: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Unsigned `bits`-bit values (2-D) -> int32, 32 / bits consecutive values along `axis` per word, the first
    in the lowest bits (GPTQ's qweight along axis 0, qzeros along axis 1). Values are masked to `bits` bits."""
    if bits not in (2, 4, 8):
        raise ExporterError(f"pack_int32: bits={bits}; GPTQ packs 2, 4 or 8 bits per field into int32.")
    pf = 32 // bits
    v = np.moveaxis(np.asarray(values).astype(np.int64) & ((1 << bits) - 1), axis, 0)
    if v.shape[0] % pf:
        raise ExporterError(f"pack_int32: {v.shape[0]} values along axis {axis} is not a multiple of {pf} "
                            f"({bits}-bit fields per int32); pad the layer or choose another format.")
    f = v.astype(np.uint32).reshape(v.shape[0] // pf, pf, *v.shape[1:])
    shifts = (np.arange(pf, dtype=np.uint32) * bits).reshape(1, pf, *([1] * (f.ndim - 2)))
    words = np.bitwise_or.reduce(f << shifts, axis=1).astype(np.uint32)
    return np.ascontiguousarray(np.moveaxis(words.view(np.int32), 0, axis))


def unpack_int32(packed: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """The inverse of pack_int32: int32 words -> unsigned values (int64), 32 / bits per word along `axis`."""
    pf = 32 // bits
    w = np.moveaxis(np.asarray(packed, dtype=np.int32).view(np.uint32), axis, 0)
    shifts = (np.arange(pf, dtype=np.uint32) * bits).reshape(1, pf, *([1] * (w.ndim - 1)))
    v = (w[:, None] >> shifts) & np.uint32((1 << bits) - 1)
    return np.moveaxis(v.reshape(w.shape[0] * pf, *w.shape[1:]).astype(np.int64), 0, axis)


# --- one layer ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GPTQLinear:
    """One Linear in GPTQ's tensors (see the module docstring), with what writing it changed."""

    qweight: np.ndarray     # int32 (K / pf, N)
    qzeros: np.ndarray      # int32 (G, N / pf)
    scales: np.ndarray      # float16 (G, N)
    g_idx: np.ndarray       # int32 (K,)
    bits: int
    group_size: int         # -1: one group per output channel
    sym: bool
    shifted_groups: int = 0      # v1: groups with z = 0 written as codes + 1, z = 1
    v1_carry_groups: int = 0     # v1: groups with z = 0 that could not be shifted
    scale_rel_err: float = 0.0   # max |fp16(s) - s| / s

    def tensors(self, layer: str) -> dict[str, np.ndarray]:
        return {f"{layer}.qweight": self.qweight, f"{layer}.qzeros": self.qzeros, f"{layer}.scales": self.scales,
                f"{layer}.g_idx": self.g_idx}


def _fp16_scales(s: np.ndarray, layer: str) -> tuple[np.ndarray, float]:
    s32 = np.asarray(s, dtype=np.float32)
    with np.errstate(over="ignore"):
        s16 = s32.astype(np.float16)
    bad = ~np.isfinite(s16) | (s16 <= 0)
    if bad.any():
        raise ExporterError(f"{layer}: {int(bad.sum())} weight scales (e.g. {float(s32[bad][0]):.3g}) are not "
                            "representable in float16 (GPTQ's scale type: 6e-8 .. 65504); keep the layer in float "
                            "(llm.ignore) or rescale it.")
    return np.ascontiguousarray(s16), float(np.max(np.abs(s16.astype(np.float32) - s32) / s32))


def gptq_linear(entry: TensorQuant, *, checkpoint_format: str = "gptq", layer: str = "",
                w8_group_size: int = -1) -> GPTQLinear:
    """A table weight entry (uint4 group-wise or int8 per channel) in GPTQ's tensors."""
    if checkpoint_format not in FORMATS:
        raise ExporterError(f"checkpoint_format={checkpoint_format!r}: choose one of {FORMATS}.")
    if entry.codes is None:
        raise ExporterError(f"{layer}: the table's weight entry has no codes; load the table with its .arrays.npz.")
    codes = np.asarray(entry.codes)
    if entry.dtype == "uint4" and entry.axis == 1 and entry.group_size and codes.ndim == 2:
        bits, group, sym = 4, int(entry.group_size), False
        u = codes.astype(np.int64).T                                    # (K, N)
        scale, zero = entry.scale.T, entry.zero_point.astype(np.int64).T  # (G, N)
    elif entry.dtype == "int8" and entry.axis == 1 and entry.group_size is None and codes.ndim == 2:
        bits, group, sym = 8, int(w8_group_size), True
        if not np.all(entry.zero_point == 0):
            raise ExporterError(f"{layer}: int8 weights with nonzero zero points; GPTQ's 8 bits here are symmetric.")
        u = codes.astype(np.int64) + 128                                # (K, N), 1..255
        reps = 1 if group == -1 else -(-u.shape[0] // group)
        scale = np.repeat(entry.scale.reshape(1, -1), reps, axis=0)
        zero = np.full(scale.shape, 128, np.int64)
    else:
        raise ExporterError(f"{layer}: a {entry.dtype} weight on axis {entry.axis} (group {entry.group_size}) has "
                            "no GPTQ form; write uint4 codes (N, K) in groups on axis 1, or int8 codes (K, N) per "
                            "channel.")
    k, n = u.shape
    pf, top = 32 // bits, (1 << bits) - 1
    if k % pf or n % pf:
        raise ExporterError(f"{layer}: {k} inputs x {n} outputs; GPTQ packs {pf} codes per int32 along both, so "
                            f"both must be multiples of {pf}. Keep this layer in float (llm.ignore).")
    g_idx = (np.arange(k) // (k if group == -1 else group)).astype(np.int32)
    if scale.shape != (int(g_idx[-1]) + 1, n):
        raise ExporterError(f"{layer}: scales {scale.shape} do not match {k} inputs in groups of {group}.")
    shifted = carry = 0
    if checkpoint_format == "gptq":
        group_max = np.full(zero.shape, -1, np.int64)
        np.maximum.at(group_max, g_idx, u)
        can = (zero == 0) & (group_max < top)
        u = np.where(can[g_idx], u + 1, u)                              # same weights
        zero = np.where(can, 1, zero)
        shifted, carry = int(can.sum()), int((zero == 0).sum())
        stored = (zero - 1) & top
    else:
        stored = zero
    s16, err = _fp16_scales(scale, layer)
    return GPTQLinear(pack_int32(u, bits, 0), pack_int32(stored, bits, 1), s16, g_idx, bits, group, sym, shifted,
                      carry, err)


# --- the checkpoint -----------------------------------------------------------------------------------------

def quantization_config(bits: int, group_size: int, sym: bool, checkpoint_format: str,
                        modules: Iterable[str] | None = None, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `quantization_config` of config.json (transformers' GPTQConfig keys). `modules`: the quantized Linear
    names when some decoder Linear stays float (optimum converts only those: modules_in_block_to_quantize)."""
    qc: dict[str, Any] = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False,
                          "sym": sym, "true_sequential": True, "damp_percent": 0.01,
                          "checkpoint_format": checkpoint_format, "format": checkpoint_format,
                          "pack_dtype": "int32", "meta": dict(meta or {})}
    if modules is not None:
        qc["modules_in_block_to_quantize"] = [sorted(modules)]
    return qc


def write_hf_gptq(directory: str | Path, table: QuantTable, float_tensors: Mapping[str, np.ndarray],
                  hf_config: Mapping[str, Any], *, checkpoint_format: str = "gptq", w8_group_size: int = -1,
                  meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write model.safetensors, config.json and quantize_config.json into `directory`; the stats of the write.

    `float_tensors`: every tensor of the model that is not a quantized Linear's weight (embeddings, norms, biases,
    lm_head, layers kept in float), by its state-dict name, tied duplicates already removed. `hf_config`: the
    model's config.json dict. The tokenizer and generation config are the caller's to save beside them."""
    from safetensors.numpy import save_file

    d = Path(directory)
    layers = sorted(k.removesuffix(WEIGHT) for k, v in table.tensors.items() if v.kind == "weight")
    if not layers:
        raise ExporterError("the table quantizes no weight; nothing to write as a GPTQ checkpoint.")
    clash = [n + WEIGHT for n in layers if n + WEIGHT in float_tensors]
    if clash:
        raise ExporterError(f"float_tensors holds the float weight of quantized layers ({clash[:3]}); pass only the "
                            "tensors that are not a quantized Linear's weight.")
    out: dict[str, np.ndarray] = {}
    per: dict[str, GPTQLinear] = {}
    for name in layers:
        per[name] = g = gptq_linear(table.tensors[name + WEIGHT], checkpoint_format=checkpoint_format, layer=name,
                                    w8_group_size=w8_group_size)
        out.update(g.tensors(name))
    kinds = {(g.bits, g.group_size, g.sym) for g in per.values()}
    if len(kinds) != 1:
        raise ExporterError(f"the table mixes weight formats {sorted(kinds)}; one GPTQ checkpoint has one bits / "
                            "group_size (quantize every layer with one scheme).")
    bits, group, sym = kinds.pop()
    for k, v in float_tensors.items():
        a = np.asarray(v)
        if not np.issubdtype(a.dtype, np.floating):
            raise ExporterError(f"float tensor {k} is {a.dtype}; pass float arrays (numpy has no bfloat16: "
                                "convert it to float32 first).")
        out[k] = np.ascontiguousarray(a)
    float_linears = [n for n in table.float_nodes if n + WEIGHT in float_tensors]
    modules = layers if float_linears else None
    qc = quantization_config(bits, group, sym, checkpoint_format, modules, meta)
    config = {k: v for k, v in hf_config.items() if k != "quantization_config"}
    config["quantization_config"] = qc
    d.mkdir(parents=True, exist_ok=True)
    # contiguous: safetensors.numpy writes a strided view's buffer in memory order, not its logical order
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(d / WEIGHTS_FILE), metadata={"format": "pt"})
    atomic_write_text(d / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    atomic_write_text(d / "quantize_config.json", json.dumps(qc, indent=2, sort_keys=True) + "\n")
    stats: dict[str, Any] = {"files": [WEIGHTS_FILE, "config.json", "quantize_config.json"], "quantized_layers": len(layers),
             "bits": bits, "group_size": group, "sym": sym, "checkpoint_format": checkpoint_format,
             "float_linears": float_linears, "zero_shifted_groups": sum(g.shifted_groups for g in per.values()),
             "v1_carry_groups": sum(g.v1_carry_groups for g in per.values()),
             "scale_fp16_max_rel_err": max(g.scale_rel_err for g in per.values()),
             "ragged_group_layers": [n for n in layers if group > 0 and per[n].g_idx.size % group]}
    stats["notes"] = builder_notes(stats)
    for note in stats["notes"]:
        warnings.warn(note, stacklevel=2)
    return stats


def builder_notes(stats: Mapping[str, Any]) -> list[str]:
    """What keeps a written checkpoint from converting exactly with onnxruntime-genai's model builder (0.18) or
    loading exactly in gptqmodel, each with its fix."""
    notes = []
    group, ragged, floats = stats["group_size"], stats["ragged_group_layers"], stats["float_linears"]
    if ragged:
        notes.append(f"onnxruntime-genai's model builder needs each quantized layer's input size to be a multiple "
                     f"of group_size={group}; {len(ragged)} layers are not (e.g. {ragged[0]}), so it fails on this "
                     "checkpoint (transformers loads it). Quantize with llm.group_size dividing every input size "
                     "(e.g. 64 for a hidden size of 576).")
    if group > 0 and (group < 16 or group & (group - 1)):
        notes.append(f"group_size={group}: the model builder's MatMulNBits needs a power of 2 >= 16 (e.g. 32, 64, "
                     "128); quantize with one of those.")
    if floats:
        notes.append(f"{len(floats)} Linear layers kept in float (e.g. {floats[0]}): transformers loads them as "
                     "float (modules_in_block_to_quantize), the model builder (0.18) fails on them; for the builder "
                     "quantize every decoder Linear (llm.keep_float_ratio=0, llm.ignore=['lm_head']).")
    if stats["v1_carry_groups"]:
        notes.append(f"{stats['v1_carry_groups']} groups have zero point 0 and a code 15: in v1 gptqmodel (and so "
                     "transformers) reads the next zero point of each one higher by 1 (the builder reads them "
                     "exactly); for transformers write checkpoint_format='gptq_v2'.")
    if stats["checkpoint_format"] == "gptq_v2":
        notes.append("checkpoint_format='gptq_v2': the model builder (0.18) reads v1 zero points only (it adds 1 to "
                     "each), so it would shift every zero point by one; for the builder write 'gptq'.")
    return notes
