"""calib_sets.Learned: a saved MetaAug T applied to a calibration set, batched, recorded in the manifest.

T files are written with calib_sets.learned.write_t (what qcal's Augmenter.save calls; tests/augment checks that
side), so these tests import nothing of qcal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import calib_sets
from calib_sets import CalibSet, Source
from calib_sets.learned import LearnedFileError, TNetSpec, TransformNet, write_t

from .conftest import write_image


class SavedT:
    """A T written to disk: its file, its content hash, and T itself (called without gradient)."""

    def __init__(self, tmp_path: Path, channels: int, seed: int) -> None:
        self.net = TransformNet(TNetSpec(channels=channels, width=4, init_scale=0.5, seed=seed)).eval()
        self.path = tmp_path / f"t{channels}.{seed}.safetensors"
        self.hash = write_t(self.path, self.net, {"note": "t"})

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def saved_t(tmp_path: Path, channels: int = 3, seed: int = 0) -> tuple[Path, SavedT]:
    t = SavedT(tmp_path, channels, seed)
    return t.path, t


def images(tmp_path: Path, n: int = 5) -> CalibSet:
    d = tmp_path / "imgs"
    for i in range(n):
        write_image(d / f"im{i}.png", i, shape=(12, 16))
    return Source.images(d)


def test_learned_applies_t_in_batches_and_matches_t_on_the_pixels(tmp_path: Path) -> None:
    path, aug = saved_t(tmp_path)
    cs = images(tmp_path)
    out = cs.augment(calib_sets.Learned(path, batch=2))
    one = [s.image for s in calib_sets.Learned(path, batch=1).apply(cs)]
    for clean, s, ref in zip(cs, out, one, strict=True):
        x = torch.from_numpy(clean.image).float().permute(2, 0, 1)[None] / 255.0
        want = (aug(x)[0] * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        assert s.image.dtype == np.uint8 and s.image.shape == clean.image.shape
        assert np.abs(s.image.astype(int) - want.astype(int)).max() <= 1
        assert np.array_equal(s.image, ref)                   # batching does not change the result
        assert not np.array_equal(s.image, clean.image)       # T (init_scale 0.5) is not the identity
        assert s.condition == "learned"


def test_manifest_records_t_hash_and_the_set_hash_tracks_t(tmp_path: Path) -> None:
    path, aug = saved_t(tmp_path)
    other, _ = saved_t(tmp_path, seed=1)
    cs = images(tmp_path)
    out = cs.augment(calib_sets.Learned(path))
    m = out.manifest
    assert m.conditions() == {"learned": len(cs)}
    assert all(e.params == {"t_hash": aug.hash} for e in m.entries)
    assert aug.hash in m.recipe and m.verify()
    assert out.content_hash != cs.content_hash
    assert out.content_hash != cs.augment(calib_sets.Learned(other)).content_hash
    assert out.content_hash == cs.augment(calib_sets.Learned(path, batch=3)).content_hash


def test_one_channel_t_writes_grey_to_all_three_channels(tmp_path: Path) -> None:
    path, _ = saved_t(tmp_path, channels=1)
    s = next(iter(images(tmp_path, 1).augment(calib_sets.Learned(path, offset=-0.5))))
    assert np.array_equal(s.image[..., 0], s.image[..., 1]) and np.array_equal(s.image[..., 0], s.image[..., 2])


def test_pickled_or_altered_t_files_are_refused(tmp_path: Path) -> None:
    path, aug = saved_t(tmp_path)
    pickled = tmp_path / "t.pt"
    torch.save(aug.net, pickled)
    cs = images(tmp_path, 1)
    with pytest.raises(LearnedFileError, match="pickle.*trust=True"):
        cs.augment(calib_sets.Learned(pickled))
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(LearnedFileError, match="hash"):
        cs.augment(calib_sets.Learned(path))
