"""Loading Hugging Face causal LMs: safetensors folders, GGUF files, and the errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from calib_sets import Source
from calib_sets.corpora import random_tokens
from qcal.errors import CheckpointError
from qcal.models.hf_llm import HFCausalLM, TokenizerMismatchError, looks_like_llm
from tests.llm_tiny import save_tiny, tiny_text

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def test_safetensors_folder_loads_with_tokenizer(tiny_dir: Path) -> None:
    lm = HFCausalLM.load(tiny_dir)
    assert lm.vocab_size == 64 and lm.encode("w0 w1") == [3, 4]
    assert looks_like_llm(tiny_dir) and looks_like_llm(lm)
    assert lm.model.config._attn_implementation == "eager"


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        HFCausalLM.load(tmp_path / "nope")


def test_folder_without_weights(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json and no \.gguf"):
        HFCausalLM.load(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        HFCausalLM.load(tmp_path)


def test_pickled_weights_need_trust(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    with pytest.raises(CheckpointError, match="trust_checkpoint=True"):
        HFCausalLM.load(tmp_path)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(CheckpointError, match="magic bytes"):
        HFCausalLM.load(f)


def test_truncated_gguf_file(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 8)
    with pytest.raises(CheckpointError, match="cannot load|no usable tokenizer"):
        HFCausalLM.load(f)


def test_two_gguf_files_are_ambiguous(tmp_path: Path) -> None:
    for n in ("a.gguf", "b.gguf"):
        (tmp_path / n).write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="pass one of them"):
        HFCausalLM.load(tmp_path)


def test_tokenizer_mismatch(tiny_dir: Path, tmp_path: Path) -> None:
    lm = HFCausalLM.load(tiny_dir)
    corpus = tmp_path / "c.txt"
    corpus.write_text(tiny_text(200))
    # ids from a bigger vocabulary
    with pytest.raises(TokenizerMismatchError, match="outside the model's vocabulary of 64"):
        lm.token_windows(random_tokens(50000, tokenizer_name=lm.tokenizer_name, seq_len=16, n=2), seq_len=16)

    class Other:
        name_or_path = "gpt2"

        def encode(self, s: str) -> list[int]:
            return [1] * len(s.split())

    with pytest.raises(TokenizerMismatchError, match="tokenized with 'gpt2'"):
        lm.token_windows(Source.text(corpus, seq_len=16, tokenizer=Other()), seq_len=16)
    # plain-text windows (words) are tokenized by the model's tokenizer: fine
    windows = lm.token_windows(Source.text(corpus, seq_len=16), seq_len=16)
    assert windows and all(len(w) == 16 for w in windows)
