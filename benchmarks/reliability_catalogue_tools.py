"""The reliability catalogue, part two: `qcal check`, `qcal bench`, `qcal engine`, `qcal lint`, the command line
itself, and the slow cases (real runs killed mid-way, two concurrent writers, a disk filling up, bad items in a
stream). The conventions are those of benchmarks/reliability_catalogue.py."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import reliability_cases as rc
from benchmarks.reliability_cases import QS, QX, SET, Setup, mkdir, put, seq, table

B = ["bench", "{ckpt}", "--trust-checkpoint", "--eval", "{eval}", "--precisions", "fp32", "--conditions", "clean",
     "--latency-runs", "0", "--bootstrap", "10", "-o", "{out}", "--no-progress"]
CHK = ["check", "{tmp}/r.json", "--max-drop", "0.05", "--junit", "{tmp}/junit.xml"]
CASES: list[dict[str, Any]] = []
name: str
m: str | None
setup: Setup | None
expect: str
argv: list[str]
extra: list[str]


def case(id: str, kind: str, argv: list[str], expect: str = "error", match: str | None = None, **kw: Any) -> None:
    CASES.append(rc.make_case(id, kind, argv, expect, match, **kw))


# --- qcal check --------------------------------------------------------------------------------------------------
def rep(cells: dict[str, Any] | None = None, name: str = "r.json", **top: Any) -> Setup:
    return lambda tmp, ctx: rc.write_report(tmp / name, rc.report(cells or rc.GOOD, **top))


def junit_written(failing: bool | None) -> Callable[[Path, dict[str, Any], rc.Run], str | None]:
    """The JUnit file exists and parses (a CI server must read it), with a failure or error when `failing`
    (None: when the command exited non-zero)."""
    def post(tmp: Path, ctx: dict[str, Any], run: rc.Run) -> str | None:
        import xml.etree.ElementTree as ET

        p = tmp / "junit.xml"
        bad_run = run.rc != 0 if failing is None else failing
        if not p.is_file():
            return "no JUnit file was written"
        try:
            root = ET.parse(p).getroot()
        except ET.ParseError as e:
            return f"the JUnit file does not parse: {e}"
        bad = root.findall(".//failure") + root.findall(".//error")
        return "the JUnit file records no failure or error" if bad_run and not bad else None
    return post


G8 = {"fp32": {"clean": 0.8}, "int8": {"clean": 0.79}}
for name, setup, m in table(
    ("metric_string", rep({"fp32": {"clean": 0.8}, "int8": {"clean": "0.79"}}), "map50_95"),
    ("metric_list", rep({"fp32": {"clean": 0.8}, "int8": {"clean": [0.79]}}), "map50_95"),
    ("metric_nan", lambda t, c: rc.write_report(t / "r.json", json.dumps(rc.report(G8)).replace("0.79", "NaN")),
     "map50_95"),
    ("metric_null", rep({"fp32": {"clean": 0.8}, "int8": {"clean": None}}), "map50_95"),
    ("metric_bool", rep({"fp32": {"clean": 0.8}, "int8": {"clean": True}}), "map50_95"),
    ("metric_dict", rep({"fp32": {"clean": 0.8}, "int8": {"clean": {"v": 1}}}), "map50_95"),
    ("metric_negative", rep({"fp32": {"clean": 0.8}, "int8": {"clean": -0.2}}), "int8"),
    ("fp32_zero", rep({"fp32": {"clean": 0.0}, "int8": {"clean": 0.0}}), "fp32"),
    ("fp32_negative", rep({"fp32": {"clean": -0.5}, "int8": {"clean": 0.1}}), "fp32"),
    ("cells_list", put("r.json", json.dumps({**rc.report(G8), "cells": []})), "cells"),
    ("cells_precision_list", put("r.json", json.dumps({**rc.report(G8), "cells": {"fp32": {"clean": {"map50_95": 0.8}},
                                                                                   "int8": [0.79]}})), "int8"),
    ("cells_condition_number", put("r.json", json.dumps({**rc.report(G8), "cells": {"fp32": {"clean": 0.8},
                                                                                     "int8": {"clean": 0.79}}})),
     "clean"),
    ("conditions_string", put("r.json", json.dumps({**rc.report(G8), "conditions": "clean"})), "conditions"),
    ("condition_without_name", put("r.json", json.dumps({**rc.report(G8), "conditions": [{"steps": []}]})),
     "conditions"),
    ("report_folder", mkdir("r.json"), "r.json"), ("not_json", put("r.json", "hello"), "json"),
    ("truncated_json", lambda t, c: rc.write_report(t / "r.json", json.dumps(rc.report(G8))[:40]), "json"),
    ("empty_file", put("r.json", ""), "r.json"), ("no_schema", put("r.json", json.dumps({"cells": {}})), "schema"),
    ("other_schema", put("r.json", json.dumps({**rc.report(G8), "schema": "qcal.other/1"})), "schema"),
    ("json_list", put("r.json", "[1, 2]"), "r.json"), ("not_utf8", put("r.json", b'{"schema": "\xff"}'), "r.json"),
):
    case(f"check_{name}", "check", CHK, match=m, setup=setup, post=junit_written(True))
case("check_report_missing", "check", CHK, match="r.json", post=junit_written(True))
BL = [*CHK, "--baseline", "{tmp}/b.json"]
case("check_baseline_other_model", "check", BL, match="model", setup=seq(rep(), rep(name="b.json", sha="b" * 64)),
     post=junit_written(True))
case("check_baseline_other_model_allowed", "check", [*BL, "--allow-other-model"], "ok",
     setup=seq(rep(), rep(name="b.json", sha="b" * 64)), post=junit_written(False))
case("check_baseline_missing", "check", BL, match="b.json", setup=rep(), post=junit_written(True))
case("check_baseline_metric_string", "check", BL, match="map50_95", post=junit_written(True),
     setup=seq(rep(), rep({"fp32": {"clean": 0.8}, "int8": {"clean": "0.79"}}, "b.json")))
case("check_baseline_not_json", "check", BL, match="b.json", setup=seq(rep(), put("b.json", "{")),
     post=junit_written(True))
ARGS = ["check", "{tmp}/r.json", "--junit", "{tmp}/junit.xml"]
for name, extra, m in table(
    ("max_drop_negative", ["--max-drop", "-1"], "max-drop"), ("max_drop_abc", ["--max-drop", "abc"], "max-drop"),
    ("max_drop_nan", ["--max-drop", "nan"], "max-drop"), ("max_drop_inf", ["--max-drop", "inf"], "max-drop"),
    ("max_drop_empty_condition", ["--max-drop", "=0.1"], "max-drop"),
    ("max_drop_condition_negative", ["--max-drop", "clean=-0.5"], "max-drop"),
    ("min_map_negative", ["--min-map", "-1"], "min-map"), ("min_map_abc", ["--min-map", "x"], "min-map"),
    ("tolerance_negative", ["--max-drop", "0.05", "--tolerance", "-5"], "tolerance"),
    ("tolerance_nan", ["--max-drop", "0.05", "--tolerance", "nan"], "tolerance"),
    ("tolerance_abc", ["--max-drop", "0.05", "--tolerance", "abc"], "tolerance"),
    ("no_rule", [], "max-drop"), ("precisions_empty", ["--max-drop", "0.05", "--precisions", ","], "precisions"),
):
    case(f"check_{name}", "check", [*ARGS, *extra], match=m, setup=rep())
for name, extra, setup, expect in table(
    ("passes", ["--max-drop", "0.05"], rep(), "ok"), ("regression", ["--max-drop", "0.001"], rep(), "fail"),
    ("unknown_condition", ["--max-drop", "nosuch=0.1"], rep(), "fail"),
    ("unknown_precision", ["--max-drop", "0.05", "--precisions", "int3"], rep(), "fail"),
    ("fp32_missing", ["--max-drop", "0.05"], rep({"int8": {"clean": 0.7}}), "fail"),
    ("control_char_condition", ["--max-drop", "0.05"], rep({"fp32": {"no\x01ise\x1b[31m": 0.8},
                                                             "int8": {"no\x01ise\x1b[31m": 0.79}}), "any"),
    ("control_char_precision", ["--max-drop", "0.05"], rep({"fp32": {"clean": 0.8}, "in\x0bt8\x00": {"clean": 0.79}}),
     "any"),
):
    case(f"check_{name}", "check", [*ARGS, *extra], expect, setup=setup,
         post=junit_written({"ok": False, "fail": True}.get(expect)))
for name, junit, setup, expect, m in table(
    ("junit_is_folder", "{tmp}/j", mkdir("j"), "error", "j"),
    ("junit_missing_parent", "{tmp}/new/dir/junit.xml", None, "any", None),
    ("junit_readonly", "{tmp}/ro/junit.xml", lambda t, c: rc.mount_tmpfs(t / "ro", c, "1m", ro=True), "error", "junit"),
):
    case(f"check_{name}", "check", ["check", "{tmp}/r.json", "--max-drop", "0.05", "--junit", junit], expect, m,
         setup=seq(rep(), setup or (lambda t, c: None)))


def no_gpu(tmp: Path, ctx: dict[str, Any]) -> None:
    if Path("/dev/nvidia0").exists():
        raise rc.Skip("a GPU is present: --device cuda is valid here")


# --- qcal bench (arguments; the base run is FP32 only on 4 frames, so a missed check ends soon) ----------------
def bflag(flag: str, value: str) -> list[str]:
    i = B.index(flag)
    return [*B[:i + 1], value, *B[i + 2:]]


for name, argv, setup, m in table(
    ("threads_0", [*B, "--threads", "0"], None, "threads"), ("threads_negative", [*B, "--threads", "-2"], None,
                                                             "threads"),
    ("threads_abc", [*B, "--threads", "abc"], None, "threads"),
    ("latency_runs_negative", bflag("--latency-runs", "-1"), None, "latency"),
    ("bootstrap_negative", bflag("--bootstrap", "-5"), None, "bootstrap"),
    ("precisions_empty", bflag("--precisions", ""), None, "precision"),
    ("precisions_unknown", bflag("--precisions", "fp32,int3"), None, "int3"),
    ("int8_clean_without_calib", bflag("--precisions", "fp32,int8-clean"), None, "--calib"),
    ("onnx_precision_missing", bflag("--precisions", "fp32,onnx:{tmp}/nope.onnx"), None, "nope.onnx"),
    ("named_recipe_missing", bflag("--precisions", "fp32,int8:x={tmp}/nope.toml"), None, "nope.toml"),
    ("conditions_unknown", bflag("--conditions", "nosuch"), None, "nosuch"),
    ("conditions_missing_toml", bflag("--conditions", "{tmp}/c.toml"), None, "c.toml"),
    ("conditions_bad_toml", bflag("--conditions", "{tmp}/c.toml"), put("c.toml", "[conditions.x\n"), "c.toml"),
    ("eval_missing", bflag("--eval", "{tmp}/nope"), None, "nope"),
    ("no_eval", [a for a in B if a not in ("--eval", "{eval}")], None, "--eval"),
    ("checkpoint_missing", ["bench", "{tmp}/nope.pt", *B[2:]], None, "nope.pt"),
    ("untrusted", [a for a in B if a != "--trust-checkpoint"], None, "--trust-checkpoint"),
    ("config_opset_99", [*B, "--config", "{tmp}/c.toml"], put("c.toml", "opset = 99\n"), "opset"),
    ("device_cuda_without_gpu", [*B, "--device", "cuda"], no_gpu, "cuda"),
    ("ray_bad_address", [*B, "--executor", "ray", "--address", "256.0.0.1:1"], None, "256.0.0.1"),
    ("sweep_missing", ["bench", "{tmp}/nope.toml", "-o", "{out}"], None, "nope.toml"),
    ("sweep_syntax_error", ["bench", "{tmp}/s.toml", "-o", "{out}"], put("s.toml", "eval = \n"), "s.toml"),
    ("sweep_unknown_key", ["bench", "{tmp}/s.toml", "-o", "{out}"], put("s.toml", 'evall = "bundled:vtest"\n'),
     "evall"),
    ("sweep_with_threads", ["bench", "{tmp}/s.toml", "-o", "{out}", "--threads", "4"],
     put("s.toml", 'eval = "bundled:vtest[400:404]"\n'), "--threads"),
):
    case(f"bench_{name}", "bench", argv, match=m, setup=setup, timeout=120)

case("bench_out_is_file", "output", [*B[:-3], "-o", "{tmp}/f", "--no-progress"], match="is a file",
     setup=put("f", "x"))
case("bench_out_locked", "output", B, match="another qcal run", runner=rc.with_lock_held)

# --- qcal engine / lint ------------------------------------------------------------------------------------------
TINY: Setup = lambda t, c: rc.tiny_onnx(t / "m.onnx")  # noqa: E731
E = ["engine", "{tmp}/m.onnx", "-o", "{tmp}/m.engine"]
for name, argv, setup, expect, m in table(
    ("model_missing", ["engine", "{tmp}/nope.onnx", "-o", "{tmp}/m.engine"], None, "error", "nope.onnx"),
    ("garbage_onnx", E, put("m.onnx", "not a model"), "error", "m.onnx"),
    ("empty_file", E, put("m.onnx", b""), "error", "m.onnx"),
    ("model_folder", E, mkdir("m.onnx"), "error", "m.onnx"),
    ("workspace_0", [*E, "--workspace-mb", "0"], TINY, "error", "workspace"),
    ("workspace_negative", [*E, "--workspace-mb", "-5"], TINY, "error", "workspace"),
    ("cache_without_calib", [*E, "--cache", "{tmp}/calib.cache"], seq(TINY, put("calib.cache", "x")), "error",
     "--calib"),
    ("cache_missing", [*E, "--cache", "{tmp}/nope.cache", "--calib", "{calib}"], TINY, "error", "nope.cache"),
    ("out_is_folder", ["engine", "{tmp}/m.onnx", "-o", "{tmp}/eng"], seq(TINY, mkdir("eng")), "error", "eng"),
    ("out_parent_is_file", ["engine", "{tmp}/m.onnx", "-o", "{tmp}/f/m.engine"], seq(TINY, put("f", "x")), "error",
     "f"),
    ("timing_cache_folder", [*E, "--timing-cache", "{tmp}/tc"], seq(TINY, mkdir("tc")), "error", "tc"),
    ("tiny_no_tensorrt", E, TINY, "any", "plan-only"),
    ("tiny_plan_only", [*E, "--plan-only"], TINY, "ok", None),
):
    case(f"engine_{name}", "engine", argv, expect, m, setup=setup)
for name, argv, setup, expect, m in table(
    ("missing", ["lint", "{tmp}/nope.onnx"], None, "error", "nope.onnx"),
    ("garbage", ["lint", "{tmp}/m.onnx"], put("m.onnx", "not a model"), "error", "m.onnx"),
    ("empty_file", ["lint", "{tmp}/m.onnx"], put("m.onnx", b""), "error", "m.onnx"),
    ("folder", ["lint", "{tmp}/m.onnx"], mkdir("m.onnx"), "error", "m.onnx"),
    ("json_into_folder", ["lint", "{tmp}/m.onnx", "--json", "{tmp}/j"], seq(TINY, mkdir("j")), "error", "j"),
    ("json_parent_is_file", ["lint", "{tmp}/m.onnx", "--json", "{tmp}/f/l.json"], seq(TINY, put("f", "x")), "error",
     "f"),
    ("limit_negative", ["lint", "{tmp}/m.onnx", "--limit", "-1"], TINY, "error", "limit"),
    ("tiny_ok", ["lint", "{tmp}/m.onnx", "--json", "{tmp}/l.json"], TINY, "ok", None),
):
    case(f"lint_{name}", "lint", argv, expect, m, setup=setup)

# --- the command line itself ------------------------------------------------------------------------------------
for name, argv, expect, m in table(
    ("no_args", [], "error", None), ("unknown_subcommand", ["frobnicate"], "error", "frobnicate"),
    ("check_no_report", ["check"], "error", "report"), ("lint_no_model", ["lint"], "error", "model"),
    ("engine_no_out", ["engine", "m.onnx"], "error", "-o"), ("bench_no_checkpoint", ["bench"], "error", "checkpoint"),
    ("config_extra_arg", ["config", "foo"], "error", "foo"), ("demo_unknown_flag", ["demo", "--fast"], "error", "fast"),
    ("help", ["--help"], "ok", None), ("quantize_help", ["quantize", "--help"], "ok", None),
):
    case(f"cli_{name}", "cli", argv, expect, m)

# --- slow: real runs killed, concurrent, a disk that fills up, bad items mid-stream ------------------------------
PREV: Setup = lambda t, c: rc.previous_set(Path(c["out"]))  # noqa: E731
SLOW: dict[str, Any] = {"slow": True, "timeout": 600}
case("kill9_during_export", "signal", QS, "killed", setup=PREV, runner=rc.killer(signal.SIGKILL, "export"),
     recover=True, **SLOW)
case("kill9_during_calibration", "signal", QS, "killed", setup=PREV,
     runner=rc.killer(signal.SIGKILL, "work", delay=4.0), recover=True, **SLOW)
case("sigterm_during_export", "signal", QS, "killed", setup=PREV, runner=rc.killer(signal.SIGTERM, "export"), **SLOW)
case("sigint_during_calibration", "signal", QS, "killed", setup=PREV,
     runner=rc.killer(signal.SIGINT, "work", delay=4.0), **SLOW)
case("concurrent_second_run", "concurrent", QS, match="another qcal run", runner=rc.concurrent,
     post=rc.first_run_ok, **SLOW)
case("disk_fills_midway", "disk", [*[a for a in QS if a not in ("-o", "{out}")], "-o", "{tmp}/disk/out"],
     match="disk is full", out_path="{tmp}/disk/out", runner=rc.fill_disk_midway, **SLOW,
     setup=lambda t, c: rc.mount_tmpfs(t / "disk", c, f"{int(4 * Path(c['ckpt']).stat().st_size / 2**20) + 16}m"))
case("ok_missing_parents", "output", [*[a for a in QS if a not in ("-o", "{out}")], "-o", "{tmp}/a/b/c/out"], "ok",
     out_path="{tmp}/a/b/c/out", files=SET, **SLOW)


def skipped_named(n: int) -> Callable[[Path, dict[str, Any], rc.Run], str | None]:
    def post(tmp: Path, ctx: dict[str, Any], run: rc.Run) -> str | None:
        try:
            skipped = json.loads((Path(ctx["out"]) / "report.json").read_text()).get("skipped")
        except (OSError, ValueError) as e:
            return f"report.json unreadable: {e}"
        return None if isinstance(skipped, list) and len(skipped) >= n else f"report.json skipped={skipped!r}"
    return post


case("calib_folder_8_good_3_bad", "calib", [*QX, "--calib", "{tmp}/imgs"], "ok", files=SET, post=skipped_named(3),
     setup=lambda t, c: (rc.images(t / "imgs", 8, 96), rc.bad_images(t / "imgs")), **SLOW)
case("calib_truncated_video", "calib", [*[a for a in QS if a not in ("--calib", "{calib}")], "--calib", "{tmp}/t.avi"],
     "ok", files=SET, post=skipped_named(1), setup=lambda t, c: rc.truncated_video(t / "t.avi"), **SLOW)
case("eval_truncated_video", "calib", [*QS, "--eval", "{tmp}/t.avi"], "ok", files=SET,
     setup=lambda t, c: rc.truncated_video(t / "t.avi"), **SLOW)
