"""Hugging Face causal LMs: a safetensors folder or a GGUF file, loaded with its tokenizer in fp32.

GGUF files are dequantized to fp32 by transformers (needs `gguf`); the weights then sit on the file's grid.
Pickled weights (`pytorch_model.bin`) run code when loaded: refused unless trust_checkpoint=True.
Attention is forced to "eager" so the model exports to ONNX and runs the same in every backend.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcal.errors import CheckpointError, QcalError


class TokenizerMismatchError(QcalError):
    """A text set was tokenized with another tokenizer than the model's."""


@dataclass
class HFCausalLM:
    """A loaded causal LM: `model` (torch, fp32, eval), `tokenizer`, and where they came from."""

    model: Any
    tokenizer: Any
    source: str
    gguf_file: str | None = None
    family: str = "hf-llm"
    task: str = "llm"

    @classmethod
    def load(cls, path: str | Path, *, trust_checkpoint: bool = False) -> HFCausalLM:
        p = Path(path)
        if not p.exists():
            raise CheckpointError(f"LLM checkpoint {p} does not exist; give a Hugging Face model folder "
                                  "(config.json + *.safetensors) or a .gguf file.")
        folder, gguf = _locate(p, trust_checkpoint)
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise CheckpointError(f"loading {p} needs transformers: `pip install 'qcal[llm]'` ({e}).") from e
        kw: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), **kw)
        except Exception as e:  # transformers raises OSError/ValueError/KeyError by case
            raise CheckpointError(f"{p}: no usable tokenizer ({type(e).__name__}: {e}); put tokenizer.json "
                                  "beside the weights (GGUF files carry theirs).") from e
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                         attn_implementation="eager", **kw)
        except Exception as e:
            hint = "is it a complete GGUF file? (`pip install gguf` is needed)" if gguf else \
                "check config.json and the *.safetensors files"
            raise CheckpointError(f"{p}: transformers cannot load it as a causal LM "
                                  f"({type(e).__name__}: {e}); {hint}.") from e
        model.eval()
        return cls(model, tokenizer, str(p), gguf)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def tokenizer_name(self) -> str:
        """The name calib_sets writes into a TextSet recipe when given this tokenizer."""
        return str(getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))

    def model_hash(self) -> str:
        src = Path(self.source)
        f = src if src.is_file() else next(iter(sorted(src.glob("*.safetensors"))), None)
        if f is None:
            return "unknown"
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
        return h.hexdigest()

    def token_windows(self, texts: Any, *, seq_len: int) -> list[list[int]]:
        """Token id windows of a calib_sets TextSet (or a list of strings), checked against this tokenizer.

        Samples cut with token ids must come from this tokenizer (same name in the recipe, ids < vocab);
        samples without ids ('words'/'chars' windows, documents) are tokenized here and cut to seq_len.
        """
        recipe = str(getattr(texts, "recipe", ""))
        out: list[list[int]] = []
        for s in texts:
            ids = getattr(s, "tokens", None)
            if ids is not None:
                _check_ids(ids, recipe, self)
                out.append(list(ids)[:seq_len])
            else:
                text = s if isinstance(s, str) else s.text
                out.append(self.encode(text)[:seq_len])
        return [w for w in out if len(w) >= 2]


def _check_ids(ids: Any, recipe: str, lm: HFCausalLM) -> None:
    name = lm.tokenizer_name
    tag = next((part.split("=", 1)[1] for part in recipe.split(":") if part.startswith("tokenizer=")), None)
    if tag is not None and tag not in ("words", "chars") and tag != name:
        raise TokenizerMismatchError(f"the text set was tokenized with {tag!r} but the model's tokenizer is "
                                     f"{name!r}; cut it again with tokenizer=<the model's tokenizer>, or give "
                                     "plain text (no tokenizer) and qcal tokenizes it.")
    top = max(ids) if len(ids) else 0
    if top >= lm.vocab_size or (len(ids) and min(ids) < 0):
        raise TokenizerMismatchError(f"the text set holds token id {top}, outside the model's vocabulary of "
                                     f"{lm.vocab_size} (recipe {recipe!r}); it was cut with another tokenizer: "
                                     "cut it again with the model's tokenizer.")


def _locate(p: Path, trust_checkpoint: bool) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a .gguf file, a folder holding one, or a safetensors folder."""
    if p.is_file():
        if p.suffix != ".gguf":
            raise CheckpointError(f"{p}: a single LLM file must be .gguf; for safetensors give the folder "
                                  "holding config.json.")
        with open(p, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise CheckpointError(f"{p}: not a GGUF file (the magic bytes 'GGUF' are missing); the download "
                                      "may be truncated or it is another format.")
        return p.parent, p.name
    ggufs = sorted(p.glob("*.gguf"))
    has_config = (p / "config.json").is_file()
    if not has_config and len(ggufs) == 1:
        return _locate(ggufs[0], trust_checkpoint)
    if not has_config and len(ggufs) > 1:
        raise CheckpointError(f"{p} holds {len(ggufs)} .gguf files ({[g.name for g in ggufs]}); pass one of them.")
    if not has_config:
        raise CheckpointError(f"{p}: no config.json and no .gguf file; give a Hugging Face model folder "
                              "(save_pretrained output) or a .gguf file.")
    if not any(p.glob("*.safetensors")):
        if any(p.glob("*.bin")) and not trust_checkpoint:
            raise CheckpointError(f"{p} has only pickled weights (*.bin): loading them runs code from the file. "
                                  "Convert to safetensors, or pass trust_checkpoint=True for files you trust.")
        if not any(p.glob("*.bin")):
            raise CheckpointError(f"{p}: config.json but no *.safetensors weights; copy the weights beside it.")
    return p, None


def looks_like_llm(model: Any) -> bool:
    """True for a .gguf path, a folder with config.json or one .gguf, an HFCausalLM or a transformers model."""
    if isinstance(model, HFCausalLM):
        return True
    if isinstance(model, str | Path):
        p = Path(model)
        return p.suffix == ".gguf" or (p.is_dir() and ((p / "config.json").is_file() or any(p.glob("*.gguf"))))
    return hasattr(model, "config") and hasattr(model, "generate") and hasattr(model, "get_input_embeddings")
