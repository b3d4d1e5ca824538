"""Every benchmark that writes a results JSON records the git commit it ran at (benchmarks/provenance.py), so a
number in benchmarks/results/ can always be traced to the code that made it."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from benchmarks.provenance import git_commit, provenance

ROOT = Path(__file__).resolve().parent.parent
# scripts whose JSON output is not a results file: a runner for a peer tool (its output is read by another
# benchmark) and the reliability catalogue's inputs (the catalogue itself records the commit: reliability.py)
NOT_RESULTS = {"modelopt_runner.py", "reliability_cases.py", "reliability_catalogue_tools.py"}


def records_commit(source: str) -> bool:
    tree = ast.parse(source)
    names = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return bool(names & {"provenance", "git_commit"}) or "git_commit" in source


def writes_json(source: str) -> bool:
    return "json.dump" in source


def test_every_results_writer_records_the_commit() -> None:
    missing = [p.name for p in sorted((ROOT / "benchmarks").glob("*.py"))
               if p.name not in NOT_RESULTS and p.name != "provenance.py" and writes_json(p.read_text())
               and not records_commit(p.read_text())]
    assert missing == []


def test_the_check_can_fail() -> None:
    assert not records_commit("import json\njson.dumps({'a': 1})\n")
    assert records_commit("res.update(provenance())\n")


def test_provenance_names_this_checkout() -> None:
    p = provenance(threads=2)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if len(head) == 40:   # a git checkout (CI's clean checkout is one); else the file says it is not
        assert p["git_commit"].split()[0] == head
    else:
        assert p["git_commit"].startswith("unknown")
    assert p["machine"]["threads"] == 2 and "has_vnni" in p["machine"] and p["qcal_version"]
    assert git_commit(Path("/")).startswith("unknown")
