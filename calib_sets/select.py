"""Choosing n samples from a set: random, stratified (by source / condition / class) or diverse (k-center).

Every strategy is reproducible by seed and returns the chosen samples in their original order, so that
reading a video stays sequential.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Literal

import cv2
import numpy as np

from calib_sets.errors import CalibSetError
from calib_sets.mix import largest_remainder
from calib_sets.sample import CalibSet, Item, Sample

Strategy = Literal["random", "stratified", "diverse"]
By = Literal["source", "condition", "class"] | Callable[[Item], str]
Features = Callable[[Sample], np.ndarray] | np.ndarray


def cheap_features(img: np.ndarray) -> np.ndarray:
    """A 60-d descriptor that costs ~1 ms: on a 64x64 thumbnail, an 8-bin histogram per RGB channel (24),
    a 4x4 grid of mean grey levels (16, the layout), grey mean and std (2), gradient magnitude mean and std (2)
    and a 16-bin magnitude-weighted gradient orientation histogram (16, the texture)."""
    t = np.asarray(cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA), np.uint8)
    hist = [np.bincount(t[..., c].ravel() >> 5, minlength=8) / (64 * 64) for c in range(3)]
    g = cv2.cvtColor(t, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    grid = g.reshape(4, 16, 4, 16).mean(axis=(1, 3)).ravel()
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    mag, ang = cv2.cartToPolar(gx, gy)
    bins = np.minimum((ang.ravel() / (2 * np.pi) * 16).astype(int), 15)
    ori = np.bincount(bins, mag.ravel(), minlength=16).astype(np.float64)
    ori /= max(float(ori.sum()), 1e-6)
    return np.concatenate([*hist, grid, [g.mean(), g.std(), mag.mean(), mag.std()], ori]).astype(np.float32)


def feature_matrix(cs: CalibSet, features: Features | None = None) -> np.ndarray:
    """(N, D) float32: given as an array, or computed sample by sample (streaming) with `features`
    (e.g. a model's pooled features) or `cheap_features`."""
    if isinstance(features, np.ndarray):
        if features.ndim != 2 or features.shape[0] != len(cs):
            raise CalibSetError(f"select: features has shape {features.shape}; expected ({len(cs)}, D), one row "
                                "per sample.")
        return features.astype(np.float32)
    fn = features or (lambda s: cheap_features(s.image))
    rows = [np.asarray(fn(s), np.float32).ravel() for s in cs]
    return np.stack(rows)


def k_center_greedy(x: np.ndarray, k: int, first: int) -> list[int]:
    """Greedy 2-approximation of k-center: repeatedly take the point farthest from all chosen ones.
    x: (N, D). Memory O(N); time O(N k D)."""
    chosen = [first]
    dist = ((x - x[first]) ** 2).sum(axis=1)
    for _ in range(k - 1):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, ((x - x[i]) ** 2).sum(axis=1))
    return chosen


def _group(item: Item, by: By) -> str:
    if callable(by):
        return str(by(item))
    if by == "source":
        return item.source
    if by == "condition":
        return item.condition
    labels = item.labels() if item.labels is not None else None
    if labels is None or len(labels) == 0:
        return "none"
    return str(int(Counter(labels[:, 0].astype(int).tolist()).most_common(1)[0][0]))  # dominant class


def select(cs: CalibSet, n: int, strategy: Strategy = "random", seed: int = 0, features: Features | None = None,
           by: By = "source") -> CalibSet:
    """n samples of cs.
    random: uniformly without replacement.
    stratified: groups by `by` ("source", "condition", "class" = the dominant label class, or a function of
      an Item) get shares proportional to their size (at least one each when n allows), random within.
    diverse: k-center greedy on standardised features (cheap image features unless `features` is given:
      a function Sample -> vector, e.g. a model's pooled features, or an (N, D) array); the first centre is
      drawn by the seed. Decodes every sample once (streaming) to compute features."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise CalibSetError(f"select: n={n!r} must be a positive integer.")
    if n > len(cs):
        raise CalibSetError(f"select: n={n} but the set has only {len(cs)} samples; lower n, add sources, or "
                            "use cs.repeat(n) to reuse samples.")
    rng = np.random.default_rng(seed)
    if strategy == "random":
        idx = rng.choice(len(cs), size=n, replace=False).tolist()
    elif strategy == "stratified":
        groups: dict[str, list[int]] = defaultdict(list)
        for i, it in enumerate(cs.items()):
            groups[_group(it, by)].append(i)
        names = sorted(groups)
        sizes = [len(groups[g]) for g in names]
        if n >= len(names):  # every group at least once, the rest proportionally
            shares = [1 + s for s in largest_remainder(n - len(names), [s - 1 for s in sizes])]
        else:
            shares = largest_remainder(n, sizes)
        idx = []
        for g, k in zip(names, shares, strict=True):
            idx += rng.choice(groups[g], size=min(k, len(groups[g])), replace=False).tolist()
    elif strategy == "diverse":
        x = feature_matrix(cs, features)
        x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)  # every feature on the same scale
        idx = k_center_greedy(x, int(n), int(rng.integers(len(cs))))
    else:
        raise CalibSetError(f"select: strategy={strategy!r}; allowed: 'random', 'stratified', 'diverse'.")
    return cs.subset(sorted(int(i) for i in idx))
