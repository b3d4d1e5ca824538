"""DegradationMix: which fraction of a set stays clean and how the rest is split among conditions.

Counts are exact (largest remainder), not sampled: a 512-sample mix with clean=0.5 has exactly 256 clean
samples. Which sample gets which condition is a permutation drawn from the seed, and each degraded sample's
noise comes from its own seed SeedSequence([seed, position]), recorded in Sample.params["seed"].

A mix of a lazy set (a repeat) is lazy too: position i's condition and seed are computed when item i is asked
for. Up to PERMUTATION_LIMIT positions the permutation is numpy's (one array); beyond, where an array would not
fit, it is a keyed Feistel bijection of range(n) evaluated per position (same exact counts, O(1) memory).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from calib_sets import toml_io
from calib_sets.degrade import Condition
from calib_sets.errors import DegradationParamError, EmptyCalibSetError, RecipeError
from calib_sets.presets import LADDER, LEVELS, QRID, ladder_condition, named_condition
from calib_sets.sample import CalibSet, Item, LazyItems, Sample, canonical

PERMUTATION_LIMIT = 1 << 20  # positions up to which the mix's permutation is a numpy array
_M64 = (1 << 64) - 1


def largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split into integer counts proportional to `weights` (largest remainder; ties go to the first)."""
    s = sum(weights)
    if total == 0 or s == 0:
        return [0] * len(weights)
    exact = [total * w / s for w in weights]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))  # ties: first listed
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def sample_seed(seed: int, position: int) -> int:
    """Per-sample seed: independent streams for every position, stable across numpy versions and machines."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


@dataclass(frozen=True)
class DegradationMix:
    clean: float = 0.5
    weights: tuple[tuple[Condition, float], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.clean, int | float) or not 0.0 <= float(self.clean) <= 1.0:
            raise DegradationParamError(f"DegradationMix: clean={self.clean!r} must be a fraction in [0, 1].")
        names = [c.name for c, _ in self.weights]
        if len(set(names)) != len(names):
            raise DegradationParamError(f"DegradationMix: condition names repeat: {names}.")
        for c, w in self.weights:
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                raise DegradationParamError(f"DegradationMix: weight of {c.name!r} is {w!r}; weights are numbers >= 0.")
        if self.clean < 1.0 and sum(w for _, w in self.weights) <= 0:
            raise DegradationParamError(f"DegradationMix: clean={self.clean} leaves samples to degrade but no "
                                        "condition has a positive weight; add weights or set clean=1.")

    # --- constructors --------------------------------------------------------------------------------------
    @staticmethod
    def of(weights: Mapping[str, float] | Iterable[tuple[str | Condition, float]], clean: float = 0.5) -> DegradationMix:
        """Weights by condition: named ones ('noise_low', 'gaussian_blur_l3', ...) or Condition objects."""
        pairs = weights.items() if isinstance(weights, Mapping) else weights
        return DegradationMix(clean, tuple((c if isinstance(c, Condition) else named_condition(c), float(w))
                                           for c, w in pairs))

    @staticmethod
    def qrid(clean: float = 0.5) -> DegradationMix:
        """The QRID conditions with equal weights (see calib_sets.presets.QRID for the values)."""
        return DegradationMix(clean, tuple((c, 1.0) for c in QRID.values()))

    @staticmethod
    def ladder(kinds: Iterable[str] | None = None, levels: Iterable[int] = LEVELS, clean: float = 0.0) -> DegradationMix:
        """Every (kind, level) rung with equal weight: a severity ladder for robustness curves."""
        conds = [ladder_condition(k, lv) for k in (kinds or LADDER) for lv in levels]
        return DegradationMix(clean, tuple((c, 1.0) for c in conds))

    # --- assignment ----------------------------------------------------------------------------------------
    def counts(self, n: int) -> dict[str, int]:
        n_clean = min(n, math.floor(n * self.clean + 0.5))
        rest = largest_remainder(n - n_clean, [w for _, w in self.weights])
        return {"clean": n_clean, **{c.name: k for (c, _), k in zip(self.weights, rest, strict=True)}}

    def assignment(self, n: int, seed: int) -> list[Condition | None]:
        """Condition of each position (None = clean), a seeded permutation of the exact counts."""
        at = self.condition_at(n, seed)
        return [at(i) for i in range(n)]

    def condition_at(self, n: int, seed: int) -> Callable[[int], Condition | None]:
        """position -> its condition (None = clean) without listing all n: slot order[i] of the exact counts
        laid out clean first, then each condition in weight order."""
        counts = self.counts(n)
        conds: list[Condition | None] = [None, *(c for c, _ in self.weights)]
        ends = list(np.cumsum([counts["clean"], *(counts[c.name] for c, _ in self.weights)]).tolist())
        if n and ends[-1] != n:  # float rounding in largest_remainder, only conceivable near 2**53 samples
            raise DegradationParamError(f"DegradationMix: the counts {counts} add up to {ends[-1]}, not {n}; "
                                        "use fewer samples (a smaller repeat).")
        order = permutation_of(n, seed)
        return lambda i: conds[bisect.bisect_right(ends, order(i))]

    def apply(self, cs: CalibSet, seed: int = 0) -> CalibSet:
        """A lazy CalibSet: each sample is degraded when it is loaded, never before. The items of a lazy set
        (a repeat) are made on access too; those of a source are listed up front, as the source's are."""
        if len(cs) == 0:
            raise EmptyCalibSetError("DegradationMix.apply: the calibration set is empty; nothing to degrade.")
        base = cs.items_view()
        view = _Mixed(base, self, seed)
        recipe = canonical({"mix": self.to_dict(), "seed": seed})
        items: Sequence[Item] = view if isinstance(base, LazyItems) else tuple(view)
        return CalibSet(items, "|".join(r for r in (cs.recipe, recipe) if r), cs.skipped)

    # --- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"clean": float(self.clean), "weights": {c.name: float(w) for c, w in self.weights},
                "conditions": {c.name: c.to_dict() for c, _ in self.weights}}

    @staticmethod
    def from_dict(d: Mapping[str, Any], where: str = "[mix]") -> DegradationMix:
        """From a recipe's [mix] table: `preset = "qrid"` and/or explicit weights; conditions not spelled out
        under [mix.conditions.<name>] are looked up by name."""
        toml_io.check_keys(d, {"clean", "preset", "weights", "conditions", "seed"}, where)
        base = DegradationMix(1.0)
        if "preset" in d:
            if d["preset"] not in ("qrid", "ladder"):
                raise RecipeError(f"{where}: preset={d['preset']!r}; allowed: 'qrid', 'ladder'.")
            base = DegradationMix.qrid() if d["preset"] == "qrid" else DegradationMix.ladder()
        defs = d.get("conditions", {})
        weights = d.get("weights")
        if not isinstance(defs, Mapping) or (weights is not None and not isinstance(weights, Mapping)):
            raise RecipeError(f"{where}: 'weights' and 'conditions' must be tables.")
        try:
            conds = {c.name: c for c, _ in base.weights}
            conds |= {name: Condition.from_dict(name, spec) for name, spec in defs.items()}
            if weights is None:
                weights = {c.name: w for c, w in base.weights} | {name: 1.0 for name in defs}
            pairs = [(conds[n] if n in conds else named_condition(n), w) for n, w in weights.items()]
            return DegradationMix(d.get("clean", base.clean if "preset" in d else 0.5), tuple(pairs))
        except DegradationParamError as e:
            raise RecipeError(f"{where}: {e}") from e

    def to_toml(self, seed: int | None = None) -> str:
        d: dict[str, Any] = {"clean": float(self.clean)}
        if seed is not None:
            d["seed"] = seed
        d |= {"weights": {c.name: float(w) for c, w in self.weights},
              "conditions": {c.name: c.to_dict() for c, _ in self.weights}}
        return toml_io.dumps({"mix": d})

    @staticmethod
    def from_toml(text: str) -> DegradationMix:
        data = toml_io.loads(text, "mix TOML")
        toml_io.check_keys(data, {"mix"}, "mix TOML")
        return DegradationMix.from_dict(data["mix"])


