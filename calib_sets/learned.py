"""A learned transformation T of calibration images (MetaAug's network), applied to any calibration set.

    cs2 = Learned("metaaug.safetensors").apply(cs)     # or cs.augment(Learned(...))

The file is what qcal's `Augmenter.save` writes: safetensors weights plus metadata holding T's build config and a
sha256 content hash over that metadata and every tensor. Loading verifies the hash and runs no code; pickles are
refused here (re-save them with qcal's Augmenter.save). Each transformed sample's digest chains its parent's and
T's hash, so the set's content hash and manifest name exactly which T was applied (condition "learned",
params {"t_hash": ...}). T runs on CPU in batches as the set is iterated. This module imports nothing of qcal;
the network is defined here and qcal.augment reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from calib_sets.errors import CalibSetError, SourceNotFoundError
from calib_sets.sample import CalibSet, Item, Sample

__all__ = ["FORMAT", "Learned", "LearnedFileError", "TNetSpec", "TransformNet", "content_hash", "read_t", "t_meta",
           "write_t"]


class LearnedFileError(CalibSetError):
    """A T file is not a verified safetensors MetaAug file (wrong format, altered, or a pickle)."""


FORMAT = "qcal-metaaug-t/1"


@dataclass(frozen=True)
class TNetSpec:
    channels: int = 3
    width: int = 16
    init_scale: float = 1e-3
    seed: int = 0
    max_delta: float = 0.0   # > 0: T(x) = x + max_delta * tanh(head / max_delta), |T(x) - x| bounded


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class TransformNet(nn.Module):
    """Two-level UNet with a residual output: T(x) = x + head(...)."""

    def __init__(self, spec: TNetSpec) -> None:
        super().__init__()
        self.spec = spec
        g = torch.Generator().manual_seed(spec.seed)
        w = spec.width
        self.enc1 = _block(spec.channels, w)
        self.enc2 = _block(w, 2 * w)
        self.mid = _block(2 * w, 2 * w)
        self.dec2 = _block(4 * w, w)
        self.dec1 = _block(2 * w, w)
        self.head = nn.Conv2d(w, spec.channels, 1)
        with torch.no_grad():   # deterministic init from the spec's seed, independent of the global RNG
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                    assert m.bias is not None
                    m.bias.zero_()
            self.head.weight.mul_(spec.init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2, ceil_mode=True))
        m = self.mid(F.max_pool2d(e2, 2, ceil_mode=True))
        d2 = self.dec2(torch.cat([F.interpolate(m, size=e2.shape[-2:], mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="nearest"), e1], 1))
        delta = self.head(d1)
        if self.spec.max_delta > 0:
            delta = self.spec.max_delta * torch.tanh(delta / self.spec.max_delta)
        return x + delta


def content_hash(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def t_meta(net: TransformNet, training: dict[str, Any]) -> dict[str, Any]:
    """The metadata a T file holds: the format, T's build spec and the (plain-dict) training record."""
    return {"format": FORMAT, "spec": asdict(net.spec), "training": training}


def write_t(path: str | Path, net: TransformNet, training: dict[str, Any]) -> str:
    """Write T as the safetensors file read_t reads (weights + t_meta + its content hash), atomically; returns
    the hash. qcal's Augmenter.save writes through this, so the format has one writer and one reader, both here."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = t_meta(net, training)
    digest = content_hash(state, meta)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"qcal": json.dumps(meta, sort_keys=True), "sha256": digest})
        os.chmod(tmp, 0o644)   # mkstemp creates 0600; T files are meant to be shared
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return digest


def read_t(path: str | Path) -> tuple[TransformNet, dict[str, Any], str]:
    """(T, its metadata, its sha256) from a safetensors file written by qcal's Augmenter.save; the stored hash
    must match the content. Pickles are refused: they would run code from the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise SourceNotFoundError(f"{path}: no such T file; write one with qcal's Augmenter.save(path).")
    with path.open("rb") as f:
        head = f.read(2)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise LearnedFileError(f"{path} is a pickle: loading it runs code from the file. Load it in qcal with "
                               "Augmenter.load(path, trust=True) if you created it, and re-save it with "
                               "Augmenter.save(path) (safetensors).")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as e:
        raise LearnedFileError(f"{path}: not a readable safetensors T file ({e}); write one with "
                               "Augmenter.save(path).") from e
    try:
        meta = json.loads(md["qcal"])
        stored = md["sha256"]
    except (KeyError, ValueError) as e:
        raise LearnedFileError(f"{path}: safetensors file without MetaAug metadata; write it with "
                               "Augmenter.save(path).") from e
    if meta.get("format") != FORMAT:
        raise LearnedFileError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}.")
    if content_hash(state, meta) != stored:
        raise LearnedFileError(f"{path}: content hash does not match the stored sha256 (file altered or "
                               "truncated); re-save T with Augmenter.save(path).")
    net = TransformNet(TNetSpec(**meta["spec"]))
    net.load_state_dict(state)
    return net.eval(), meta, stored


@dataclass(frozen=True)
class Learned:
    """Apply the T saved at `path` to every image of a set. T works on model inputs: x = pixel * scale + offset
    (uint8 RGB pixels; scale 1/255, offset 0 for [0, 1] inputs; offset -0.5 for Fashion-MNIST's [-0.5, 0.5]).
    A one-channel T sees the grey image and its output is written to all three channels."""

    path: str | Path
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    batch: int = 32

    def apply(self, cs: CalibSet) -> CalibSet:
        net, _, digest = read_t(self.path)
        runner = _Batched(net, cs.items(), self.scale, self.offset, self.batch)
        tag = f"learned={digest}|scale={self.scale!r}|offset={self.offset!r}"
        params = {"t_hash": digest}
        items = [it.transformed(partial(runner.sample, i), tag, condition="learned", params=params)
                 for i, it in enumerate(cs.items())]
        return CalibSet(items, "|".join(r for r in (cs.recipe, f"learned={digest}") if r), cs.skipped)


class _Batched:
    """Runs T over `batch` consecutive items at the first request of any of them; keeps one batch at a time."""

    def __init__(self, net: TransformNet, items: list[Item], scale: float, offset: float, batch: int) -> None:
        self.net, self.items, self.scale, self.offset, self.batch = net, items, scale, offset, max(1, batch)
        self.start, self.out = -1, [np.empty(0, np.uint8)]

    def sample(self, i: int, _parent: Sample | None = None) -> Sample:
        start = i - i % self.batch
        if start != self.start:
            parents = [_parent if k == i and _parent is not None else it.load()
                       for k, it in enumerate(self.items[start:start + self.batch], start)]
            self.out, self.start = self._run([p.image for p in parents]), start
        s = _parent if _parent is not None else self.items[i].load()
        return replace(s, image=self.out[i - start], condition="learned")

    @torch.no_grad()
    def _run(self, images: list[np.ndarray]) -> list[np.ndarray]:
        out = list(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, im in enumerate(images):   # same-size images run stacked
            groups.setdefault(im.shape, []).append(k)
        for idx in groups.values():
            x = torch.from_numpy(np.stack([images[k] for k in idx])).float().permute(0, 3, 1, 2)
            if self.net.spec.channels == 1:
                x = x.mean(1, keepdim=True)
            y = self.net(x * self.scale + self.offset)
            px = ((y - self.offset) / self.scale).round().clamp(0, 255).to(torch.uint8)
            px = px.expand(-1, 3, -1, -1) if px.shape[1] == 1 else px
            for j, k in enumerate(idx):
                out[k] = np.ascontiguousarray(px[j].permute(1, 2, 0).numpy())
        return out
