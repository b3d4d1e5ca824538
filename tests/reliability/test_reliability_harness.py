"""benchmarks/reliability.py, the harness of issue 23's catalogue: its classifier on hand-made runs and folders,
the catalogue's coverage of the issue's cases, and one real case end to end through the CLI."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from benchmarks import reliability as rel
from benchmarks import reliability_cases as rc
from benchmarks.reliability_catalogue import CASES
from exporters.outset import OutputSet


def case(expect: str = "error", match: str | None = None) -> dict[str, Any]:
    return {"id": "x", "kind": "test", "argv": [], "expect": expect, "match": match}


TB = 'Traceback (most recent call last):\n  File "qcal/cli.py", line 1, in main\nValueError: int3\n'


@pytest.mark.parametrize("run, expect, match, cls", [
    (rc.Run(1, stderr=TB), "error", None, "traceback"),
    (rc.Run(2, stdout=TB, stderr="qcal: error: x"), "error", None, "traceback"),   # a traceback on stdout counts
    (rc.Run(0), "error", None, "silent"),
    (rc.Run(2, stderr=""), "error", None, "silent"),                               # exit 2 but no message
    (rc.Run(None, seconds=90, timed_out=True), "error", None, "hang"),
    (rc.Run(-9), "error", None, "crash"),                                          # e.g. the OOM killer
    (rc.Run(2, stderr="qcal: error: opset=99: the exporter supports 13..20"), "error", "opset", "typed_error"),
    (rc.Run(2, stderr="qcal: error: something went wrong"), "error", "opset", "mismatch"),   # does not name it
    (rc.Run(2, stderr="usage: qcal quantize ...\nqcal quantize: error: argument --calib-size: invalid int value"),
     "error", "calib-size", "typed_error"),
    (rc.Run(1, stderr="qcal: error: bad report"), "error", None, "mismatch"),      # typed, but the wrong code
    (rc.Run(1, stdout="FAIL [max-drop] int8 / clean"), "error", None, "silent"),    # 'a slice failed' for bad input
    (rc.Run(0), "ok", None, "ok"),
    (rc.Run(2, stderr="qcal: error: refused"), "ok", None, "mismatch"),            # a valid input refused
    (rc.Run(1, stdout="qcal check r.json: 1/2 checks passed"), "fail", None, "ok"),
    (rc.Run(0, stdout="2/2 checks passed"), "fail", None, "silent"),
    (rc.Run(0), "any", None, "ok"),
    (rc.Run(2, stderr="qcal: error: repeat=10**12 is more than ..."), "any", None, "typed_error"),
])
def test_classifier_on_fake_runs(run: rc.Run, expect: str, match: str | None, cls: str) -> None:
    assert rel.classify(case(expect, match), run)[0] == cls


def test_classifier_killed_runs_and_problems() -> None:
    killed = rc.Run(-9, extra={"signalled": True}, note="SIGKILL at export")
    assert rel.classify(case("killed"), killed)[0] == "ok"
    assert rel.classify(case("killed"), killed, out_problem="left beside -o: ['.out.qcal-staging-7']") == \
        ("half_written", "left beside -o: ['.out.qcal-staging-7']")
    assert rel.classify(case("killed"), rc.Run(0, extra={"signalled": False}))[0] == "mismatch"
    assert rel.classify(case("killed"), rc.Run(0, extra={"signalled": True}))[0] == "mismatch"   # SIGINT ignored
    assert rel.classify(case("killed"), rc.Run(1, stderr=TB + "KeyboardInterrupt", extra={"signalled": True}))[0] \
        == "traceback"
    assert rel.classify(case("error"), rc.Run(2, stderr="qcal: error: x"), out_problem="not whole")[0] == \
        "half_written"
    assert rel.classify(case("ok"), rc.Run(0), post_problem="no JUnit file was written")[0] == "mismatch"


def test_half_written_folders_built_by_hand(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "tmp"
    work.mkdir()
    rc.previous_set(out)
    before = rel.snapshot(out)
    assert rel.output_problem(out, before, work) is None                 # untouched
    (out / "model.int8.onnx").write_bytes(b"new model beside the old report")   # what a rename-per-file did
    problem = rel.output_problem(out, before, work)
    assert problem is not None and "not a whole set" in problem
    assert rel.classify(case("killed"), rc.Run(-9, extra={"signalled": True}), problem)[0] == "half_written"
    (out / "model.int8.onnx").unlink()
    staging = tmp_path / f".out.qcal-staging-{os.getpid()}"
    staging.mkdir()
    assert "left beside -o" in str(rel.output_problem(out, before, work))
    staging.rmdir()
    with OutputSet(out) as s:                                           # a whole new set is fine
        s.path("report.json").write_text("{}")
        s.commit()
    assert rel.output_problem(out, before, work) is None
    (work / "qcal-4242-calib-abc").mkdir()                               # a work folder left in the temp dir
    assert "work folders" in str(rel.output_problem(out, before, work))
    absent = tmp_path / "never"
    assert rel.output_problem(absent, rel.snapshot(absent), tmp_path / "none") is None
    rep = tmp_path / "report"                                             # `qcal bench` failed before a report:
    (rep / "cells").mkdir(parents=True)                                   # only its resumable cache, fine
    assert rel.output_problem(rep, None, tmp_path / "none") is None
    (rep / "report.json").write_text("{}")                                # a report without the manifest: not
    assert "not a whole set" in str(rel.output_problem(rep, None, tmp_path / "none"))
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "p")                                  # never read: it would block
    assert rel.snapshot(tmp_path / "fifo") == {"p": "-"}


def test_the_catalogue_covers_the_issue() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) >= 150 and len(set(ids)) == len(ids)
    kinds = {c["kind"] for c in CASES}
    assert kinds >= {"config", "flags", "allocate", "ckpt", "output", "calib", "recipe", "check", "bench", "engine",
                     "lint", "cli", "llm", "signal", "concurrent", "disk"}
    issue = ["kill9_during_export", "sigterm_during_export", "concurrent_second_run", "out_locked", "out_is_file",
             "out_readonly_parent", "out_immutable_parent", "out_parent_is_file", "out_tmpfs_15m", "out_tmpfs_50m",
             "disk_fills_midway", "cfg_opset_99", "quantize_cfg_opset_99", "cfg_imgsz_100000",
             "allocate_choices_int3", "flag_calib_size_0", "recipe_self_cycle", "recipe_cycle_a_b_a",
             "recipe_repeat_huge", "recipe_path_escape_etc", "calib_truncated_video", "eval_truncated_video",
             "calib_folder_8_good_3_bad", "ckpt_state_dict", "ckpt_untrusted", "ckpt_missing", "ckpt_empty_file",
             "ckpt_text_named_pt", "ckpt_garbage_onnx", "calib_png_bomb_file", "check_metric_string",
             "check_metric_list", "check_metric_nan", "check_metric_null", "check_baseline_other_model",
             "check_fp32_zero", "check_fp32_negative", "check_max_drop_negative", "check_tolerance_negative",
             "check_control_char_condition", "check_junit_is_folder", "cfg_syntax_error", "cfg_unknown_key",
             "bench_threads_0"]
    assert not set(issue) - set(ids)
    slow = [c for c in CASES if c.get("slow")]
    assert len(slow) <= 10
    for c in CASES:
        assert c["expect"] in ("error", "ok", "fail", "any", "killed"), c["id"]
        assert isinstance(c["argv"], list) and all(isinstance(a, str) for a in c["argv"]), c["id"]
        assert c["expect"] != "killed" or c.get("runner"), c["id"]
    assert {c["id"] for c in rel.select(CASES, ["fast"])}.isdisjoint(c["id"] for c in slow)
    picked = rel.select(CASES, ["check_fp32_*", "signal"])
    assert {c["id"] for c in picked} == {c["id"] for c in CASES if c["kind"] == "signal"} | {
        "check_fp32_zero", "check_fp32_negative", "check_fp32_missing"}


def test_setup_helpers_make_what_they_say(tmp_path: Path) -> None:
    bomb = rc.png_bomb(tmp_path / "b.png", side=20000)
    data = bomb.read_bytes()
    assert len(data) < 200_000 and struct.unpack(">II", data[16:24]) == (20000, 20000)
    bad = rc.bad_images(tmp_path / "imgs")
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == sorted(p.name for p in bad)
    r = rc.report(rc.GOOD, sha="b" * 64)
    assert r["model"]["sha256"] == "b" * 64 and r["cells"]["int8"]["clean"] == {"map50_95": 0.79}


def test_one_real_case_end_to_end(tmp_path: Path) -> None:
    """A missing checkpoint through the real CLI: exit 2, one `qcal: error:` line, in well under the budget."""
    assert rel.main(["--only", "ckpt_missing", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "reliability.json").read_text())
    for key in ("cases", "typed_errors", "tracebacks", "silent", "hangs", "half_written", "ok", "cpu_flags",
                "git_commit", "date", "command", "rows"):
        assert key in res
    if res["rows"][0]["class"] == "skipped":
        pytest.skip(res["rows"][0]["why"])
    assert res["cases"] == 1 and res["typed_errors"] == 1 and res["tracebacks"] == 0
    row = res["rows"][0]
    assert row["rc"] == 2 and "nope.pt" in row["error_line"] and row["seconds"] < 30
    assert "| typed_error | 1 |" in (tmp_path / "reliability.md").read_text()


def test_run_case_plumbing(tmp_path: Path) -> None:
    """A case's {out} is its own folder's out/ (runners and setups see the same path), setup errors of the machine
    are 'skipped', and a case folder is not named after the case (a `match` must not hit the path)."""
    import argparse

    seen: dict[str, Any] = {}

    def runner(argv: list[str], ctx: dict[str, Any], timeout: float) -> rc.Run:
        seen.update(argv=argv, out=ctx["out"], tmp=ctx["tmp"])
        Path(ctx["out"]).mkdir()
        (Path(ctx["out"]) / "model.int8.onnx").write_text("half")   # a set without its manifest
        return rc.Run(2, stderr="qcal: error: -o: refused")

    opts = argparse.Namespace(timeout=5, mem_gb=0, keep=False)
    c = {"id": "plumbing_state_dict", "kind": "output", "argv": ["-o", "{out}"], "expect": "error",
         "match": "state_dict", "runner": runner}
    row = rel.run_case(c, tmp_path, opts)
    assert seen["out"] == str(Path(seen["tmp"]) / "out") and seen["argv"] == ["-o", seen["out"]]
    assert "state_dict" not in seen["tmp"]
    assert row["class"] == "half_written" and "not a whole set" in row["why"]
    assert not Path(seen["tmp"]).exists()    # removed after the case

    def no_mount(tmp: Path, ctx: dict[str, Any]) -> None:
        raise rc.Skip("cannot mount a tmpfs")

    row = rel.run_case({**c, "setup": no_mount}, tmp_path, opts)
    assert row["class"] == "skipped" and "tmpfs" in row["why"]


def test_children_get_sigint_even_when_the_harness_ignores_it() -> None:
    """A harness started with `&` from a script ignores SIGINT; the qcal it runs must still get KeyboardInterrupt."""
    import signal
    import subprocess
    import sys

    probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
        fixed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                               preexec_fn=rc._child_setup(0)).stdout.strip()
    finally:
        signal.signal(signal.SIGINT, old)
    assert (plain, fixed) == ("False", "True")
