"""Whole-or-absent output sets: a folder of artifacts that is either the complete previous set or the complete new one.

A writer opens an `OutputSet` on the user's `-o` folder BEFORE any work: that checks the folder (not a file, its
parent creatable and writable, free space for the expected artifacts, no files of the user's own that replacing the
folder would delete) and takes a lock that refuses a second concurrent writer. Every artifact is then written into a
staging folder beside `-o`; `commit()` writes the manifest `qcal-set.json` (each file's size and sha256) last and
switches the staging folder in with two renames. A reader calls `verify()`: a folder without the manifest, or whose
files do not match it, is refused.

Layout for `-o PARENT/NAME`:
    PARENT/NAME/                       the set: qcal-set.json + the files it lists
    PARENT/.NAME.qcal.lock             the writer lock (fcntl.flock: the kernel releases it when the process dies,
                                       SIGKILL included; the file itself stays, empty of meaning)
    PARENT/.NAME.qcal-staging-PID      the set being written; removed on every exit path that runs Python code,
                                       and by the next writer when a SIGKILL left one
    PARENT/.NAME.qcal-old-PID          the previous set, only between the two renames of the switch; the next
                                       writer (or reader) puts it back if a kill fell between them
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from exporters.errors import ExporterError

MANIFEST = "qcal-set.json"
SCHEMA = "qcal.outset/1"
# Names a qcal version before the manifest wrote: a folder holding only these is a previous qcal set, not user files.
LEGACY_NAMES = frozenset({
    "model.fp32.onnx", "model.int8.onnx", "model.fp16.onnx", "quant_table.json", "quant_table.arrays.npz",
    "report.json", "report.md", "report.html", "attribution.png", "metaaug_samples.png", "allocation.json",
    "calib.cache", "calib.cache.qcal.json", "ort_trt", "model.w8a8.onnx", "model.w4a16.onnx", "model.w8a8.onnx.data",
    "model.w4a16.onnx.data", "model.fp32.onnx.data"})


class OutputSetError(ExporterError):
    """The output folder cannot take a new set (a file, not writable, full, holds user files, locked)."""


class OutputLockedError(OutputSetError):
    """Another live process is writing the same output folder."""


class IncompleteSetError(ExporterError):
    """A folder a reader was given is not a whole qcal output set (no manifest, or files that do not match it)."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputSet:
    """Write a set of files into `directory` whole or not at all (see the module docstring).

        with OutputSet("out", expected_bytes=90e6) as s:   # checks + lock, before the work
            ...work...
            write(s.path("model.int8.onnx"))
            s.commit()                                   # manifest last, then the switch
    Leaving the block without commit() (an exception, SIGINT, a SIGTERM turned into SystemExit) removes the staging
    folder and leaves `directory` as it was.
    """

    def __init__(self, directory: str | Path, *, expected_bytes: float = 0, meta: dict[str, Any] | None = None) -> None:
        self.target = Path(directory).absolute()
        self.expected_bytes = int(expected_bytes)
        self.meta = dict(meta or {})
        self.staging: Path | None = None
        self.committed = False
        self._lock_fd: int | None = None

    # --- open: every check before the work ------------------------------------------------------------------
    def _sibling(self, kind: str, pid: int | None = None) -> Path:
        return self.target.parent / f".{self.target.name}.qcal-{kind}-{os.getpid() if pid is None else pid}"

    def open(self) -> OutputSet:
        self._lock()
        try:
            self._recover()
            self._check_contents()
            self._check_space()
            self._check_replaceable()
            self.staging = self._sibling("staging")
            self.staging.mkdir()
        except BaseException:
            self.close()
            raise
        return self

    def _lock(self) -> None:
        self._lock_fd = _acquire(self.target)

    def _recover(self) -> None:
        """Under the lock no other writer is live: restore a previous set a kill left between the two renames,
        then remove what killed writers left behind."""
        parent, stem = self.target.parent, f".{self.target.name}.qcal-"
        leftovers = [p for p in parent.iterdir() if p.name.startswith(stem)]
        olds = sorted((p for p in leftovers if p.name.startswith(stem + "old-")), key=lambda p: p.stat().st_mtime)
        if not self.target.exists() and olds:
            olds[-1].rename(self.target)
        for p in leftovers:
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)

    def _check_contents(self) -> None:
        t = self.target
        if not t.exists():
            return
        names = _entries(t)
        if not names:
            return
        listed: set[str] = set()
        if MANIFEST in names:
            try:
                listed = {n.split("/")[0] for n in json.loads((t / MANIFEST).read_text())["files"]} | {MANIFEST}
            except (OSError, ValueError, KeyError, TypeError):
                listed = {MANIFEST}
        foreign = [n for n in names if n not in listed and n not in LEGACY_NAMES]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputSetError(f"-o {t}: holds files qcal did not write ({shown}); qcal replaces the whole folder "
                                 "with the new set, so it will not write there: choose a new or empty folder, or move "
                                 "those files away.")

    def _check_replaceable(self) -> None:
        """The switch renames the previous set away: try that now (and back), so an immutable folder (chattr +i)
        or one on a read-only mount is refused before the work, not after it."""
        if not self.target.is_dir():
            return
        probe = self._sibling("probe")
        try:
            self.target.rename(probe)
        except OSError as e:
            raise OutputSetError(f"-o {self.target}: the folder cannot be replaced ({e.strerror}: immutable, or its "
                                 "parent is read-only); qcal writes a new set beside it and swaps the two. Make it "
                                 "writable (chattr -i) or choose another -o.") from None
        probe.rename(self.target)

    def _check_space(self) -> None:
        check_space(self.target, self.expected_bytes, "the new set needs about {need} MiB (written beside the "
                    "previous set before it is replaced)")

    # --- write ----------------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """Where the artifact `name` (a relative path) is written before the switch."""
        if self.staging is None:
            raise OutputSetError("OutputSet.path() before open(): use it as a context manager.")
        p = self.staging / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def final(self, name: str) -> Path:
        """Where the artifact `name` lies after commit()."""
        return self.target / name

    def files(self) -> list[str]:
        assert self.staging is not None
        return sorted(str(p.relative_to(self.staging)) for p in self.staging.rglob("*") if p.is_file())

    def commit(self) -> Path:
        """Write the manifest last, then switch the staging folder in for the previous set."""
        if self.staging is None or self.committed:
            raise OutputSetError("OutputSet.commit(): the set is not open (or already committed).")
        stray = [n for n in self.files() if n.endswith(".tmp")]
        if stray:
            raise OutputSetError(f"output set {self.target}: temporary files {stray} were left by a writer; "
                                 "not committing a set with half-written files.")
        user_mode(*(self.staging / n for n in self.files()))   # writers that used mkstemp left 0600
        files = {n: {"bytes": (self.staging / n).stat().st_size, "sha256": file_sha256(self.staging / n)}
                 for n in self.files()}
        manifest = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **self.meta, "files": files}
        m = self.staging / MANIFEST
        with open(m, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        old = self._sibling("old")
        if self.target.exists():
            self.target.rename(old)
        self.staging.rename(self.target)
        self.staging, self.committed = None, True
        shutil.rmtree(old, ignore_errors=True)
        return self.target

    def close(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # releases the flock
            self._lock_fd = None

    def __enter__(self) -> OutputSet:
        return self.open() if self.staging is None and self._lock_fd is None else self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


NAME_MAX = 255   # bytes in one path component on Linux and macOS file systems


def _acquire(target: Path) -> int:
    """Check that `target` can be a folder we write, and take its writer lock (an fd holding a flock)."""
    longest = max((len(part.encode()) for part in target.parts), default=0)
    if longest > NAME_MAX - 32 or len(str(target).encode()) > 4000:   # staging/lock names add ~30 bytes
        raise OutputSetError(f"-o {str(target)[:80]}...: a folder name of {longest} bytes is too long (at most "
                             f"{NAME_MAX - 32}: the staging and lock names beside it add up to 32); choose a "
                             "shorter name.")
    if target.exists() and not target.is_dir():
        raise OutputSetError(f"-o {target}: is a file, not a folder; give a folder path (it is created if missing).")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputSetError(f"-o {target}: cannot create its parent folder {target.parent} ({e.strerror}); choose "
                             "a folder you can write to.") from None
    lock = target.parent / f".{target.name}.qcal.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise OutputSetError(f"-o {target}: its folder {target.parent} is not writable ({e.strerror}); choose a "
                             "folder you can write to.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OutputLockedError(f"-o {target}: another qcal run is writing it (lock {lock}, held by {holder}); "
                                "wait for it to finish or choose another -o.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    return fd


def check_space(target: Path, expected_bytes: float, needs: str) -> None:
    """Refuse before the work when the disk holding `target` has less than `expected_bytes` free; `needs` says
    what the bytes are for, with `{need}` where the MiB go."""
    if expected_bytes <= 0:
        return
    free = shutil.disk_usage(target if target.is_dir() else target.parent).free
    if free < expected_bytes:
        raise OutputSetError(f"-o {target}: {free / 2**20:.0f} MiB free on its disk, "
                             + needs.format(need=f"{expected_bytes / 2**20:.0f}")
                             + "; free some space or choose another -o.")


def _folder_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) if d.is_dir() else 0


class FolderLock:
    """The writer lock alone, for a folder written in place (`qcal bench`'s report folder and its caches):
    `with FolderLock(out, expected_bytes=n):` refuses a second concurrent writer, a path that cannot be a
    writable folder, and a disk without room for what is not yet in the folder (a resumed run needs less)."""

    def __init__(self, directory: str | Path, *, expected_bytes: float = 0) -> None:
        self.target = Path(directory).absolute()
        self.expected_bytes = expected_bytes
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        if self._fd is None:   # entering an acquired lock again keeps it (no second flock on a new fd)
            fd = _acquire(self.target)
            try:
                check_space(self.target, self.expected_bytes - _folder_bytes(self.target),
                            "the report's models and cells need about {need} MiB more")
            except OutputSetError:
                os.close(fd)
                raise
            self._fd = fd
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_mode(*paths: str | Path) -> None:
    """Give each file the mode a plain `open(path, "w")` would: 0o666 less the user's umask. Writers that go
    through mkstemp (atomic writes) leave 0600, which other users and tools of the same group cannot read."""
    mode = 0o666 & ~_umask()
    for p in paths:
        os.chmod(p, mode)


def disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def verify(directory: str | Path, *, require: Iterable[str] = ()) -> dict[str, Any]:
    """The manifest of a whole qcal output set; IncompleteSetError when `directory` is not one."""
    d = Path(directory)
    olds = sorted(d.parent.glob(f".{d.name}.qcal-old-*")) if d.parent.exists() else []
    if not d.is_dir():
        hint = (f" (a run was killed while switching sets: the previous set is in {olds[-1]}; the next qcal run into "
                f"-o {d} puts it back)") if olds else ""
        raise IncompleteSetError(f"{d}: no such output folder{hint}; run qcal again with -o {d}.")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("schema") != SCHEMA or not isinstance(files, dict):
            raise ValueError(manifest.get("schema"))
    except (OSError, ValueError, KeyError, TypeError):
        raise IncompleteSetError(f"{d}: not a whole qcal output set ({MANIFEST} is missing or unreadable: the run "
                                 "that wrote it was interrupted, or an older qcal wrote it); run qcal again with "
                                 f"-o {d}.") from None
    for name in require:
        if name not in files:
            raise IncompleteSetError(f"{d}: the set has no {name} (it lists {sorted(files)}).")
    for name, info in files.items():
        p = d / name
        if not p.is_file() or p.stat().st_size != info.get("bytes") or file_sha256(p) != info.get("sha256"):
            raise IncompleteSetError(f"{d}: {name} does not match {MANIFEST} (missing, or changed after the run "
                                     f"wrote it); run qcal again with -o {d}.")
    return dict(manifest)


def write_manifest(directory: str | Path, names: Iterable[str], meta: dict[str, Any] | None = None) -> Path:
    """A manifest for files written in place (a folder that also holds caches, like `qcal bench`'s cells/):
    call `drop_manifest` before rewriting any listed file and this after the last one, so a kill in between leaves
    a folder that `verify` refuses rather than a mix it accepts."""
    d, names = Path(directory), sorted(names)
    user_mode(*(d / n for n in names))   # written in place by atomic (mkstemp, 0600) writers
    files = {n: {"bytes": (d / n).stat().st_size, "sha256": file_sha256(d / n)} for n in names}
    data = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(meta or {}), "files": files}
    tmp = d / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / MANIFEST)
    return d / MANIFEST


def drop_manifest(directory: str | Path) -> None:
    (Path(directory) / MANIFEST).unlink(missing_ok=True)


def verify_member(path: str | Path, *, written_by_qcal: bool) -> dict[str, Any] | None:
    """For a reader given one file: when its folder has a manifest, the file must be listed in it and match;
    when it has none, the file is refused only if qcal wrote it (`written_by_qcal`: e.g. its ONNX metadata says
    so), since then the run that wrote it did not finish. A file of the user's own is fine."""
    p = Path(path)
    if (p.parent / MANIFEST).is_file() or written_by_qcal:
        return verify(p.parent, require=[p.name])
    return None
