"""A tiny random Llama and a word-level tokenizer, built offline, saved as a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]


def tiny_llama(seed: int = 0, *, outlier: float = 0.0):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).eval()
    if outlier:
        with torch.no_grad():   # one residual channel far larger than the rest, as in real LLMs
            model.model.embed_tokens.weight[:, 5] *= outlier
            for layer in model.model.layers:
                layer.input_layernorm.weight[5] *= outlier
    return model


def tiny_tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save_tiny(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tiny_llama(seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def tiny_text(n_words: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(3, len(WORDS), (n_words,), generator=g))


def tiny_workspace(d: Path) -> tuple[Path, Path, Path]:
    """The tiny model saved under d/model, a calibration corpus and a held-out corpus (different seeds)."""
    calib, held = d / "calib.txt", d / "held.txt"
    calib.write_text(tiny_text(600, seed=1))
    held.write_text(tiny_text(400, seed=2))
    return save_tiny(d / "model"), calib, held
