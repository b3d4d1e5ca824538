"""Readers refuse what is not a whole set: `qcal engine` on a model from an interrupted or edited qcal set, and the
report folder of `qcal bench` (written in place beside its caches) while its reports are being rewritten."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from exporters.onnx_io import atomic_save, stamp_metadata
from exporters.outset import MANIFEST, IncompleteSetError, verify, verify_member
from qcal.bench import write_report
from qcal.cli import main
from qcal.runtime.output import open_output, write_set


def qcal_model_set(src: Path, d: Path) -> Path:
    """A set holding an ONNX model whose metadata says qcal wrote it."""
    m = stamp_metadata(onnx.load(str(src)), {"qcal.version": "test"})
    with open_output(d) as s:
        write_set(s, lambda s: (atomic_save(m, s.path("model.int8.onnx")), {"int8": "model.int8.onnx"})[1])
    return d / "model.int8.onnx"


def test_engine_refuses_a_model_of_a_broken_set(tiny_conv_onnx: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model = qcal_model_set(tiny_conv_onnx, tmp_path / "out")
    assert verify_member(model, written_by_qcal=True) is not None
    (model.parent / MANIFEST).unlink()   # as a kill before the manifest would leave it (older layout)
    assert main(["engine", str(model), "-o", str(tmp_path / "m.engine")]) == 2
    assert "not a whole qcal output set" in capsys.readouterr().err
    plain = tmp_path / "user" / "model.onnx"   # a model of the user's own, no qcal metadata, no manifest: fine
    plain.parent.mkdir()
    shutil.copyfile(tiny_conv_onnx, plain)
    assert verify_member(plain, written_by_qcal=False) is None
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    assert main(["engine", str(bad), "-o", str(tmp_path / "b.engine")]) == 2
    assert "is not a readable ONNX model" in capsys.readouterr().err


def test_bench_reports_carry_a_manifest_that_is_dropped_while_rewriting(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "report"
    data = {"schema": "qcal.robustness/1", "qcal_version": "test", "rows": []}
    monkeypatch.setattr("qcal.bench.html.report_html", lambda data: "<html></html>")
    monkeypatch.setattr("qcal.bench.tables.report_markdown", lambda data: "# report")
    write_report(data, d)
    assert sorted(verify(d)["files"]) == ["report.html", "report.json", "report.md"]
    (d / "cells").mkdir()   # caches beside the reports are not part of the set
    (d / "cells" / "x.npz").write_bytes(b"cell")
    verify(d)

    def crash(data: object) -> str:
        raise RuntimeError("killed while writing report.md")

    monkeypatch.setattr("qcal.bench.tables.report_markdown", crash)
    with pytest.raises(RuntimeError):
        write_report({**data, "rows": [1]}, d)
    assert json.loads((d / "report.json").read_text())["rows"] == [1]   # new json beside the old md ...
    with pytest.raises(IncompleteSetError, match="missing"):           # ... which no reader accepts
        verify(d)


def test_bench_checks_and_locks_its_folder_before_the_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import qcal.bench
    from exporters.outset import FolderLock

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded although the report folder was unusable")

    monkeypatch.setattr(qcal.bench, "load_model", refuse)
    f = tmp_path / "file"
    f.write_text("x")
    (tmp_path / "model.pt").write_bytes(b"\x80\x02")   # passes the checkpoint preflight; never loaded
    argv = ["bench", str(tmp_path / "model.pt"), "--trust-checkpoint", "--eval", "bundled:vtest[400:404]", "--no-progress"]
    assert main([*argv, "-o", str(f)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with FolderLock(tmp_path / "rep"):
        assert main([*argv, "-o", str(tmp_path / "rep")]) == 2
    assert "another qcal run is writing it" in capsys.readouterr().err
