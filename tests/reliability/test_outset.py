"""Whole-or-absent output sets (exporters.outset, qcal.runtime.output): after any failure the folder is the complete
previous set or the complete new one; a second writer is refused; killed runs leave nothing that looks like output."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exporters.outset import (
    MANIFEST,
    IncompleteSetError,
    OutputLockedError,
    OutputSet,
    OutputSetError,
    verify,
)
from qcal.errors import ExportError
from qcal.runtime.output import open_output, sweep_workdirs, write_set

ROOT = Path(__file__).resolve().parents[2]


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def siblings(d: Path) -> list[str]:
    """What a writer left beside the folder, other than the lock file."""
    return sorted(p.name for p in d.parent.iterdir() if p.name.startswith(f".{d.name}.") and
                  not p.name.endswith(".qcal.lock"))


def write_files(s: OutputSet, files: dict[str, str], fail_at: int | None = None) -> dict[str, str]:
    for i, (name, text) in enumerate(files.items()):
        if i == fail_at:
            raise RuntimeError(f"simulated crash while writing {name}")
        s.path(name).write_text(text)
    return {n: n for n in files}


OLD = {"model.int8.onnx": "old model", "quant_table.json": "old table", "report.json": "old report"}
NEW = {"model.int8.onnx": "new model", "quant_table.json": "new table", "report.json": "new report",
       "sub/extra.txt": "new extra"}


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    with open_output(d) as s:
        write_set(s, lambda s: write_files(s, OLD))
    return d


def test_commit_writes_a_manifest_that_verify_accepts(previous: Path) -> None:
    m = verify(previous)
    assert sorted(m["files"]) == sorted(OLD)
    assert m["schema"] == "qcal.outset/1" and m["qcal_version"]
    assert siblings(previous) == []
    (previous / "report.json").write_text("edited")
    with pytest.raises(IncompleteSetError, match="report.json does not match"):
        verify(previous)


@pytest.mark.parametrize("fail_at", range(len(NEW)))
def test_a_crash_at_any_write_leaves_the_previous_set_whole(previous: Path, fail_at: int) -> None:
    before = snapshot(previous)
    with pytest.raises(RuntimeError, match="simulated crash"), open_output(previous) as s:
        write_files(s, NEW, fail_at=fail_at)
        s.commit()
    assert snapshot(previous) == before
    verify(previous)
    assert siblings(previous) == []


def test_a_new_set_replaces_the_whole_previous_one(previous: Path) -> None:
    with open_output(previous) as s:
        paths = write_set(s, lambda s: write_files(s, NEW))
    assert {n: p.read_text() for n, p in paths.items()} == NEW
    assert sorted(verify(previous)["files"]) == sorted(NEW)
    assert siblings(previous) == []


def test_a_full_disk_while_writing_is_a_typed_error_and_the_previous_set_stays(previous: Path) -> None:
    before = snapshot(previous)

    def enospc(s: OutputSet) -> dict[str, str]:
        s.path("model.int8.onnx").write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(s.path("quant_table.json")))

    with pytest.raises(ExportError, match="disk is full.*previous set .* is untouched"), open_output(previous) as s:
        write_set(s, enospc)
    assert snapshot(previous) == before and siblings(previous) == []


def _tmpfs(path: Path, size: str, ro: bool = False) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode == 0


def test_a_real_full_disk(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the patched ENOSPC test covers the logic")
    try:
        d = disk / "out"
        with open_output(d) as s:
            write_set(s, lambda s: write_files(s, {"a.txt": "small"}))
        before = snapshot(d)
        big = {"model.int8.onnx": "x" * 900_000, "quant_table.json": "y" * 900_000}
        with pytest.raises(ExportError, match="disk is full"), open_output(d) as s:
            write_set(s, lambda s: write_files(s, big))
        assert snapshot(d) == before and siblings(d) == []
        with pytest.raises(ExportError, match="MiB free"), open_output(d, expected_bytes=50 * 2**20):
            pass   # the space check runs before the work
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_folder_problems_are_refused_before_the_work(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("user data")
    with pytest.raises(ExportError, match="is a file, not a folder"), open_output(f):
        pass
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("x")
    with pytest.raises(ExportError, match=r"holds files qcal did not write \(thesis.tex\)"), open_output(user):
        pass
    assert (user / "thesis.tex").read_text() == "x"
    legacy = tmp_path / "legacy"   # what an older qcal wrote (no manifest): replaced, not refused
    legacy.mkdir()
    (legacy / "model.int8.onnx").write_text("old")
    with open_output(legacy) as s:
        write_set(s, lambda s: write_files(s, {"report.json": "{}"}))
    assert sorted(verify(legacy)["files"]) == ["report.json"]
    with pytest.raises(ExportError, match="MiB free"), open_output(tmp_path / "big", expected_bytes=2**60):
        pass
    assert not (tmp_path / "big").exists()


def test_a_read_only_folder_is_refused_before_the_work(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    if os.geteuid() != 0:
        ro.mkdir()
        ro.chmod(0o555)
    elif not _tmpfs(ro, "1m", ro=True):
        pytest.skip("root ignores permissions and no read-only tmpfs can be mounted here")
    try:
        with pytest.raises(ExportError, match="not writable|cannot create"), open_output(ro / "out"):
            pass
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=False)


def test_a_second_writer_is_refused_in_process_and_across_processes(tmp_path: Path) -> None:
    d = tmp_path / "out"
    with open_output(d) as s:
        with pytest.raises(ExportError, match="another qcal run is writing it"), open_output(d):
            pass
        write_set(s, lambda s: write_files(s, OLD))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from exporters.outset import OutputSet
        with OutputSet({str(d)!r}) as s:
            print("locked", flush=True)
            time.sleep(30)
        """)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            OutputSet(d).open()
    finally:
        holder.kill()
        holder.wait()
    with open_output(d):   # the kernel released the lock of the killed process
        pass


