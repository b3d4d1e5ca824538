"""Diagnostics that need no model: coverage of sources/conditions/classes, and the bootstrap helper the
engine uses to tell whether a set is large enough (how much a layer's chosen range moves with the set size)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from calib_sets.errors import CalibSetError
from calib_sets.sample import CalibSet


@dataclass(frozen=True)
class Coverage:
    n: int
    sources: dict[str, int]
    conditions: dict[str, int]
    classes: dict[int, int]          # class -> number of labelled instances
    images_per_class: dict[int, int]  # class -> number of samples holding at least one instance
    labelled: int                    # samples that carry labels (an empty label file counts: no objects)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "sources": self.sources, "conditions": self.conditions, "labelled": self.labelled,
                "classes": {str(k): v for k, v in self.classes.items()},
                "images_per_class": {str(k): v for k, v in self.images_per_class.items()}}

    def table(self) -> str:
        def block(title: str, d: dict[Any, int]) -> list[str]:
            return [f"{title:<12} {'count':>7} {'share':>7}"] + [f"  {k!s:<10} {v:>7} {v / max(self.n, 1):>7.1%}"
                                                                 for k, v in d.items()]
        rows = [f"{self.n} samples, {self.labelled} labelled"]
        rows += block("source", self.sources) + block("condition", self.conditions)
        if self.classes:
            rows += [f"{'class':<12} {'objects':>7} {'images':>7}"]
            rows += [f"  {k!s:<10} {v:>7} {self.images_per_class[k]:>7}" for k, v in self.classes.items()]
        return "\n".join(rows)


def coverage(cs: CalibSet) -> Coverage:
    """Counts per source, condition and class. Reads label files, never decodes an image."""
    classes: Counter[int] = Counter()
    per_image: Counter[int] = Counter()
    labelled = 0
    for it in cs.items():
        labels = it.labels() if it.labels is not None else None
        if labels is None:
            continue
        labelled += 1
        cls = labels[:, 0].astype(int).tolist() if len(labels) else []
        classes.update(cls)
        per_image.update(set(cls))
    return Coverage(len(cs), dict(sorted(Counter(it.source for it in cs.items()).items())),
                    dict(sorted(Counter(cs.conditions()).items())), dict(sorted(classes.items())),
                    dict(sorted(per_image.items())), labelled)


@dataclass(frozen=True)
class BootstrapSpread:
    fractions: tuple[float, ...]
    sizes: tuple[int, ...]   # samples drawn per bootstrap at each fraction
    median: np.ndarray       # (F, L) median of the aggregated value over bootstraps
    spread: np.ndarray       # (F, L) (p95 - p5) / |median|: relative width of the 90% bootstrap interval

    def stable(self, tol: float = 0.05) -> np.ndarray:
        """(L,) bool: at the full size, the chosen value moves by less than `tol` (relative)."""
        return np.asarray(self.spread[-1] < tol)

    def table(self, names: Sequence[str] | None = None) -> str:
        names = list(names) if names is not None else [f"#{i}" for i in range(self.spread.shape[1])]
        head = f"{'layer':<32}" + "".join(f"{f'n={s}':>10}" for s in self.sizes)
        return "\n".join([head] + [f"{name[:31]:<32}" + "".join(f"{v:>10.1%}" for v in self.spread[:, j])
                                   for j, name in enumerate(names)])


Reduce = str | Callable[[np.ndarray], np.ndarray]


def _reduce(x: np.ndarray, how: Reduce) -> np.ndarray:
    if callable(how):
        return np.asarray(how(x))
    if how == "max":
        return x.max(axis=0)
    if how == "mean":
        return x.mean(axis=0)
    if how.startswith("p") and how[1:].replace(".", "", 1).isdigit():
        return np.percentile(x, float(how[1:]), axis=0)
    raise CalibSetError(f"bootstrap_spread: reduce={how!r}; use 'max', 'mean', 'p99.9' or a function.")


def bootstrap_spread(values_per_sample: np.ndarray, fractions: Sequence[float] = (0.25, 0.5, 1.0),
                     n_boot: int = 200, seed: int = 0, reduce: Reduce = "max") -> BootstrapSpread:
    """How stable is a range chosen from n samples? values_per_sample: (N,) or (N, L), one statistic per
    sample and layer (e.g. its max |activation|). For each fraction f, draw n_boot resamples of round(f*N)
    samples with replacement, reduce each over its samples (max = what a MinMax observer picks), and report
    the relative width of the 90% interval. A spread that is still shrinking from n/2 to n says: add samples."""
    v = np.asarray(values_per_sample, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] < 2:
        raise CalibSetError(f"bootstrap_spread: values_per_sample has shape {v.shape}; expected (N, L) with N >= 2.")
    if not fractions or any(not 0 < f <= 1 for f in fractions) or n_boot < 2:
        raise CalibSetError(f"bootstrap_spread: fractions={tuple(fractions)} must lie in (0, 1] and n_boot={n_boot} "
                            "must be >= 2.")
    rng = np.random.default_rng(seed)
    sizes = tuple(max(1, round(f * v.shape[0])) for f in fractions)
    med, spread = [], []
    for m in sizes:
        boots = np.stack([_reduce(v[rng.integers(0, v.shape[0], m)], reduce) for _ in range(n_boot)])  # (B, L)
        lo, mid, hi = np.percentile(boots, [5, 50, 95], axis=0)
        med.append(mid)
        spread.append((hi - lo) / np.maximum(np.abs(mid), 1e-12))
    return BootstrapSpread(tuple(float(f) for f in fractions), sizes, np.array(med), np.array(spread))
