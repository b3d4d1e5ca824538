"""What every results file records about where its numbers come from: the git commit of the checkout (marked when
qcal/, exporters/, calib_sets/ or benchmarks/ have uncommitted changes), qcal's version and the machine (CPU model,
flags, VNNI). Benchmarks merge `provenance()` into the JSON they write (tests/test_benchmarks_provenance.py checks
that every results writer does)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: Path = ROOT) -> str:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "HEAD") or "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "qcal", "exporters", "calib_sets", "benchmarks/*.py")
    return head + (" (+ uncommitted changes)" if dirty else "")


def provenance(**machine_extra: Any) -> dict[str, Any]:
    from qcal.runtime.machine import machine_info
    from qcal.version import __version__

    return {"git_commit": git_commit(), "qcal_version": __version__,
            "machine": {**machine_info().to_dict(), **machine_extra}}


__all__ = ["git_commit", "provenance"]
