"""`qcal check` as a CI gate that never lies: every unusable input is exit 2 with one named line on stderr and no
traceback, the --junit file is written (and parses) on every exit, a baseline of another model, a negative
threshold or an undefined relative drop is refused, and a report folder's output-set manifest is honoured."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from exporters.outset import MANIFEST, FolderLock, write_manifest
from qcal.cli import main
from qcal.gate.check import ReportError, Thresholds, check, printable
from qcal.gate.junit import xml_safe

SHA_A, SHA_B = "a1" * 32, "b2" * 32


def report(sha: str = SHA_A, **cells: dict[str, Any]) -> dict[str, Any]:
    cells = cells or {"fp32": {"clean": 0.80, "noise_medium": 0.50}, "int8": {"clean": 0.79, "noise_medium": 0.49}}
    conds = sorted({c for v in cells.values() for c in v}, key=lambda c: (c != "clean", c))
    return {"schema": "qcal.robustness/1", "qcal_version": "test", "model": {"source": "m.pt", "sha256": sha},
            "primary_metric": "map50_95", "conditions": [{"name": c, "steps": []} for c in conds],
            "cells": {p: {c: {"map50_95": v, "map50": v} for c, v in by.items()} for p, by in cells.items()}}


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(["check", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def junit(path: Path) -> ET.Element:
    """The JUnit file's one testsuite (the file must parse)."""
    suite = ET.parse(path).getroot().find("testsuite")
    assert suite is not None
    return suite


def assert_unusable(rc: int, err: str, j: Path, *needles: str) -> None:
    """Exit 2, one named line on stderr (no traceback), and a JUnit file with one case in error saying why."""
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qcal: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    suite = junit(j)
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("1", "1", "0")
    [case] = list(suite.iter("testcase"))
    e = case.find("error")
    assert e is not None and "input is unusable" in (e.get("message") or "")
    for n in needles:
        assert n in (e.get("message") or "") and n in (e.text or "")


def bad_cell(value: Any) -> dict[str, Any]:
    r = report()
    r["cells"]["int8"]["noise_medium"]["map50_95"] = value
    return r


def without(key: str) -> dict[str, Any]:
    r = report()
    del r[key]
    return r


def missing_metric() -> dict[str, Any]:
    r = report()
    del r["cells"]["int8"]["noise_medium"]["map50_95"]
    return r


FIELD = "cells.int8.noise_medium.map50_95"
HEAD = '{"schema": "qcal.robustness/1", "cells": {"int8": {"clean": {"map50_95": '


@pytest.mark.parametrize("content, needles", [
    (bad_cell("0.49"), [FIELD, "'0.49' (a str)"]),
    (bad_cell([0.49]), [FIELD, "(a list)"]),
    (bad_cell(True), [FIELD, "True (a bool)"]),
    (bad_cell(None), [FIELD, "None (a NoneType)"]),
    (bad_cell({"v": 1}), [FIELD, "(a dict)"]),
    (bad_cell(float("nan")), [FIELD, "is nan"]),
    (bad_cell(float("inf")), [FIELD, "is inf"]),
    (bad_cell(-0.1), [FIELD, "is -0.1", "[0, 1]"]),
    (bad_cell(49.0), [FIELD, "is 49.0", "[0, 1]"]),
    (missing_metric(), ["cells.int8.noise_medium", "has no 'map50_95'"]),
    (without("cells"), ["cells", "must map precision"]),
    (without("schema"), ["schema", "not a qcal robustness report"]),
    ({**report(), "schema": "other/1"}, ["schema", "'other/1'"]),
    ({**report(), "schema": 1}, ["schema", "is 1"]),
    ({**report(), "cells": {"int8": [0.5]}}, ["cells.int8", "must map precision"]),
    ({**report(), "cells": {"int8": {"clean": 0.5}}}, ["cells.int8.clean", "expected an object of metrics"]),
    ({**report(), "cells": {}}, ["cells", "non-empty"]),
    ({**report(), "conditions": "clean"}, ["conditions", "(a str)"]),
    ({**report(), "conditions": [{"name": 3}]}, ["conditions[0]", "string 'name'"]),
    ({**report(), "primary_metric": 7}, ["primary_metric", "is 7"]),
    ({**report(), "model": "m.pt"}, ["model", "'sha256'"]),
    ({**report(), "model": {"sha256": 5}}, ["model", "'sha256'"]),
    ('{"schema": "qcal.robustness/1", "cells": {', ["not valid JSON"]),
    ("[1, 2]", ["a JSON list", "not a qcal robustness report"]),
    ('{"schema": "qcal.robustness/1", "cells": {"int8": {"clean": {"map50_95": NaN}}}}', ["is nan"]),
    ('{"schema": "qcal.robustness/1", "cells": {"int8": {"clean": {"map50_95": 1e999}}}}', ["is inf"]),
    (HEAD + "1" + "0" * 400 + "}}}}",
     ["cells.int8.clean.map50_95", "[0, 1]"]),
    (HEAD + "1" + "0" * 5000 + "}}}}",
     ["not valid JSON"]),
    ("[" * 100000 + "]" * 100000, ["not valid JSON"]),
])
def test_malformed_report_is_exit_2_named_with_junit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      content: Any, needles: list[str]) -> None:
    p = write(tmp_path / "r.json", content)
    j = tmp_path / "junit.xml"
    rc, out, err = run(capsys, str(p), "--max-drop", "0.5", "--min-map", "0.1", "--junit", str(j))
    assert_unusable(rc, err, j, f"report {p}", *needles)
    assert out == ""
    with pytest.raises(ReportError) as ei:   # the Python API: the same error, its parts apart
        check(p, max_drop=Thresholds(0.5))
    assert ei.value.source == str(p) and ei.value.problem in str(ei.value)
    if needles[0].startswith(("cells", "schema", "conditions", "model", "primary")):
        assert ei.value.field == needles[0]


