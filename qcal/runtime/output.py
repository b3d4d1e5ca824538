"""The output folder of a run: opened (checked and locked) before the work, written whole or not at all.

A thin qcal layer over exporters.outset: its errors become qcal's ExportError, a full disk while writing is named as
such, and the work folders (`qcal-PID-*` in the temp dir) that a SIGKILLed run left are removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from exporters.errors import ExporterError
from exporters.outset import OutputSet, disk_full, pid_alive
from qcal.errors import ExportError
from qcal.version import __version__

WORKDIR_PREFIX = "qcal-"


@contextmanager
def open_output(directory: str | Path, *, expected_bytes: float = 0) -> Iterator[OutputSet]:
    """An OutputSet on `directory`, opened now: every check of the folder runs and the lock is held until exit."""
    s = OutputSet(directory, expected_bytes=expected_bytes, meta={"qcal_version": __version__})
    try:
        s.open()
    except ExporterError as e:
        raise ExportError(str(e)) from None
    with s:
        yield s


def write_set(s: OutputSet, write: Callable[[OutputSet], dict[str, str]]) -> dict[str, Path]:
    """Run `write` into the staging folder of `s` and commit; the final paths of the set, by role."""
    try:
        names = write(s)
        s.commit()
    except OSError as e:
        s.close()
        what = "the disk is full" if disk_full(e) else (e.strerror or str(e))
        raise ExportError(f"-o {s.target}: writing the new set failed ({what}: {e.filename or ''}); the previous "
                          "set (if any) is untouched. Free some space or choose another -o.") from None
    except ExporterError as e:
        s.close()
        raise ExportError(str(e)) from None
    return {k: s.final(v) for k, v in names.items()}


def workdir(tag: str = "") -> tempfile.TemporaryDirectory[str]:
    """A temporary work folder named after this process (`qcal-PID-TAG-*`), after removing those of processes that
    no longer run."""
    sweep_workdirs()
    return tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-{tag + '-' if tag else ''}")


def sweep_workdirs(root: str | Path | None = None) -> list[Path]:
    """Remove `qcal-PID-*` work folders in the temp dir whose process is gone (a SIGKILL runs no cleanup)."""
    removed = []
    for p in Path(root or tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        pid = p.name[len(WORKDIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or not p.is_dir() or p.owner() != _me():
            continue
        if not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _me() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def estimate_bytes(checkpoint: Any) -> float:
    """About what a set needs on disk: the FP32 ONNX is ~2x a half-precision .pt, the INT8 ~0.5x; 4x + 8 MiB."""
    try:
        return 4 * Path(checkpoint).stat().st_size + 8 * 2**20
    except (OSError, TypeError):
        return 0.0


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While inside, SIGTERM unwinds like Ctrl-C (finally blocks and context managers run: staging and work folders
    go); the previous handler is put back after. Outside the main thread (where handlers cannot be set) a no-op."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
