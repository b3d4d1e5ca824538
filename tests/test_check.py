"""The CI gate on crafted reports: pass, fail, missing slice, baseline regression, malformed input, JUnit."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from qcal.cli import main
from qcal.gate.check import ReportError, Thresholds, check


def _report(cells: dict[str, dict[str, float]]) -> dict[str, Any]:
    conds = sorted({c for v in cells.values() for c in v}, key=lambda c: (c != "clean", c))
    return {"schema": "qcal.robustness/1", "conditions": [{"name": c, "steps": []} for c in conds],
            "cells": {p: {c: {"map50_95": v} for c, v in by.items()} for p, by in cells.items()}}


def _write(tmp: Path, name: str, data: Any) -> Path:
    p = tmp / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


GOOD = {"fp32": {"clean": 0.80, "noise_medium": 0.50}, "int8": {"clean": 0.79, "noise_medium": 0.48}}


def test_pass_and_fail_on_relative_drop(tmp_path: Path) -> None:
    p = _write(tmp_path, "r.json", _report(GOOD))
    ok = check(p, max_drop=Thresholds.parse(["0.02", "noise_medium=0.05"], "max-drop"))
    assert ok.passed and len(ok.cases) == 2          # int8 on two conditions; fp32 is the reference
    bad = check(p, max_drop=Thresholds.parse(["0.02"], "max-drop"))
    assert not bad.passed
    [f] = bad.failures
    assert (f.precision, f.condition, f.rule) == ("int8", "noise_medium", "max-drop")
    assert "+0.0400" in f.message and "limit 0.0200" in f.message


def test_min_map_absolute(tmp_path: Path) -> None:
    p = _write(tmp_path, "r.json", _report(GOOD))
    r = check(p, min_map=Thresholds.parse(["clean=0.785", "noise_medium=0.49"], "min-map"))
    assert [(c.condition, c.ok) for c in r.cases] == [("clean", True), ("noise_medium", False)]


def test_missing_slice_fails(tmp_path: Path) -> None:
    p = _write(tmp_path, "r.json", _report(GOOD))
    r = check(p, max_drop=Thresholds.parse(["0.5", "jpeg_heavy=0.1"], "max-drop"))
    assert not r.passed and any(c.rule == "missing" and c.condition == "jpeg_heavy" for c in r.failures)
    r2 = check(p, max_drop=Thresholds.parse(["0.5"], "max-drop"), precisions=["int8", "int8-mixed"])
    assert [c.precision for c in r2.failures] == ["int8-mixed"]
    partial = {"fp32": {"clean": 0.8, "noise_medium": 0.5}, "int8": {"clean": 0.79}}
    r3 = check(_write(tmp_path, "p.json", _report(partial)), max_drop=Thresholds.parse(["0.5"], "max-drop"))
    assert not r3.passed and "missing slice" in r3.failures[0].message


def test_baseline_regression(tmp_path: Path) -> None:
    base = _write(tmp_path, "base.json", _report(GOOD))
    worse = {"fp32": GOOD["fp32"], "int8": {"clean": 0.77, "noise_medium": 0.48}}
    cur = _write(tmp_path, "cur.json", _report(worse))
    assert check(cur, baseline=base, tolerance=0.03).passed
    r = check(cur, baseline=base, tolerance=0.01)
    assert [(c.condition, c.rule) for c in r.failures] == [("clean", "baseline")]
    gone = _write(tmp_path, "gone.json", _report({"fp32": GOOD["fp32"], "int8": {"clean": 0.79}}))
    r2 = check(gone, baseline=base, tolerance=0.5)
    assert "missing slice" in r2.failures[0].message


@pytest.mark.parametrize("content, needle", [
    ('{"schema": "qcal.robustness/1", "cells": {', "not valid JSON"),
    ('{"cells": {}}', "not a qcal robustness report"),
    ('[1, 2]', "not a qcal robustness report"),
    ('{"schema": "qcal.robustness/1", "cells": {"int8": 3}}', "'cells' must map"),
])
def test_malformed_reports_raise_typed_errors(tmp_path: Path, content: str, needle: str) -> None:
    p = _write(tmp_path, "bad.json", content)
    with pytest.raises(ReportError, match=needle):
        check(p, max_drop=Thresholds(0.02))


def test_bad_threshold_and_no_rule(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="expected a number"):
        Thresholds.parse(["noise=abc"], "max-drop")
    with pytest.raises(ReportError, match="no rule"):
        check(_write(tmp_path, "r.json", _report(GOOD)))


def test_cli_exit_codes_and_junit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _write(tmp_path, "r.json", _report(GOOD))
    junit = tmp_path / "junit.xml"
    assert main(["check", str(p), "--max-drop", "0.02", "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "FAIL [max-drop] int8 / noise_medium" in out and "1/2 checks passed" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    failed = [tc for tc in suite.iter("testcase") if tc.find("failure") is not None]
    assert [tc.get("name") for tc in failed] == ["int8/noise_medium"]
    assert main(["check", str(p), "--max-drop", "0.05"]) == 0
    assert main(["check", str(tmp_path / "nope.json"), "--max-drop", "0.05"]) == 2
    assert "does not exist" in capsys.readouterr().err