def test_a_report_that_is_not_utf8_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "r.json"
    p.write_bytes(b'\xff\xfe{"schema": 1}')
    j = tmp_path / "junit.xml"
    rc, _, err = run(capsys, str(p), "--max-drop", "0.5", "--junit", str(j))
    assert_unusable(rc, err, j, "cannot be read", "utf-8")


def test_malformed_baseline_is_exit_2_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path / "r.json", report())
    b = write(tmp_path / "base.json", bad_cell("high"))
    j = tmp_path / "junit.xml"
    rc, _, err = run(capsys, str(p), "--baseline", str(b), "--junit", str(j))
    assert_unusable(rc, err, j, f"baseline {b}", FIELD, "'high' (a str)")
    rc, _, err = run(capsys, str(p), "--baseline", str(tmp_path / "gone.json"), "--junit", str(j))
    assert_unusable(rc, err, j, "baseline", "gone.json", "does not exist")


def test_missing_report_and_folder_are_exit_2_with_junit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    j = tmp_path / "junit.xml"
    rc, _, err = run(capsys, str(tmp_path / "nope.json"), "--max-drop", "0.1", "--junit", str(j))
    assert_unusable(rc, err, j, "nope.json", "does not exist")
    (tmp_path / "rep").mkdir()
    rc, _, err = run(capsys, str(tmp_path / "rep"), "--max-drop", "0.1", "--junit", str(j))
    assert_unusable(rc, err, j, "is a folder", "report.json")


def test_baseline_of_another_model_is_refused_unless_allowed(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path / "r.json", report(SHA_A))
    b = write(tmp_path / "base.json", report(SHA_B))
    j = tmp_path / "junit.xml"
    rc, _, err = run(capsys, str(p), "--baseline", str(b), "--tolerance", "0.01", "--junit", str(j))
    assert_unusable(rc, err, j, "another model", SHA_B[:12], SHA_A[:12], "--allow-other-model", "model.sha256")
    rc, out, _ = run(capsys, str(p), "--baseline", str(b), "--tolerance", "0.01", "--allow-other-model",
                     "--junit", str(j))
    assert rc == 0 and "2/2 checks passed" in out
    assert junit(j).get("tests") == "2"
    same = write(tmp_path / "same.json", report(SHA_A, fp32={"clean": 0.8}, int8={"clean": 0.85}))
    assert run(capsys, str(p), "--baseline", str(same), "--tolerance", "0.01")[0] == 1   # same model: compared
    handmade = report()
    del handmade["model"]   # a hand-made baseline without a model hash cannot be told apart: it is compared
    assert run(capsys, str(p), "--baseline", str(write(tmp_path / "h.json", handmade)))[0] == 0


