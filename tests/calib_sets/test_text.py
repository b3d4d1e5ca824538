from __future__ import annotations

import json
from pathlib import Path

import pytest

from calib_sets import CalibSetError, EmptyCalibSetError, Source, SourceNotFoundError


def _corpus(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text("\n\n".join(" ".join(f"d{d}w{i}" for i in range(30)) for d in range(5)))
    return p


def test_word_windows_and_documents(tmp_path: Path) -> None:
    p = _corpus(tmp_path)
    ts = Source.text(p, seq_len=40)
    assert len(ts) == 150 // 40 and all(len(s.text.split()) == 40 for s in ts)
    assert ts[0].key == "corpus.txt#window=0" and ts[0].tokens is None
    docs = Source.text(p, seq_len=10, mode="documents")
    assert len(docs) == 5 and docs[1].text.split()[0] == "d1w0" and len(docs[1].text.split()) == 10
    chars = Source.text(p, seq_len=100, tokenizer="chars")
    assert all(len(s.text) == 100 for s in chars)
    some = Source.text(p, seq_len=5, n=4, seed=1)
    assert len(some) == 4 and some.keys() == Source.text(p, seq_len=5, n=4, seed=1).keys()
    assert some.content_hash != Source.text(p, seq_len=5, n=4, seed=2).content_hash
    assert ts.content_hash == Source.text(p, seq_len=40).content_hash
    assert ts.manifest()["n"] == 3 and len(ts.take(2)) == 2


def test_tokenizer_windows_and_jsonl_folder(tmp_path: Path) -> None:
    d = tmp_path / "c"
    d.mkdir()
    (d / "a.jsonl").write_text("\n".join(json.dumps({"text": "abc " * 20}) for _ in range(3)))
    (d / "b.txt").write_text("xyz " * 50)

    class Tok:
        name_or_path = "bytes"

        def encode(self, s: str) -> list[int]:
            return list(s.encode())

        def decode(self, ids: list[int]) -> str:
            return bytes(ids).decode()

    ts = Source.text(d, seq_len=64, tokenizer=Tok())
    assert all(s.tokens is not None and len(s.tokens) == 64 for s in ts)
    assert ts[0].text == bytes(ts[0].tokens or ()).decode() and "tokenizer=bytes" in ts.recipe
    fn = Source.text(d, seq_len=64, tokenizer=lambda s: [ord(c) for c in s])
    assert [s.tokens for s in fn] == [s.tokens for s in ts]


def test_bad_text_inputs(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError):
        Source.text(tmp_path / "none.txt")
    p = _corpus(tmp_path)
    with pytest.raises(EmptyCalibSetError, match="fewer than seq_len=512"):
        Source.text(p)
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(CalibSetError, match="'text' field"):
        Source.text(tmp_path / "bad.jsonl")
    with pytest.raises(CalibSetError, match="tokenizer"):
        Source.text(p, tokenizer=42)
