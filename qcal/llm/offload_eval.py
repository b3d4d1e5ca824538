"""An out-of-core LLM result evaluated the way it was made: one decoder layer in memory at a time.

`LayerwiseLM(skeleton)` is the FP32 model read from the source folder; `LayerwiseLM(skeleton, folder, table)` is
the quantized model read from the result's shards (qcal/llm/offload_io.py's layout): each quantized Linear becomes
the QuantLinear the calibration wrote -- the same codes, scales and, for per-tensor W8A8, the table's static input
scale and zero point -- and every other tensor (smoothed norms, embeddings, float layers) is the shard's. Calling
it on token ids (1, T) gives logits (1, T, V) with one layer's weights in memory at a time, so a model larger than
memory is evaluated with the memory its calibration needed (each window re-reads the layers: the price).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from exporters.llm_onnx import INPUT, WEIGHT
from exporters.quant_table import QuantTable
from qcal.llm.skeleton import EMBED, Skeleton
from qcal.quant.llm_schemes import ActQuant, Int4Groups, QuantLinear

_CODES, _SCALE, _ZERO = ".weight_codes", ".weight_scale", ".weight_zero"


class LayerwiseLM:
    def __init__(self, skel: Skeleton, folder: Path | None = None, table: QuantTable | None = None,
                 act: ActQuant = ActQuant.NONE) -> None:
        self.skel, self.folder, self.table, self.act = skel, folder, table, act

    def _shard(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        assert self.folder is not None
        return load_file(str(self.folder / name))

    def _quantize(self, tree: nn.Module, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        """Load `tensors` (full names) into the module tree rooted at `prefix`, each quantized Linear replaced."""
        quantized = {k[: -len(_CODES)] for k in tensors if k.endswith(_CODES)}
        for full in sorted(quantized):
            rel = full[len(prefix):]
            parent_name, _, leaf = rel.rpartition(".")
            parent = tree.get_submodule(parent_name) if parent_name else tree
            linear = getattr(parent, leaf)
            codes, scale = tensors[full + _CODES], tensors[full + _SCALE]
            weights: Int4Groups | tuple[torch.Tensor, torch.Tensor]
            if full + _ZERO in tensors:
                group = int(codes.shape[1] // scale.shape[1])
                weights = Int4Groups(codes, scale, tensors[full + _ZERO], group, int(linear.in_features))
                bits = 4
            else:
                weights, bits, group = (codes, scale), 8, 128
            entry = self.table.tensors.get(full + INPUT) if self.table is not None else None
            act = self.act if bits == 8 else ActQuant.NONE
            q = QuantLinear(linear, weight_bits=bits, act=act, group=group, weights=weights,
                            act_range=(float(entry.rmin), float(entry.rmax)) if entry is not None and
                            entry.rmin is not None and entry.rmax is not None else None)
            if entry is not None:   # the table's exact static parameters, not re-derived from the range
                q.act_scale, q.act_zero = float(entry.scale.reshape(-1)[0]), int(entry.zero_point.reshape(-1)[0])
            if full + ".bias" in tensors:
                q.bias = nn.Parameter(tensors[full + ".bias"].float(), requires_grad=False)
            setattr(parent, leaf, q)
        floats = {k[len(prefix):]: v for k, v in tensors.items()
                  if k.startswith(prefix) and not k.endswith((_CODES, _SCALE, _ZERO))
                  and k[: -len(".bias")] not in quantized}
        tree.load_state_dict(floats, assign=True, strict=False)

    def layer(self, i: int) -> nn.Module:
        if self.folder is None:
            return self.skel.layer(i)
        prefix = f"model.layers.{i}."
        with torch.device("meta"):
            layer = type(self.skel.model.model.layers[i])(self.skel.config, i)
        self._quantize(layer, prefix, self._shard(f"layer-{i:05d}.safetensors"))
        return layer.eval()

    def _head(self) -> tuple[nn.Module, nn.Module, torch.Tensor]:
        """The final norm, lm_head and the embedding matrix."""
        if self.folder is None:
            return self.skel.norm(), self.skel.lm_head(), self.skel.weights.get("model.embed_tokens.weight")
        embed = self._shard(EMBED)["model.embed_tokens.weight"]
        head = self._shard("head.safetensors")
        norm = self.skel.norm()
        norm.load_state_dict({"weight": head["model.norm.weight"]}, assign=True)
        cfg = self.skel.config
        with torch.device("meta"):
            linear = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        holder = nn.Module()
        holder.add_module("lm_head", linear)
        if "lm_head" + _CODES in head:
            self._quantize(holder, "", head)
        else:
            linear.load_state_dict({"weight": head.get("lm_head.weight", embed)}, assign=True)
        return norm, holder.get_submodule("lm_head"), embed

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        norm, lm_head, embed = self._head()
        h = nn.functional.embedding(ids, embed)
        for i in range(self.skel.n_layers):
            h = self.skel.run_layer(self.layer(i), h)
        return lm_head(norm(h))


def table_weight_names(table: QuantTable) -> list[str]:
    """The quantized Linears of a table (its weight entries, without the suffix)."""
    return [k[: -len(WEIGHT)] for k, v in table.tensors.items() if v.kind == "weight"]


__all__ = ["LayerwiseLM", "table_weight_names"]
