"""A Llama-architecture Hugging Face folder one piece at a time: the model's structure on the meta device, its
tokenizer, and each decoder layer built with its weights only when asked for (memory-mapped safetensors). The
out-of-core calibration (qcal/llm/offload.py) and the layer-by-layer evaluation of its result
(qcal/llm/offload_eval.py) both walk the model through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcal.errors import CheckpointError
from qcal.llm.offload_io import WeightIndex, release_memory, save_shard

EMBED = "embed.safetensors"
SUPPORTED = ("llama",)   # the decoder layer call and masks below are Llama's (SmolLM2, Llama 2/3, TinyLlama)


# --- the model, one piece at a time --------------------------------------------------------------------------

class Skeleton:
    """The model's structure on the meta device (no memory), its tokenizer, and its weights memory-mapped."""

    def __init__(self, folder: Path) -> None:
        try:
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
            from transformers.masking_utils import create_causal_mask
        except ImportError as e:
            raise CheckpointError(f"offload='layers' needs transformers: `pip install 'qcal[llm]'` ({e}).") from e
        self.config = AutoConfig.from_pretrained(str(folder), attn_implementation="eager")
        kind = getattr(self.config, "model_type", "?")
        if kind not in SUPPORTED:
            raise CheckpointError(f"{folder}: model_type {kind!r}; offload='layers' supports {list(SUPPORTED)} "
                                  "(Llama-architecture decoders). Use offload='none' (whole model in memory).")
        self.config.use_cache = False
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32,
                                                          attn_implementation="eager")
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.weights = WeightIndex(folder)
        self.n_layers = int(self.config.num_hidden_layers)
        self.linear_names = [n for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]
        self.tied = bool(getattr(self.config, "tie_word_embeddings", False)) and "lm_head.weight" not in self.weights
        self._mask_fn = create_causal_mask
        self._rotary = type(self.model.model.rotary_emb)(config=self.config)   # real inv_freq, on CPU
        self._ctx: dict[int, dict[str, Any]] = {}

    def embed(self, windows: list[list[int]], shard: Path) -> list[torch.Tensor]:
        """(1, T, H) FP32 hidden states of each window. The embedding matrix is read once, written unchanged to
        `shard` (it stays float) while little else is in memory, and dropped."""
        w = self.weights.get("model.embed_tokens.weight")
        save_shard(shard, {"model.embed_tokens.weight": w})
        hidden = [nn.functional.embedding(torch.tensor([ids]), w) for ids in windows]
        del w
        release_memory()
        return hidden

    def layer(self, i: int) -> nn.Module:
        """Decoder layer i with its fp32 weights loaded (the only full-size tensors in memory)."""
        prefix = f"model.layers.{i}."
        with torch.device("meta"):
            layer = type(self.model.model.layers[i])(self.config, i)
        layer.load_state_dict(self.weights.prefixed(prefix), assign=True, strict=True)
        return layer.eval()

    def norm(self) -> nn.Module:
        with torch.device("meta"):
            norm = type(self.model.model.norm)(self.config.hidden_size, eps=self.config.rms_norm_eps)
        norm.load_state_dict({"weight": self.weights.get("model.norm.weight")}, assign=True)
        return norm

    def lm_head(self) -> nn.Linear:
        name = "model.embed_tokens.weight" if self.tied else "lm_head.weight"
        with torch.device("meta"):
            head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False)
        head.load_state_dict({"weight": self.weights.get(name)}, assign=True)
        return head

    def run_layer(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """One window through one decoder layer, with the mask and rotary embeddings LlamaModel.forward builds."""
        t = h.shape[1]
        ctx = self._ctx.get(t)
        if ctx is None:
            pos = torch.arange(t)[None]
            mask = self._mask_fn(config=self.config, inputs_embeds=h, attention_mask=None, cache=None,
                                 position_ids=pos)
            ctx = self._ctx[t] = {"attention_mask": mask, "position_ids": pos,
                                  "position_embeddings": self._rotary(h, position_ids=pos)}
        return layer(h, cache=None, use_cache=False, **ctx)


def scope(prefix: str, module: nn.Module) -> nn.Module:
    """A module tree in which `module` sits at `prefix` (e.g. model.layers.3), so that it and its children carry
    the names of the full model: statistics, smoothing groups and decisions match the in-memory path's."""
    root = nn.Module()
    parent = root
    *path, last = prefix.split(".")
    for part in path:
        child = nn.Module()
        parent.add_module(part, child)
        parent = child
    parent.add_module(last, module)
    return root


__all__ = ["EMBED", "SUPPORTED", "Skeleton", "scope"]
