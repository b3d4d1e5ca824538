"""Named text corpora for LLM calibration and the paper's control sets.

- `austen(novel)`: one Jane Austen novel from the Debian package `r-cran-janeaustenr` (public domain), read
  from its R data files without R (needs the `rdata` package: `pip install qcal[llm]`).
- `pydoc_topics()`: Python's own `pydoc_data.topics` (always installed; English technical prose).
- `token_windows(text, ...)`: cut any text into fixed windows of real token ids.
- `random_tokens(...)` / `random_punctuation(...)`: the controls of "Outliers and Calibration Sets have
  Diminishing Effect on Quantization of Modern LLMs": uniform random token ids, or random runs of punctuation.
- `mixed(sets)`: equal shares of several token-window sets, interleaved.

Every set is a `TextSet` of token windows (tokens set), so the recipe names the tokenizer that cut it.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from calib_sets.errors import CalibSetError, EmptyCalibSetError, SourceNotFoundError
from calib_sets.text import TextSample, TextSet

AUSTEN_DIR = Path("/usr/lib/R/site-library/janeaustenr/data")
AUSTEN_NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")
PUNCTUATION = list(".,;:!?-'\"()[]{}*/&%$#@")


def austen(novel: str, *, root: str | Path | None = None) -> str:
    """The text of one novel (lines joined by newlines; blank lines separate paragraphs).

    root: the package's `data` folder (default /usr/lib/R/site-library/janeaustenr/data, where
    `apt-get install r-cran-janeaustenr` or `dpkg -x` of its .deb puts it).
    """
    if novel not in AUSTEN_NOVELS:
        raise CalibSetError(f"austen: unknown novel {novel!r}; choose one of {list(AUSTEN_NOVELS)}.")
    d = Path(root) if root is not None else AUSTEN_DIR
    rdx, rdb = d / "Rdata.rdx", d / "Rdata.rdb"
    if not rdx.is_file() or not rdb.is_file():
        raise SourceNotFoundError(f"austen: {rdx} not found; install Debian r-cran-janeaustenr (or `dpkg -x` "
                                  "its .deb) and pass root=<...>/janeaustenr/data.")
    try:
        import rdata
    except ImportError as e:
        raise CalibSetError("austen: the `rdata` package is missing; `pip install rdata` (in qcal[llm]).") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns "Unknown file type: assumed RDS" for lazy-load objects
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx.read_bytes())))
        off, length = (int(v) for v in index["variables"][novel])
        blob = rdb.read_bytes()[off:off + length]
        # each lazy-load object: 4-byte big-endian length, then a zlib stream of an RDS serialisation
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
    return "\n".join(str(x) for x in lines)


def pydoc_topics() -> str:
    """Python's help topics (pydoc_data.topics), sorted by topic name: ~465k characters of English."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def token_windows(text: str, encode: Callable[[str], Sequence[int]], *, name: str, tokenizer_name: str,
                  seq_len: int = 512, n: int | None = None, decode: Callable[[list[int]], str] | None = None,
                  offset: int = 0) -> TextSet:
    """Consecutive windows of exactly seq_len token ids from `offset` windows in; the first n (all if None)."""
    if seq_len < 1 or (n is not None and n < 1):
        raise CalibSetError(f"token_windows({name}): seq_len={seq_len} and n={n} must be positive.")
    ids = [int(t) for t in encode(text)]
    count = len(ids) // seq_len - offset
    if n is not None:
        count = min(count, n)
    if count < 1:
        raise EmptyCalibSetError(f"{name}: {len(ids)} tokens give no window of {seq_len} after {offset} windows; "
                                 "lower seq_len or give more text.")
    samples = []
    for i in range(offset, offset + count):
        w = ids[i * seq_len:(i + 1) * seq_len]
        samples.append(TextSample(decode(w) if decode else "", f"{name}#window={i}", name, i, tuple(w)))
    return TextSet(samples, f"tokens:{name}:seq_len={seq_len}:tokenizer={tokenizer_name}:n={n}:offset={offset}")


def random_tokens(vocab_size: int, *, tokenizer_name: str, seq_len: int = 512, n: int = 16, seed: int = 0,
                  special: Sequence[int] = ()) -> TextSet:
    """n windows of uniformly random token ids in [0, vocab_size), skipping the `special` ids."""
    if vocab_size < 2:
        raise CalibSetError(f"random_tokens: vocab_size={vocab_size} must be >= 2.")
    rng = np.random.default_rng(seed)
    allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(list(special), dtype=np.int64))
    samples = [TextSample("", f"random-tokens#window={i}", "random-tokens", i,
                          tuple(int(t) for t in rng.choice(allowed, seq_len))) for i in range(n)]
    return TextSet(samples, f"random-tokens:vocab={vocab_size}:seq_len={seq_len}:tokenizer={tokenizer_name}:"
                            f"n={n}:seed={seed}")


def random_punctuation(encode: Callable[[str], Sequence[int]], *, tokenizer_name: str, seq_len: int = 512,
                       n: int = 16, seed: int = 0) -> TextSet:
    """n windows of tokenized random punctuation runs separated by spaces (the paper's nonsense control)."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(PUNCTUATION, int(rng.integers(1, 5)))) for _ in range(seq_len * n * 2)]
    ts = token_windows(" ".join(words), encode, name="random-punctuation", tokenizer_name=tokenizer_name,
                       seq_len=seq_len, n=n)
    return TextSet(list(ts), f"{ts.recipe}:seed={seed}")


def mixed(sets: Sequence[TextSet], n: int) -> TextSet:
    """n samples taking sets in turn (round robin), so each contributes about n / len(sets)."""
    if not sets or any(len(s) == 0 for s in sets):
        raise EmptyCalibSetError("mixed: give non-empty sets.")
    out: list[TextSample] = []
    i = 0
    while len(out) < n:
        s = sets[i % len(sets)]
        j = i // len(sets)
        if j >= len(s):
            raise EmptyCalibSetError(f"mixed: set {s.recipe} has only {len(s)} samples for n={n}.")
        out.append(s[j])
        i += 1
    return TextSet(out, "mixed(" + "|".join(s.recipe for s in sets) + f"):n={n}")
