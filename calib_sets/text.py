"""Text corpora for LLM calibration: documents, or fixed-length token windows.

A corpus is a .txt file (documents separated by blank lines), a .jsonl file (one {"text": ...} per line),
or a folder of such files (sorted). Tokens come from `tokenizer`: an object with .encode (a Hugging Face
tokenizer), a function str -> list[int], "words" (whitespace words, the default) or "chars".
Text corpora are small next to images, so the windows are cut up front; only the text is kept.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from calib_sets.errors import CalibSetError, EmptyCalibSetError, SourceNotFoundError
from calib_sets.hashing import HASH_VERSION

TEXT_EXTS = frozenset({".txt", ".md", ".jsonl"})


@dataclass(frozen=True)
class TextSample:
    text: str
    key: str                          # "corpus.txt#window=3" or "corpus.txt#doc=12"
    source: str
    index: int
    tokens: tuple[int, ...] | None = None  # token ids when a real tokenizer was given


class TextSet:
    """Iterable, immutable list of TextSamples with a content hash (texts + how they were cut)."""

    def __init__(self, samples: Sequence[TextSample], recipe: str) -> None:
        self._samples = tuple(samples)
        self.recipe = recipe

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[TextSample]:
        return iter(self._samples)

    def __getitem__(self, i: int) -> TextSample:
        return self._samples[i]

    def __or__(self, other: TextSet) -> TextSet:
        return TextSet(self._samples + other._samples, f"{self.recipe}|{other.recipe}")

    def take(self, n: int) -> TextSet:
        return TextSet(self._samples[:n], self.recipe)

    def subset(self, indices: Sequence[int]) -> TextSet:
        return TextSet([self._samples[i] for i in indices], self.recipe)

    def keys(self) -> list[str]:
        return [s.key for s in self._samples]

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256(f"{HASH_VERSION}/text\n{self.recipe}\n".encode())
        for s in self._samples:
            h.update(_digest(s).encode() + b"\n")
        return h.hexdigest()

    def manifest(self) -> dict[str, Any]:
        return {"content_hash": self.content_hash, "recipe": self.recipe, "n": len(self),
                "samples": [{"key": s.key, "source": s.source, "index": s.index,
                             "digest": _digest(s)} for s in self._samples]}


def _digest(s: TextSample) -> str:
    tokens = ",".join(map(str, s.tokens)) if s.tokens is not None else ""
    return hashlib.sha256(f"{s.text}\x00{tokens}".encode()).hexdigest()


def read_documents(path: Path) -> list[tuple[str, str]]:
    """(file name, document) pairs, in file order."""
    if not path.exists():
        raise SourceNotFoundError(f"text corpus {path} does not exist; give a .txt/.jsonl file or a folder of them.")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_EXTS) if path.is_dir() else [path]
    docs: list[tuple[str, str]] = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        if f.suffix.lower() == ".jsonl":
            for n, line in enumerate(text.splitlines()):
                if not line.strip():
                    continue
                try:
                    docs.append((f.name, str(json.loads(line)["text"])))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise CalibSetError(f"{f}:{n + 1}: expected a JSON object with a 'text' field ({e}).") from e
        else:
            docs += [(f.name, d.strip()) for d in re.split(r"\n\s*\n", text) if d.strip()]
    return docs


def _encoder(tokenizer: object | None) -> tuple[Callable[[str], list[Any]], Callable[[list[Any]], str], str]:
    """(encode, decode, name). For words/chars the 'tokens' are the strings themselves."""
    if tokenizer is None or tokenizer == "words":
        return str.split, " ".join, "words"
    if tokenizer == "chars":
        return list, "".join, "chars"
    enc = getattr(tokenizer, "encode", None) or tokenizer
    if not callable(enc):
        raise CalibSetError(f"tokenizer {tokenizer!r}: give an object with .encode, a function str -> list[int], "
                            "'words' or 'chars'.")
    dec = getattr(tokenizer, "decode", None)
    name = str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__))
    return (lambda s: list(enc(s))), (lambda t: str(dec(t)) if dec else ""), name


def text_set(path: Path, *, seq_len: int = 512, n: int | None = None, tokenizer: object | None = None,
             mode: Literal["windows", "documents"] = "windows", seed: int = 0) -> TextSet:
    """windows: the documents joined by blank lines and cut into consecutive windows of exactly seq_len tokens
    (the tail is dropped); documents: one sample per document, cut to seq_len tokens. n: keep n samples drawn
    by `seed`, in corpus order."""
    if seq_len < 1 or (n is not None and n < 1):
        raise CalibSetError(f"text: seq_len={seq_len} and n={n} must be positive.")
    if mode not in ("windows", "documents"):
        raise CalibSetError(f"text: mode={mode!r}; allowed: 'windows', 'documents'.")
    docs = read_documents(path)
    encode, decode, name = _encoder(tokenizer)
    real = name not in ("words", "chars")
    samples: list[TextSample] = []
    if mode == "documents":
        for i, (fname, doc) in enumerate(docs):
            toks = encode(doc)[:seq_len]
            text = (decode(toks) or doc) if real else decode(toks)
            samples.append(TextSample(text, f"{fname}#doc={i}", str(path), i,
                                      tuple(int(t) for t in toks) if real else None))
    else:
        toks = encode("\n\n".join(d for _, d in docs))
        for i in range(len(toks) // seq_len):
            w = toks[i * seq_len:(i + 1) * seq_len]
            samples.append(TextSample(decode(w), f"{path.name}#window={i}", str(path), i,
                                      tuple(int(t) for t in w) if real else None))
        if not samples:
            raise EmptyCalibSetError(f"text corpus {path} has {len(toks)} {name} tokens, fewer than seq_len={seq_len}; "
                                     "lower seq_len or add text.")
    if not samples:
        raise EmptyCalibSetError(f"text corpus {path} holds no document (files with {sorted(TEXT_EXTS)}).")
    if n is not None and n < len(samples):
        keep = sorted(np.random.default_rng(seed).choice(len(samples), n, replace=False).tolist())
        samples = [samples[i] for i in keep]
    return TextSet(samples, f"text:{mode}:seq_len={seq_len}:tokenizer={name}:n={n}:seed={seed}")
