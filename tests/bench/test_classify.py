"""The robustness matrix for a classifier: top-1 / ECE cells checked against torch and numpy references, the
CI gate on a classifier report, and resuming from cached logits."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import calib_sets
import qcal
from qcal.bench import RobustnessReport
from qcal.eval.confidence import classifier_ece
from qcal.gate.check import Thresholds, check
from qcal.models.torch_module import TorchModuleAdapter

SIZE = 16


def _image(cls: int, rng: np.random.Generator) -> np.ndarray:
    """Class 0: bright left half, 1: bright right half, 2: bright top half; plus noise."""
    img = rng.uniform(0, 90, (SIZE, SIZE, 3))
    region = {0: (slice(None), slice(0, SIZE // 2)), 1: (slice(None), slice(SIZE // 2, None)),
              2: (slice(0, SIZE // 2), slice(None))}[cls]
    img[region] += rng.uniform(80, 160)
    return np.clip(img, 0, 255).astype(np.uint8)


def _folder(root: Path, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for cls, name in enumerate(["left", "right", "top"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / name / f"{i:03d}.png"), _image(cls, rng))
    return root


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 3))
    rng = np.random.default_rng(1)
    ys = rng.integers(0, 3, 256)
    xs = torch.tensor(np.stack([_image(int(c), rng) for c in ys]).transpose(0, 3, 1, 2)[:, ::-1].copy() / 255.0,
                      dtype=torch.float32)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(net(xs), torch.tensor(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[RobustnessReport, Path, torch.nn.Module]:
    d = tmp_path_factory.mktemp("cls")
    ev, cal = _folder(d / "eval", 12, seed=10), _folder(d / "calib", 8, seed=20)
    net = _net()
    adapter = TorchModuleAdapter(net, torch.zeros(1, 3, SIZE, SIZE), task="classify")
    rep = qcal.robustness(adapter, eval=f"imagefolder:{ev}", calib=f"imagefolder:{cal}",
                          conditions="noise_medium", precisions="fp32,int8-clean", out=d / "report",
                          latency_runs=3, bootstrap=0, progress=False)
    return rep, d, net


def test_image_folder_labels_are_sorted_class_folders(tmp_path: Path) -> None:
    cs = calib_sets.load(f"imagefolder:{_folder(tmp_path / 'f', 2, seed=0)}")
    assert [int(s.labels[0, 0]) for s in cs] == [0, 0, 1, 1, 2, 2]   # left, right, top in sorted order
    assert np.array_equal(cs[0].labels, np.array([[0, 0.5, 0.5, 1, 1]], np.float32))
    (tmp_path / "empty").mkdir()
    with pytest.raises(calib_sets.CalibSetError, match="no class sub-folders"):
        calib_sets.Source.image_folder(tmp_path / "empty")


def test_classifier_cells_match_torch(bench: tuple[RobustnessReport, Path, torch.nn.Module]) -> None:
    rep, d, net = bench
    data = rep.data
    assert data["task"] == "classify" and data["primary_metric"] == "top1" and data["metric"] == "labels"
    # the reference: the FP32 torch module on the same decoded images, same preprocessing
    samples = list(calib_sets.load(f"imagefolder:{d / 'eval'}").resized(SIZE))
    x = torch.tensor(np.stack([s.image.transpose(2, 0, 1) for s in samples]) / 255.0, dtype=torch.float32)
    y = np.array([int(s.labels[0, 0]) for s in samples])
    with torch.no_grad():
        probs = torch.softmax(net(x), 1).numpy()
    fp = data["cells"]["fp32"]["clean"]
    assert fp["top1"] == pytest.approx(float((probs.argmax(1) == y).mean()), abs=1e-4)
    assert fp["top1"] > 0.8                                 # the toy task is learnt: a real signal to lose
    assert fp["ece"] == pytest.approx(classifier_ece(probs, y).ece, abs=2e-3)
    assert fp["agreement_top1"] == 1.0 and fp["rel_drop_vs_fp32"] == 0.0
    q = data["cells"]["int8-clean"]
    assert set(q) == {"clean", "noise_medium"}
    assert abs(q["clean"]["top1"] - fp["top1"]) <= 0.15
    assert 0.0 <= q["noise_medium"]["agreement_top1"] <= 1.0
    md = (d / "report" / "report.md").read_text()
    assert "## Top-1" in md and "top-1 ECE" in md and "mAP" not in md.split("## Conditions")[0]


def test_check_gates_a_classifier_report(bench: tuple[RobustnessReport, Path, torch.nn.Module]) -> None:
    rep, d, _ = bench
    path = d / "report" / "report.json"
    assert check(path, max_drop=Thresholds(0.9)).passed
    res = check(path, min_map=Thresholds(1.01))
    assert not res.passed and all("top-1" in c.message for c in res.cases if not c.ok)


def test_rerun_loads_cached_logits(bench: tuple[RobustnessReport, Path, torch.nn.Module]) -> None:
    rep, d, net = bench
    again = qcal.robustness(TorchModuleAdapter(net, torch.zeros(1, 3, SIZE, SIZE), task="classify"),
                            eval=f"imagefolder:{d / 'eval'}", calib=f"imagefolder:{d / 'calib'}",
                            conditions="noise_medium", precisions="fp32,int8-clean", out=d / "report",
                            latency_runs=0, bootstrap=0, progress=False)
    assert again.data["cells"] == rep.data["cells"]


def test_robustness_of_a_result_measures_the_int8_model_it_ships(
        bench: tuple[RobustnessReport, Path, torch.nn.Module], tmp_path: Path) -> None:
    """qcal.robustness(result): the one result protocol; the matrix runs the result's own INT8 file (no second
    quantization), and its clean cell is the result's own accuracy."""
    import hashlib

    from qcal.result import is_result

    _, d, net = bench
    adapter = TorchModuleAdapter(net, torch.zeros(1, 3, SIZE, SIZE), task="classify")
    result = qcal.quantize(adapter, f"imagefolder:{d / 'calib'}", progress=False)
    assert is_result(result) and result.kind == "vision" and result.table is result.out.table
    rep = qcal.robustness(result, eval=f"imagefolder:{d / 'eval'}", conditions="noise_medium", out=tmp_path / "r",
                          latency_runs=0, bootstrap=0, progress=False)
    cells = rep.data["cells"]
    assert set(cells) == {"fp32", "int8-result"} and set(cells["int8-result"]) == {"clean", "noise_medium"}
    shipped = hashlib.sha256(result.out.int8_path.read_bytes()).hexdigest()
    info = {p["name"]: p for p in rep.data["precisions"]}
    assert info["int8-result"]["sha256"] == shipped
    with pytest.raises(qcal.ConfigError, match="drop precisions"):
        qcal.robustness(result, eval=f"imagefolder:{d / 'eval'}", precisions="fp32", out=tmp_path / "r2")
    assert not is_result(adapter)
