"""x | T(x) | |T(x) - x| in the quantize report (qcal.augment.samples, QuantResult.export)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qcal
from qcal.augment.samples import sample_grid, write_samples_png
from tests.passes.test_apply import Net


def test_grid_layout_and_panels() -> None:
    x = torch.rand(3, 3, 10, 7, generator=torch.Generator().manual_seed(0))
    tx = x.clone()
    tx[1, :, 2, 3] += 0.5                                      # T moved one pixel of the second sample
    grid, gain = sample_grid(x, tx, gap=4)
    assert grid.shape == (3 * 10 + 2 * 4, 3 * 7 + 2 * 4, 3) and grid.dtype == np.uint8
    assert gain == pytest.approx(255.0 / 0.5, rel=1e-4)
    assert (grid[10:14] == 255).all() and (grid[:, 7:11] == 255).all()   # white gaps between rows and panels
    a = x[0].numpy().transpose(1, 2, 0)
    want = np.rint((a - a.min()) / (a.max() - a.min()) * 255)
    assert np.abs(grid[:10, :7].astype(float) - want).max() <= 1          # panel 1: x
    assert np.array_equal(grid[:10, 11:18], grid[:10, :7])                # panel 2: T(x) == x on sample 0
    diff = grid[14:24, 22:29]                                             # panel 3 of sample 1
    assert (diff[2, 3] == 255).all() and diff.sum() == 3 * 255
    assert (grid[:10, 22:29] == 0).all()                                  # no change on sample 0: black


def test_one_channel_is_grey_and_bad_shapes_are_refused(tmp_path: Path) -> None:
    x = torch.rand(2, 1, 5, 6)
    path = tmp_path / "s.png"
    write_samples_png(path, x, x + 0.1)
    img = Image.open(path)
    assert img.format == "PNG" and img.size == (3 * 6 + 8, 2 * 5 + 4) and img.mode == "RGB"
    a = np.asarray(img)
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]              # no temp file left behind
    with pytest.raises(ValueError, match="must be equal"):
        sample_grid(x, x[:1])


def quantize(**kw: object) -> qcal.api.QuantResult:
    cfg = qcal.QuantConfig(calib_size=8, keep_float=qcal.KeepFloatConfig(sensitivity_samples=0), **kw)  # type: ignore[arg-type]
    return qcal.quantize(Net().eval(), calib="bundled:vtest[0:24]", example_input=torch.zeros(1, 3, 32, 32),
                         config=cfg, progress=False)


def test_export_writes_the_samples_png_and_report_section_when_metaaug_ran(tmp_path: Path) -> None:
    rc = qcal.ReconstructConfig(iters=2, batch=4, augment=qcal.MetaAugConfig(iters=2, batch=4, width=2))
    r = quantize(passes=("reconstruct",), reconstruct=rc)
    paths = r.export(tmp_path)
    png = paths["metaaug_samples"]
    assert png == tmp_path / "metaaug_samples.png"
    img = Image.open(png)
    assert img.format == "PNG" and img.mode == "RGB" and img.size == (3 * 32 + 2 * 4, 4 * 32 + 3 * 4)
    img.verify()
    md = paths["report_md"].read_text()
    assert "](metaaug_samples.png)" in md and r.augmenter.hash in md
    assert "| `c2` | 2 |" in md                    # the trained block's row (c1 and fc: first/last, skipped)
    assert '"metaaug_samples"' in paths["report_json"].read_text()
    assert not list(tmp_path.glob(".*tmp"))


def test_nothing_is_written_without_metaaug(tmp_path: Path) -> None:
    r = quantize(passes=("reconstruct",), reconstruct=qcal.ReconstructConfig(iters=2, batch=4))
    paths = r.export(tmp_path)
    assert "metaaug_samples" not in paths and not (tmp_path / "metaaug_samples.png").exists()
    assert "MetaAug" not in paths["report_md"].read_text()


@pytest.mark.slow
def test_yolov8n_block_adaround_metaaug_through_quantize(tmp_path: Path) -> None:
    """The YOLO path end to end: block units around C2f, head convs alone, the detection outer loss, the PNG."""
    from qcal.models.yolo import YoloAdapter

    adapter = YoloAdapter.from_yaml("yolov8n.yaml", nc=3, imgsz=64)
    rc = qcal.ReconstructConfig(iters=2, batch=2, granularity="block", rounding="adaround", qdrop=0.5,
                                augment=qcal.MetaAugConfig(iters=1, batch=2, width=2))
    cfg = qcal.QuantConfig(imgsz=64, calib_size=4, keep_float=qcal.KeepFloatConfig(sensitivity_samples=0),
                           passes=("reconstruct",), reconstruct=rc)
    r = qcal.quantize(adapter, calib="bundled:vtest[0:30]", config=cfg, progress=False)
    meta = r.passes[0].changed["metaaug"]["per_unit"]
    assert "model.2" in meta and {"box_last", "cls_last"} <= set(meta["model.2"])
    paths = r.export(tmp_path)
    assert Image.open(paths["metaaug_samples"]).size == (3 * 64 + 8, 4 * 64 + 12)