def test_a_kill_between_the_two_renames_is_repaired(previous: Path) -> None:
    before = snapshot(previous)
    s = OutputSet(previous).open()
    write_files(s, NEW)
    previous.rename(previous.parent / f".{previous.name}.qcal-old-99999")   # the first rename, then the kill
    s._lock_fd and os.close(s._lock_fd)
    s._lock_fd = None
    with pytest.raises(IncompleteSetError, match="previous set is in .*qcal-old-99999"):
        verify(previous)
    with open_output(previous):   # the next writer puts the previous set back and removes the leftovers
        pass
    assert snapshot(previous) == before and siblings(previous) == []


def test_sigkill_and_sigterm_mid_write(previous: Path, tmp_path: Path) -> None:
    before = snapshot(previous)
    script = textwrap.dedent(f"""
        import time
        from qcal.runtime.output import open_output, sigterm_as_exit, workdir
        with sigterm_as_exit(), open_output({str(previous)!r}) as s:
            w = workdir()
            s.path("model.int8.onnx").write_text("half")
            print(w.name, flush=True)
            time.sleep(30)
        """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    for sig, code in ((signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)):
        p = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True, env=env)
        assert p.stdout is not None
        work = Path(p.stdout.readline().strip())
        assert work.is_dir() and siblings(previous)   # staging exists mid-write
        p.send_signal(sig)
        assert p.wait(timeout=20) == code
        assert snapshot(previous) == before   # the previous set, whole, in either case
        if sig == signal.SIGTERM:   # cleanup ran: no staging, no work folder
            assert siblings(previous) == [] and not work.exists()
        else:   # nothing ran; the next writer and the next work folder remove what was left
            assert sweep_workdirs(tmp_path) == [work]
            with open_output(previous):
                pass
            assert siblings(previous) == []
    verify(previous)


def test_verify_refuses_a_folder_without_manifest(tmp_path: Path) -> None:
    d = tmp_path / "half"
    d.mkdir()
    (d / "model.int8.onnx").write_text("x")
    with pytest.raises(IncompleteSetError, match=f"{MANIFEST} is missing"):
        verify(d)
    (d / MANIFEST).write_text(json.dumps({"schema": "qcal.outset/1", "files": {"report.json": {}}}))
    with pytest.raises(IncompleteSetError, match="report.json does not match"):
        verify(d)
    with pytest.raises(IncompleteSetError, match="no such output folder"):
        verify(tmp_path / "absent")


def test_outputset_refuses_misuse(tmp_path: Path) -> None:
    s = OutputSet(tmp_path / "o")
    with pytest.raises(OutputSetError, match="before open"):
        s.path("x")
    with s:
        (s.path("x.tmp")).write_text("half")
        with pytest.raises(OutputSetError, match="temporary files"):
            s.commit()
    assert not (tmp_path / "o").exists()
