"""The transformation network T of MetaAug: a small UNet (C -> C channels, output the size of the input) that
starts near the identity, plus its file format.

T(x) = x + head(unet(x)); the head's weights start at a small random scale (`init_scale`), so T is the identity
within ~init_scale at initialisation while every layer still receives gradient (an exactly-zero head would leave
the hinge and feature terms with zero gradient at the identity, where both are at a stationary point).

Files are safetensors: the weights plus metadata holding T's build config and its content hash (sha256 over the
config and every tensor's bytes). Loading a safetensors file runs no code; a pickled T (torch.save) is refused
unless the caller passes `trust=True`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from qcal.errors import CheckpointError, UntrustedCheckpointError

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


@dataclass
class Augmenter:
    """A learned T with the config it was trained with (a plain dict, e.g. MetaAugConfig.to_dict()) and the
    per-layer training log. `hash` identifies the weights and config; it goes in calibration manifests."""

    net: TransformNet
    training: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "spec": asdict(self.net.spec), "training": self.training}

    @property
    def hash(self) -> str:
        return content_hash(self.net.state_dict(), self.meta)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """T(x), batched, no gradient."""
        self.net.eval()
        return torch.cat([self.net(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else x

    def save(self, path: str | Path) -> str:
        """Write safetensors (weights + config + hash) atomically; returns the hash."""
        from safetensors.torch import save_file

        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        digest = content_hash(state, self.meta)
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", suffix=".tmp")
        os.close(fd)
        try:
            save_file(state, tmp, metadata={"qcal": json.dumps(self.meta, sort_keys=True), "sha256": digest})
            os.chmod(tmp, 0o644)   # mkstemp creates 0600; T files are meant to be shared
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return digest

    @staticmethod
    def load(path: str | Path, *, trust: bool = False) -> Augmenter:
        """Read a T written by `save` (safetensors, no code runs). Anything else is a pickle: refused unless
        trust=True, since unpickling a file runs code from it."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such MetaAug file; write one with Augmenter.save(path).")
        with path.open("rb") as f:
            head = f.read(8)
        if head[:2] == b"PK" or head[:1] == b"\x80":   # torch.save zip archive or raw pickle
            if not trust:
                raise UntrustedCheckpointError(
                    f"{path} is a pickle: loading it runs code from the file. Pass trust=True only if you created "
                    "it, or re-save it as safetensors with Augmenter.save(path).")
            obj = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(obj, Augmenter):
                raise CheckpointError(f"{path}: the pickle holds a {type(obj).__name__}, not a MetaAug Augmenter.")
            return obj
        return _load_safetensors(path)


def _load_safetensors(path: Path) -> Augmenter:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors MetaAug file ({e}); write one with "
                              "Augmenter.save(path).") from e
    try:
        meta = json.loads(md["qcal"])
        stored = md["sha256"]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: safetensors file without qcal MetaAug metadata; write it with "
                              "Augmenter.save(path).") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}.")
    if content_hash(state, meta) != stored:
        raise CheckpointError(f"{path}: content hash does not match the stored sha256 (file altered or "
                              "truncated); re-save T with Augmenter.save(path).")
    net = TransformNet(TNetSpec(**meta["spec"]))
    net.load_state_dict(state)
    return Augmenter(net, meta["training"])