@pytest.mark.parametrize("argv, needles", [
    (["--max-drop", "-1"], ["--max-drop -1", "negative", ">= 0"]),
    (["--max-drop", "noise_medium=-0.5"], ["--max-drop noise_medium=-0.5", "negative"]),
    (["--min-map", "-0.2"], ["--min-map -0.2", "negative"]),
    (["--max-drop", "nan"], ["--max-drop nan", "finite"]),
    (["--baseline", "{base}", "--tolerance", "-5"], ["--tolerance -5", ">= 0"]),
    (["--baseline", "{base}", "--tolerance", "inf"], ["--tolerance inf", "finite"]),
    (["--baseline", "{base}", "--tolerance", "lots"], ["--tolerance 'lots'", "expected a number"]),
])
def test_negative_and_non_finite_thresholds_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        argv: list[str], needles: list[str]) -> None:
    p = write(tmp_path / "r.json", report())
    base = write(tmp_path / "base.json", report())
    j = tmp_path / "junit.xml"
    rc, _, err = run(capsys, str(p), *[a.format(base=base) for a in argv], "--junit", str(j))
    assert_unusable(rc, err, j, *needles)
    with pytest.raises(ReportError, match="negative"):   # Thresholds built in Python are held to it too
        check(p, max_drop=Thresholds(-0.1))
    with pytest.raises(ReportError, match="tolerance"):
        check(p, baseline=base, tolerance=-1.0)


def test_zero_fp32_reference_under_max_drop_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = report(fp32={"clean": 0.8, "fog": 0.0}, int8={"clean": 0.79, "fog": 0.0})
    p = write(tmp_path / "r.json", r)
    j = tmp_path / "junit.xml"
    rc, _, err = run(capsys, str(p), "--max-drop", "0.05", "--junit", str(j))
    assert_unusable(rc, err, j, "cells.fp32.fog.map50_95", "'fog'", "undefined", "--min-map fog=X")
    # a zero FP32 where no relative drop is asked for is a measurement like any other
    rc, out, _ = run(capsys, str(p), "--min-map", "clean=0.7", "--junit", str(j))
    assert rc == 0 and "1/1 checks passed" in out
    neg = copy.deepcopy(r)
    neg["cells"]["fp32"]["fog"]["map50_95"] = -0.3   # negative: not a mAP at all, whatever the rule
    rc, _, err = run(capsys, str(write(tmp_path / "n.json", neg)), "--max-drop", "0.05", "--junit", str(j))
    assert_unusable(rc, err, j, "cells.fp32.fog.map50_95", "is -0.3")


@pytest.mark.parametrize("name", ["noise\x01medium", "esc\x1b[31mred", "tab\tand\x0bvt", "nul\x00", "lone\ud800"])
def test_control_characters_in_names_still_give_parsable_junit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               name: str) -> None:
    p = write(tmp_path / "r.json", report(fp32={"clean": 0.8, name: 0.5}, int8={"clean": 0.79, name: 0.3}))
    j = tmp_path / "junit.xml"
    rc, out, _ = run(capsys, str(p), "--max-drop", "0.02", "--junit", str(j))
    assert rc == 1
    assert "\x1b" not in out and "\x01" not in out and "FAIL [max-drop] int8 / " in out   # the console, too
    suite = junit(j)   # parses
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failed = [tc for tc in suite.iter("testcase") if tc.find("failure") is not None]
    assert [tc.get("name") for tc in failed] == [f"int8/{xml_safe(name)}"]
    assert name.isprintable() or xml_safe(name) != name
    # on exit 2 the same: the message quotes the name
    r = report(fp32={"clean": 0.8, name: 0.5}, int8={"clean": 0.79, name: "x"})
    rc, _, err = run(capsys, str(write(tmp_path / "b.json", r)), "--max-drop", "0.02", "--junit", str(j))
    assert_unusable(rc, err, j, "(a str)", f"cells.int8.{printable(name)}.map50_95")
    assert "\x1b" not in err and "\x01" not in err


def test_xml_safe_keeps_what_xml_allows() -> None:
    assert xml_safe("a\tb\nc\rd é 😀") == "a\tb\nc\rd é 😀"
    assert xml_safe("a\x01b\x1bc\x7f") == "a\\x01b\\x1bc\x7f"   # DEL is allowed in XML 1.0
    assert xml_safe("\ufffe\ud800") == "\\ufffe\\ud800"


def test_junit_path_is_checked_before_gating(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path / "r.json", report())
    folder = tmp_path / "out"
    folder.mkdir()
    rc, out, err = run(capsys, str(p), "--max-drop", "0.5", "--junit", str(folder))
    assert rc == 2 and out == "" and "--junit" in err and "is a folder" in err and "Traceback" not in err
    assert list(folder.iterdir()) == []
    deep = tmp_path / "new" / "deeper" / "junit.xml"   # a missing parent folder is created
    rc, out, _ = run(capsys, str(p), "--max-drop", "0.5", "--junit", str(deep))
    assert rc == 0 and junit(deep).get("tests") == "2"
    under_file = p / "junit.xml"   # a parent that cannot be created
    rc, out, err = run(capsys, str(p), "--max-drop", "0.5", "--junit", str(under_file))
    assert rc == 2 and out == "" and "cannot be created" in err and "a part of it is a file" in err
    rc, out, err = run(capsys, str(p), "--max-drop", "0.5", "--junit", str(p))   # would overwrite the report
    assert rc == 2 and "one of the reports being checked" in err
    assert json.loads(p.read_text())["schema"] == "qcal.robustness/1"


