"""One report schema (issue 22 item 3): `qcal quantize --eval` writes a report.json `qcal check` gates directly, a
report without --eval loads but is refused with a named reason (exit 2), and `qcal bench` writes the same schema
with more conditions and precisions (both read by the one reader, qcal.gate.check.load_report)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from qcal.cli import demo_checkpoint, main
from qcal.errors import QcalError
from qcal.gate.check import NoEvaluationError, Thresholds, check, load_report
from qcal.reporting.schema import CELL_KEYS, KEYS, PRECISION_KEYS, SCHEMA, clean_report

CALIB, EVAL = "bundled:vtest[0:8]", "bundled:vtest[8:16]"
NO_EVAL = "no evaluation in this report: run qcal quantize with --eval SET"


def _junit(path: Path) -> ET.Element:
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    return suite


def _check(capsys: pytest.CaptureFixture[str], report: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["check", str(report), *args])
    out, err = capsys.readouterr()
    return rc, out, err


# --- fast: the schema's sections as qcal quantize builds them, before and after an evaluation ----------------
def _evaluation() -> dict[str, Any]:   # the shape qcal.eval.evaluate.Evaluation.to_dict() has
    return {"metric": "fidelity", "images": 3, "spec": EVAL, "set_hash": "e" * 64, "reference_boxes": 7,
            "skipped": [], "size_mb": {"fp32": 42.0, "int8": 11.0},
            "accuracy": {"fp32": {"map50_95": 1.0, "map50": 1.0, "ece": 0.1, "conf_gap": 0.05, "detections": 7},
                         "int8": {"map50_95": 0.91234, "map50": 0.97, "ece": None, "conf_gap": None,
                                  "detections": 6}},
            "latency_ms": {"fp32": {"median_ms": 40.123, "p90_ms": 45.0}, "int8": {"median_ms": 20.0, "p90_ms": 22.0}}}


def _precisions() -> list[dict[str, Any]]:
    return [{"name": p, "file": f"model.{p}.onnx", "sha256": p[0] * 64, "size_mb": 1.0, "spec": {"name": p}}
            for p in ("fp32", "int8")]


def _quantize_report(evaluation: dict[str, Any] | None) -> dict[str, Any]:
    return {"qcal_version": "test", "model": {"source": "best.pt", "sha256": "m" * 64}, "evaluation": evaluation,
            **clean_report(task="detect", precisions=_precisions(), evaluation=evaluation)}


def test_clean_report_cells_are_gated_like_a_bench_report() -> None:
    data = _quantize_report(_evaluation())
    assert data["schema"] == SCHEMA and [c["name"] for c in data["conditions"]] == ["clean"]
    int8 = data["cells"]["int8"]["clean"]
    assert set(int8) == set(CELL_KEYS) and int8["map50_95"] == 0.9123 and int8["ece"] is None
    assert int8["rel_drop_vs_fp32"] == pytest.approx(0.0877) and int8["rel_drop_vs_clean"] == 0.0
    assert data["latency_ms"]["fp32"]["median_ms"] == 40.12 and data["size_mb"] == {"fp32": 1.0, "int8": 1.0}
    assert data["eval"] == {"spec": EVAL, "set_hash": "e" * 64, "images": 3, "reference_boxes": 7}
    assert check(data, max_drop=Thresholds(0.1)).passed
    r = check(data, max_drop=Thresholds(0.05))
    assert [(c.rule, c.precision, c.condition) for c in r.failures] == [("max-drop", "int8", "clean")]


def test_a_report_without_evaluation_loads_but_is_not_gated(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    data = _quantize_report(None)
    assert data["cells"] == {} and data["metric"] is None and data["eval"] is None
    assert load_report(data)["precisions"] == _precisions()      # a valid report ...
    with pytest.raises(NoEvaluationError, match=NO_EVAL):        # ... with nothing to gate
        check(data, max_drop=Thresholds(0.05))
    with pytest.raises(NoEvaluationError, match="baseline"):     # as a baseline too
        check(_quantize_report(_evaluation()), baseline=data)
    p = tmp_path / "report.json"
    p.write_text(json.dumps(data))
    rc, out, err = _check(capsys, p, "--max-drop", "0.05", "--junit", str(tmp_path / "junit.xml"))
    assert rc == 2 and out == "" and NO_EVAL in err and str(p) in err and "Traceback" not in err
    suite = _junit(tmp_path / "junit.xml")
    assert suite.get("errors") == "1" and NO_EVAL in (suite.find("testcase/error").text or "")  # type: ignore[union-attr]
    bench_like = {**data, "evaluation": 3}   # empty cells in any other report stay a malformed report
    with pytest.raises(QcalError, match="'cells' must map") as e:
        check(bench_like, max_drop=Thresholds(0.05))
    assert not isinstance(e.value, NoEvaluationError)


# --- slow: the real fall-detection YOLOv8s ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """qcal quantize with --eval (CLI), one without (Python), and qcal bench of that result (Python)."""
    import qcal

    try:
        ckpt = demo_checkpoint()
    except QcalError:
        pytest.skip("the fall-detection checkpoint is not installed (make test installs it)")
    d = tmp_path_factory.mktemp("qgate")
    assert main(["quantize", str(ckpt), "--trust-checkpoint", "--calib", CALIB, "--eval", EVAL, "-o",
                 str(d / "q"), "--no-progress"]) == 0
    r = qcal.quantize(ckpt, calib=CALIB, trust_checkpoint=True, progress=False)
    r.export(d / "noeval")
    qcal.robustness(r, eval=EVAL, conditions="noise_medium", out=d / "bench", latency_runs=2, bootstrap=0,
                    progress=False)
    return {"q": d / "q" / "report.json", "noeval": d / "noeval" / "report.json",
            "bench": d / "bench" / "report.json"}


@pytest.mark.slow
def test_quantize_eval_report_is_gated_by_qcal_check(runs: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(runs["q"].read_text())
    assert data["schema"] == SCHEMA and data["evaluation"]["images"] == data["eval"]["images"] > 0
    assert data["eval"]["spec"] is None or data["eval"]["spec"] == EVAL   # the CLI passes the loaded set
    assert data["eval"]["reference_boxes"] > 0, "the evaluation frames must give FP32 detections to gate on"
    cells = data["cells"]
    assert cells["fp32"]["clean"]["map50_95"] == pytest.approx(1.0)      # FP32 is its own reference
    assert 0 < cells["int8"]["clean"]["map50_95"] <= 1
    assert cells["int8"]["clean"]["map50_95"] == round(data["evaluation"]["accuracy"]["int8"]["map50_95"], 4)
    hashes = {p["name"]: p["sha256"] for p in data["precisions"]}
    manifest = json.loads((runs["q"].parent / "qcal-set.json").read_text())["files"]
    assert hashes == {p: manifest[f"model.{p}.onnx"]["sha256"] for p in ("fp32", "int8")}
    for key in ("calibration", "kept_in_float", "range_stability", "target", "config_hash", "qcal_version"):
        assert key in data                                              # quantize's own sections stay

    junit = tmp_path / "junit.xml"
    rc, out, _ = _check(capsys, runs["q"], "--max-drop", "0.5", "--min-map", "0.3", "--junit", str(junit))
    assert rc == 0 and "2/2 checks passed" in out
    suite = _junit(junit)
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
    assert {(c.get("classname"), c.get("name")) for c in suite.iter("testcase")} == {
        ("qcal.check.max-drop", "int8/clean"), ("qcal.check.min-map", "int8/clean")}

    rc, out, _ = _check(capsys, runs["q"], "--min-map", "1.01", "--junit", str(junit))
    assert rc == 1 and "FAIL [min-map] int8 / clean" in out and "minimum 1.0100" in out
    suite = _junit(junit)
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")
    fail = suite.find("testcase/failure")
    assert fail is not None and "minimum 1.0100" in (fail.get("message") or "")

    rc, out, _ = _check(capsys, runs["q"], "--baseline", str(runs["q"]), "--precisions", "int8")
    assert rc == 0 and "1/1 checks passed" in out                      # a report is its own baseline


@pytest.mark.slow
def test_quantize_without_eval_is_refused_by_name(runs: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = load_report(runs["noeval"])
    assert data["cells"] == {} and data["evaluation"] is None and len(data["precisions"]) == 2
    junit = tmp_path / "junit.xml"
    rc, out, err = _check(capsys, runs["noeval"], "--max-drop", "0.05", "--junit", str(junit))
    assert rc == 2 and out == "" and NO_EVAL in err
    assert _junit(junit).get("errors") == "1" and NO_EVAL in junit.read_text()


@pytest.mark.slow
def test_bench_report_is_the_same_schema_with_more_slices(runs: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    q, b = load_report(runs["q"]), load_report(runs["bench"])   # the one reader
    for key in KEYS:
        assert key in q and key in b, key
        assert type(q[key]) is type(b[key]), (key, q[key], b[key])
    assert q["model"]["sha256"] == b["model"]["sha256"] and q["primary_metric"] == b["primary_metric"]
    assert set(q["eval"]) == set(b["eval"]) and q["metric"] == b["metric"] == "fidelity"
    assert {c["name"] for c in q["conditions"]} < {c["name"] for c in b["conditions"]}
    for entry in (*q["precisions"], *b["precisions"]):
        assert set(PRECISION_KEYS) <= set(entry), entry
    b_int8 = next(p for p in b["cells"] if p != "fp32")
    assert set(q["cells"]["int8"]["clean"]) == set(b["cells"][b_int8]["clean"]) == set(CELL_KEYS)
    assert set(q["cells"]["fp32"]["clean"]) == set(b["cells"]["fp32"]["clean"])
    assert set(q["latency_ms"]["int8"]) == set(b["latency_ms"][b_int8])
    for p, n in ((runs["q"], "2/2"), (runs["bench"], "3/3")):   # the same gate reads both
        rc, out, _ = _check(capsys, p, "--max-drop", "clean=0.9", "--min-map", "0")
        assert rc == 0 and f"{n} checks passed" in out, out
