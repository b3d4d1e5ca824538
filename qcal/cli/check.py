"""`qcal check` on the command line: its arguments, the --junit file checked before gating and written on every
exit (the results, or on exit 2 one case in error saying why), the exit status."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from exporters.outset import user_mode
from exporters.quant_table import atomic_write_text
from qcal.gate.check import CheckResult, ReportError, Thresholds, check, printable
from qcal.gate.junit import junit_error_xml


def junit_target(path: str | Path, *, inputs: Sequence[str | Path] = ()) -> Path:
    """`path` checked as a place to write the JUnit file (its folder created when missing), before any gating."""
    p = Path(path)
    if p.is_dir():
        raise ReportError(f"is a folder; give a file path, e.g. {printable(str(p / 'junit.xml'))}.", None, p, "--junit")
    if p.exists() and not p.is_file():
        raise ReportError("exists and is not a regular file; give a file path.", None, p, "--junit")
    if any(Path(i).is_file() and p.exists() and p.samefile(i) for i in inputs):
        raise ReportError("is one of the reports being checked; writing JUnit there would destroy it. Give "
                          "another path, e.g. junit.xml.", None, p, "--junit")
    parent = p.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = "a part of it is a file, not a folder" if isinstance(e, (FileExistsError, NotADirectoryError)) \
            else e.strerror
        raise ReportError(f"its folder {printable(str(parent))} cannot be created ({why}); give a path in "
                          "a folder you can write to.", None, p, "--junit") from None
    try:   # the real test: root passes os.access on a read-only file system
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{p.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ReportError(f"its folder {printable(str(parent))} is not writable ({e.strerror}); give a path in a "
                          "folder you can write to.", None, p, "--junit") from None
    return p


def _write(path: str | Path, text: str) -> Path:
    try:
        atomic_write_text(Path(path), text)
        user_mode(path)   # the user's umask, not mkstemp's 0600
    except OSError as e:
        raise ReportError(f"cannot be written ({e.strerror}); give a path in a folder you can write to.",
                          None, path, "--junit") from None
    return Path(path)


def write_junit(result: CheckResult, path: str | Path) -> Path:
    return _write(path, result.to_junit())


def write_error_junit(error: ReportError, path: str | Path) -> Path:
    return _write(path, junit_error_xml(str(error), error.source or ""))


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from qcal.cli.options import add_subcommand

    k = add_subcommand(
        sub, "check", help="CI gate: fail when a slice of a robustness report misses its threshold",
        description="Check a report.json from `qcal bench` or `qcal quantize --eval SET`. Exit 0: every check passed; 1: a slice failed (the "
        "reason is printed); 2: an input is unusable (missing, malformed, a baseline of another model, a "
        "negative threshold, a quantize report without --eval; the reason is printed, and written to --junit). Rules apply to every precision "
        "except fp32 unless --precisions names them.",
        examples=["qcal check report/report.json --max-drop 0.02 --max-drop noise_medium=0.05 "
                  "--baseline main-report.json --tolerance 0.01 --junit junit.xml"])
    k.add_argument("report", help="report.json written by `qcal bench` or `qcal quantize --eval SET`")
    k.add_argument("--max-drop", action="append", metavar="[COND=]X", help="max relative mAP50-95 drop vs FP32 "
                   "on the same condition (0.02 = 2%%, >= 0); COND=X overrides one condition; repeatable")
    k.add_argument("--min-map", action="append", metavar="[COND=]X", help="minimum absolute mAP50-95 (>= 0); "
                   "repeatable")
    k.add_argument("--baseline", help="an earlier report.json of the same model: fail when a slice is worse by "
                   "more than --tolerance")
    k.add_argument("--tolerance", default="0", help="allowed mAP50-95 loss vs --baseline (absolute, >= 0)")
    k.add_argument("--allow-other-model", action="store_true", help="accept a --baseline measured on another "
                   "model (a different sha256 in its report), e.g. to hold a retrained model to the old numbers")
    k.add_argument("--precisions", help="comma list of precisions to gate (default: all but fp32)")
    k.add_argument("--junit", help="write JUnit XML here (one test case per rule, precision and condition; on "
                   "exit 2 one case in error saying why)")


def _precisions(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise ReportError(f"--precisions {printable(repr(text))} names no precision; give e.g. --precisions "
                          "int8,int8-robust, or leave it out to gate all but fp32.")
    return names


def run(args: argparse.Namespace) -> int:
    """`qcal check`: 0 pass, 1 a slice failed; ReportError (exit 2) after writing the error JUnit file."""
    inputs = [x for x in (args.report, args.baseline) if x]
    junit = junit_target(args.junit, inputs=inputs) if args.junit else None
    try:
        try:   # parsed here, not by argparse, so a bad value is exit 2 with the JUnit file written too
            tolerance = float(args.tolerance)
        except ValueError:
            raise ReportError(f"--tolerance {printable(repr(args.tolerance))}: expected a number, e.g. 0.01.") from None
        result = check(args.report, max_drop=Thresholds.parse(args.max_drop, "max-drop") if args.max_drop else None,
                       min_map=Thresholds.parse(args.min_map, "min-map") if args.min_map else None,
                       baseline=args.baseline, tolerance=tolerance, allow_other_model=args.allow_other_model,
                       precisions=_precisions(args.precisions))
    except ReportError as e:
        if junit is not None:
            write_error_junit(e, junit)
        raise
    except Exception as e:   # a bug in check itself must not read as a regression (1) nor leave CI without JUnit
        import traceback

        traceback.print_exc()
        err = ReportError(f"internal error in qcal check ({type(e).__name__}: {printable(str(e))}); the report could "
                          "not be gated. Please report this with the report file.")
        if junit is not None:
            write_error_junit(err, junit)
        raise err from None
    if junit is not None:
        write_junit(result, junit)
    print(result.summary())
    return 0 if result.passed else 1
