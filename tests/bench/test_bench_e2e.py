"""End to end on the real fall-detection checkpoint (small: 320 px, 10 evaluation frames): the matrix, the
resumable cache, the report files, and the HTML report rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import qcal
from qcal.bench import RobustnessReport
from qcal.cli import demo_checkpoint
from qcal.errors import QcalError

pytestmark = pytest.mark.slow


def _bench(out: Path) -> RobustnessReport:
    return qcal.robustness(demo_checkpoint(), eval="bundled:vtest[450:480]", calib="bundled:vtest[0:120]",
                           conditions="noise_medium", precisions="fp32,fp16,int8-dynamic,int8-clean,int8-mixed",
                           out=out, config=qcal.QuantConfig(imgsz=320, calib_size=8), trust_checkpoint=True,
                           latency_runs=2, bootstrap=50, progress=False)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        demo_checkpoint()
    except QcalError:
        pytest.skip("the fall-detection checkpoint is not installed (make test installs it)")
    out = tmp_path_factory.mktemp("bench")
    _bench(out)
    return out


def test_matrix_report(bench_dir: Path) -> None:
    data = json.loads((bench_dir / "report.json").read_text())
    assert data["metric"] == "fidelity" and data["eval"]["images"] == 10
    assert [c["name"] for c in data["conditions"]] == ["clean", "noise_medium"]
    cells = data["cells"]
    assert set(cells) == {"fp32", "fp16", "int8-dynamic", "int8-clean", "int8-mixed"}
    assert cells["fp32"]["clean"]["map50_95"] == 1.0          # FP32 on clean is its own reference
    assert cells["fp16"]["clean"]["map50_95"] > 0.9           # FP16 barely changes detections
    for p in cells:
        noisy = cells[p]["noise_medium"]
        assert 0.0 <= noisy["map50_95"] < cells[p]["clean"]["map50_95"] + 0.05
        assert noisy["rel_drop_vs_clean"] is not None and 0 <= noisy["ece"] <= 1
    assert cells["fp32"]["noise_medium"]["rel_drop_vs_fp32"] == 0.0
    assert data["size_mb"]["int8-clean"] < data["size_mb"]["fp32"] / 3    # int8 weights
    assert {c["condition"] for c in data["comparisons"]} == {"clean", "noise_medium"}
    assert all(c["lo"] <= c["diff"] <= c["hi"] for c in data["comparisons"])
    hashes = {p["name"]: p.get("calib_hash") for p in data["precisions"]}
    assert hashes["int8-clean"] != hashes["int8-mixed"]
    assert isinstance(data["machine"]["flags"], list) and data["machine"]["threads"] == 2
    md = (bench_dir / "report.md").read_text()
    assert "## Degradation-aware vs clean calibration" in md and "| int8-mixed |" in md


def test_rerun_resumes_from_finished_cells(bench_dir: Path) -> None:
    cells = sorted((bench_dir / "cells").glob("*.npz"))
    assert len(cells) == 10                                    # 5 precisions x 2 conditions
    before = {p.name: p.stat().st_mtime_ns for p in cells}
    index = (bench_dir / "models" / "index.json").read_text()
    cells[0].unlink()                                          # as if killed before this cell finished
    data = _bench(bench_dir).to_dict()
    after = {p.name: p.stat().st_mtime_ns for p in (bench_dir / "cells").glob("*.npz")}
    assert set(after) == set(before)
    changed = [k for k in after if after[k] != before[k]]
    assert changed == [cells[0].name]                          # only the missing cell was recomputed
    assert (bench_dir / "models" / "index.json").read_text() == index   # no model rebuilt
    assert data["cells"]["fp32"]["clean"]["map50_95"] == 1.0


def test_html_report_renders_in_headless_chromium(bench_dir: Path) -> None:
    html = (bench_dir / "report.html").read_text()
    assert html.count("<img class='plot'") == 3 and "http" not in html.split("<body>")[0]
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs the Debian package `chromium`)")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (bench_dir / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-plots-total="3"' in dom and 'data-plots-loaded="3"' in dom, dom[:300]
    assert 'data-errors="0"' in dom
