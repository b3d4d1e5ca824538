"""The robustness matrix on a classifier: the Fashion-MNIST ResNet-8 of the AdaQuant benchmark (same checkpoint),
through the product's `qcal.robustness` (top-1, top-1 agreement with FP32, ECE, latency, size per precision and
QRID condition; degradation-aware vs clean calibration with a paired bootstrap interval).

Data: Debian's dataset-fashion-mnist (`apt-get download dataset-fashion-mnist && dpkg -x ... /tmp/fm/root`), written
once as ImageFolder PNGs: calibration = the first 1,000 training images, evaluation = the first N test images.
Every precision calibrates on all 1,000 (calib_size=1000). The network sees x/255 - 0.5 as in training (a normalisation layer in front of the checkpoint's ResNet-8).

    .venv/bin/python benchmarks/robustness_fmnist.py                  # -> benchmarks/results/robustness_fmnist.{json,md}
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.adaquant_fmnist import CKPT, ResNet8, load_fmnist  # noqa: E402
from exporters.quant_table import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "robustness_fmnist"


class Normalised(nn.Module):
    """The checkpoint was trained on x - 0.5 with x in 0..1; qcal feeds 0..1."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - 0.5)  # type: ignore[no-any-return]


def write_folder(root: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    """ImageFolder PNGs (class folders c0..c9), written once; a finished folder is marked by a stamp file."""
    if (root / ".done").is_file() and (root / ".done").read_text() == "rgb":
        return root
    shutil.rmtree(root, ignore_errors=True)
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
    for i, (img, c) in enumerate(zip(x, y, strict=True)):
        px = np.clip(np.rint((img[0].numpy() + 0.5) * 255), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / f"c{int(c)}" / f"{i:05d}.png"), cv2.cvtColor(px, cv2.COLOR_GRAY2BGR))  # 3 equal channels
    (root / ".done").write_text("rgb")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder (the four idx .gz files)")
    ap.add_argument("--eval", type=int, default=2000, help="test images evaluated (first N)")
    ap.add_argument("--work", default="/tmp/qcal-robustness-fmnist", help="image folders and the resumable report")
    ap.add_argument("--latency-runs", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import qcal
    from qcal.models.torch_module import TorchModuleAdapter

    xtr, ytr, xte, yte = load_fmnist(args.data)
    work = Path(args.work)
    calib = write_folder(work / "calib", xtr[:1000], ytr[:1000])
    held = write_folder(work / f"test{args.eval}", xte[:args.eval], yte[:args.eval])
    net = ResNet8()
    net.load_state_dict(torch.load(CKPT, map_location="cpu", weights_only=True))
    model = TorchModuleAdapter(Normalised(net).eval(), torch.zeros(1, 1, 28, 28), task="classify")
    cmd = f".venv/bin/python benchmarks/robustness_fmnist.py --eval {args.eval}"
    rep = qcal.robustness(model, eval=f"imagefolder:{held}", calib=f"imagefolder:{calib}", conditions="qrid",
                          precisions="fp32,fp16,int8-dynamic,int8-clean,int8-mixed", out=work / "report",
                          config=qcal.QuantConfig(calib_size=1000),   # every calibration image, not a sample
                          latency_runs=args.latency_runs, bootstrap=1000, threads=1, command=cmd)
    from benchmarks.provenance import provenance

    data = {**rep.data, **provenance()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS.with_suffix(".json"), json.dumps(data, indent=1) + "\n")
    md = (work / "report" / "report.md").read_text()
    atomic_write_text(RESULTS.with_suffix(".md"), md)
    print(rep.summary())


if __name__ == "__main__":
    main()
