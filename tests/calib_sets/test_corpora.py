"""Named corpora and the paper's control sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from calib_sets import CalibSetError, SourceNotFoundError, corpora


def _encode(s: str) -> list[int]:
    return [ord(c) % 100 for c in s]


def test_pydoc_topics_is_english_prose() -> None:
    text = corpora.pydoc_topics()
    assert len(text) > 100_000 and "the" in text


def test_token_windows_are_exact_and_offset() -> None:
    ts = corpora.token_windows("abcdefghij" * 10, _encode, name="x", tokenizer_name="chr", seq_len=16, n=3, offset=1)
    assert len(ts) == 3 and [s.index for s in ts] == [1, 2, 3]
    assert all(len(s.tokens or ()) == 16 for s in ts) and "tokenizer=chr" in ts.recipe


def test_random_tokens_are_reproducible_and_skip_special() -> None:
    a = corpora.random_tokens(100, tokenizer_name="t", seq_len=32, n=4, seed=1, special=range(10))
    b = corpora.random_tokens(100, tokenizer_name="t", seq_len=32, n=4, seed=1, special=range(10))
    assert a.content_hash == b.content_hash
    assert min(min(s.tokens or ()) for s in a) >= 10


def test_random_punctuation_and_mixed() -> None:
    p = corpora.random_punctuation(_encode, tokenizer_name="chr", seq_len=8, n=3)
    r = corpora.random_tokens(100, tokenizer_name="chr", seq_len=8, n=3)
    m = corpora.mixed([p, r], 4)
    assert [s.source for s in m] == ["random-punctuation", "random-tokens", "random-punctuation", "random-tokens"]
    with pytest.raises(CalibSetError, match="only 3 samples"):
        corpora.mixed([p, r], 7)


def test_austen_missing_package_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="r-cran-janeaustenr"):
        corpora.austen("emma", root=tmp_path)
    with pytest.raises(CalibSetError, match="unknown novel"):
        corpora.austen("dracula")


def test_austen_novel_when_installed() -> None:
    root = Path("/work/data/austen/usr/lib/R/site-library/janeaustenr/data")
    if not (root / "Rdata.rdb").exists() and not (corpora.AUSTEN_DIR / "Rdata.rdb").exists():
        pytest.skip("Debian r-cran-janeaustenr is not unpacked here")
    pytest.importorskip("rdata")
    text = corpora.austen("persuasion", root=root if (root / "Rdata.rdb").exists() else None)
    assert text.lstrip().startswith("Persuasion") or "Sir Walter Elliot" in text[:2000]
