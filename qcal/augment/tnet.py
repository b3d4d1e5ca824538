"""The transformation network T of MetaAug (defined in calib_sets.learned, which must not import qcal, so that
calib_sets.Learned can apply a saved T to any set) and the Augmenter that saves and loads it (the file format's
writer and reader are calib_sets.learned.write_t / read_t).

T(x) = x + head(unet(x)); the head's weights start at a small random scale (`init_scale`), so T is the identity
within ~init_scale at initialisation while every layer still receives gradient (an exactly-zero head would leave
the hinge and feature terms with zero gradient at the identity, where both are at a stationary point).

Files are safetensors: the weights plus metadata holding T's build config and its content hash (sha256 over the
config and every tensor's bytes). Loading a safetensors file runs no code; a pickled T (torch.save) is refused
unless the caller passes `trust=True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from calib_sets.learned import (
    FORMAT,
    LearnedFileError,
    TNetSpec,
    TransformNet,
    content_hash,
    read_t,
    t_meta,
    write_t,
)
from qcal.errors import CheckpointError, UntrustedCheckpointError

__all__ = ["FORMAT", "Augmenter", "TNetSpec", "TransformNet", "content_hash"]

@dataclass
class Augmenter:
    """A learned T with the config it was trained with (a plain dict, e.g. MetaAugConfig.to_dict()) and the
    per-layer training log. `hash` identifies the weights and config; it goes in calibration manifests."""

    net: TransformNet
    training: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return t_meta(self.net, self.training)

    @property
    def hash(self) -> str:
        return content_hash(self.net.state_dict(), self.meta)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """T(x), batched, no gradient."""
        self.net.eval()
        return torch.cat([self.net(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else x

    def save(self, path: str | Path) -> str:
        """Write safetensors (weights + config + hash) atomically; returns the hash (calib_sets.learned.write_t)."""
        return write_t(path, self.net, self.training)

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
    try:
        net, meta, _ = read_t(path)
    except LearnedFileError as e:
        raise CheckpointError(str(e)) from e
    return Augmenter(net, meta["training"])