def cannot_write(folder: str) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return Path(folder).is_dir()
    os.close(fd)
    os.unlink(probe)
    return False


@pytest.mark.skipif(not cannot_write("/sys"), reason="needs a folder this user cannot write to")
def test_junit_in_an_unwritable_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path / "r.json", report())
    target = Path("/sys/qcal-junit.xml")   # sysfs refuses new files, even to root
    rc, out, err = run(capsys, str(p), "--max-drop", "0.5", "--junit", str(target))
    assert rc == 2 and out == "" and "is not writable" in err and "/sys" in err and "Traceback" not in err


def bench_folder(tmp_path: Path, data: dict[str, Any] | None = None) -> Path:
    """A report folder as `qcal bench` leaves it: reports, their manifest, the writer lock beside it."""
    d = tmp_path / "report"
    with FolderLock(d):
        write(d / "report.json", data or report())
        write(d / "report.md", "# report")
        write_manifest(d, ["report.json", "report.md"], {"qcal_version": "test"})
    return d / "report.json"


def test_report_from_a_whole_output_set_is_gated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = bench_folder(tmp_path)
    (p.parent / "cells").mkdir()   # caches beside the set are not part of it
    rc, out, _ = run(capsys, str(p), "--max-drop", "0.05")
    assert rc == 0 and "2/2 checks passed" in out


def test_report_that_no_longer_matches_its_manifest_is_exit_2(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    p = bench_folder(tmp_path)
    edited = report(int8={"clean": 0.8, "noise_medium": 0.5}, fp32={"clean": 0.8, "noise_medium": 0.5})
    write(p, edited)   # a hand edit (or a second writer) after the run
    j = tmp_path / "junit.xml"
    rc, _, err = run(capsys, str(p), "--max-drop", "0.05", "--junit", str(j))
    assert_unusable(rc, err, j, "output set is not whole", "report.json does not match", MANIFEST)


def test_report_whose_manifest_is_missing_but_expected_is_exit_2(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    p = bench_folder(tmp_path)
    (p.parent / MANIFEST).unlink()   # what a kill between rewriting report.json and the manifest leaves
    j = tmp_path / "junit.xml"
    rc, _, err = run(capsys, str(p), "--max-drop", "0.05", "--junit", str(j))
    assert_unusable(rc, err, j, "output set is not whole", "missing or unreadable")
    # the same report.json copied out of the folder (a baseline fetched from main, say) is read as it is
    copied = write(tmp_path / "ci" / "main-report.json", p.read_text())
    rc, out, _ = run(capsys, str(copied), "--max-drop", "0.05")
    assert rc == 0 and "2/2 checks passed" in out


def test_reports_without_a_manifest_keep_working(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = write(tmp_path / "old" / "report.json", report())          # an older qcal's folder, or a copy
    write(tmp_path / "old" / "report.md", "# report")
    hand = write(tmp_path / "hand.json", report())                     # hand-made
    for p in (old, hand):
        rc, out, _ = run(capsys, str(p), "--max-drop", "0.05")
        assert rc == 0 and "2/2 checks passed" in out
    assert check(report(), max_drop=Thresholds(0.05)).passed           # and the dict itself, from Python


def test_a_file_beside_a_set_but_not_in_it_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = bench_folder(tmp_path)
    stray = write(p.parent / "old-report.json", report())
    rc, _, err = run(capsys, str(p), "--baseline", str(stray))
    assert rc == 2 and "baseline" in err and "the set has no old-report.json" in err


def test_a_bug_inside_check_is_exit_2_with_a_junit_file_not_a_regression(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import qcal.cli.check
    from qcal.cli import main

    def broken(*a: object, **k: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(qcal.cli.check, "check", broken)
    report = tmp_path / "r.json"
    report.write_text("{}")
    junit = tmp_path / "j.xml"
    assert main(["check", str(report), "--max-drop", "0.02", "--junit", str(junit)]) == 2
    root = ET.parse(junit).getroot()
    assert "internal error in qcal check (KeyError" in ET.tostring(root, encoding="unicode")