def _degraded(it: Item, cond: Condition, seed: int) -> Item:
    params: dict[str, float | int | str] = dict(cond.params())
    if cond.random:
        params["seed"] = seed

    key = f"{it.key}@{cond.name}"

    def fn(s: Sample) -> Sample:
        return replace(s, image=cond(s.image, seed), key=key, condition=cond.name, params=params)

    return it.transformed(fn, f"{cond.name}:{canonical(cond.to_dict())}:seed={seed}", key=key,
                          condition=cond.name, params=params)


class _Mixed(LazyItems):
    """Item i of base, degraded by the mix's condition at position i with seed sample_seed(seed, i)."""

    def __init__(self, base: Sequence[Item], mix: DegradationMix, seed: int) -> None:
        super().__init__(len(base), base.origin if isinstance(base, LazyItems) else "")
        self.base, self.seed = base, seed
        self.at = mix.condition_at(len(base), seed)
        counts = mix.counts(len(base))
        self._conds = {c.name for c, _ in mix.weights if counts[c.name]}
        self._clean = counts["clean"] > 0

    def _at(self, i: int) -> Item:
        it, cond = self.base[i], self.at(i)
        return it if cond is None else _degraded(it, cond, sample_seed(self.seed, i))

    def names(self) -> set[str]:
        base = self.base.names() if isinstance(self.base, LazyItems) else {it.condition for it in self.base}
        return (base if self._clean else set()) | self._conds


def permutation_of(n: int, seed: int) -> Callable[[int], int]:
    """A seeded bijection of range(n): numpy's permutation up to PERMUTATION_LIMIT, a Feistel network beyond."""
    ss = np.random.SeedSequence([seed, 0x6D6978])
    if n <= PERMUTATION_LIMIT:
        order = np.random.default_rng(ss).permutation(n)
        return lambda i: int(order[i])
    half = ((n - 1).bit_length() + 1) // 2
    mask = (1 << half) - 1
    keys = [int(k) for k in np.random.SeedSequence([seed, 0x6D6978, 1]).generate_state(6, dtype=np.uint64)]

    def perm(i: int) -> int:
        x = i
        while True:  # cycle-walk: the network permutes range(4**half) >= n; walk until back inside range(n)
            left, right = x >> half, x & mask
            for k in keys:
                left, right = right, left ^ (_splitmix(right ^ k) & mask)
            x = (left << half) | right
            if x < n:
                return x

    return perm


def _splitmix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)
