"""`qcal bench` refuses bad counts, a wrong --address and a disk without room before any model is loaded."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from exporters.outset import FolderLock, OutputSetError


def run_cli(*argv: str) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "qcal.cli", *argv], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stderr, time.perf_counter() - t0


@pytest.mark.parametrize(("flags", "message"), [
    (["--threads", "0"], "--threads 0: must be >= 1"),
    (["--latency-runs", "-1"], "--latency-runs -1: must be >= 0"),
    (["--bootstrap", "-5"], "--bootstrap -5: must be >= 0"),
    (["--address", "10.0.0.1:6379"], "needs --executor ray"),
])
def test_bad_bench_flags_are_refused_before_the_model_loads(tmp_path: Path, flags: list[str], message: str) -> None:
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"\x80\x02")
    rc, err, seconds = run_cli("bench", str(ckpt), "--eval", "bundled:vtest[360:370]", "-o", str(tmp_path / "r"),
                               *flags)
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_an_untrusted_or_missing_checkpoint_is_refused_before_torch(tmp_path: Path) -> None:
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"\x80\x02")
    rc, err, _ = run_cli("bench", str(ckpt), "--eval", "bundled:vtest[360:370]", "-o", str(tmp_path / "r"))
    assert rc == 2 and "--trust-checkpoint" in err and "Traceback" not in err
    rc, err, _ = run_cli("bench", str(tmp_path / "none.pt"), "--eval", "x", "-o", str(tmp_path / "r"))
    assert rc == 2 and "does not exist" in err


def test_the_report_folder_needs_room_for_what_it_does_not_hold_yet(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.disk_usage

    def small(path: Any) -> Any:
        u = real(path)
        return type(u)(u.total, u.total - 50 * 2**20, 50 * 2**20)   # 50 MiB free

    monkeypatch.setattr(shutil, "disk_usage", small)
    out = tmp_path / "report"
    with pytest.raises(OutputSetError, match=r"50 MiB free on its disk, the report's models and cells need about "
                                             r"100 MiB more"):
        FolderLock(out, expected_bytes=100 * 2**20).__enter__()
    with FolderLock(out):   # the refused run released its lock
        pass
    out.mkdir()
    (out / "cells.bin").write_bytes(bytes(60 * 2**20))    # a resumed run: 60 MiB already there, 40 more to come
    with FolderLock(out, expected_bytes=100 * 2**20):
        pass
