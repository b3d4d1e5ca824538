"""The layout of qcal/: its root holds only the public entry points (the package's __init__, api with the
verb and QuantResult, result with the one result protocol, errors, version) and subpackages; everything else lives in a subpackage, so the layout
cannot drift back to loose modules at the root."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
ALLOWED_MODULES = {"__init__", "api", "errors", "result", "version"}
ALLOWED_FILES = {"py.typed"}
SUBPACKAGES = {"augment", "bench", "calibration", "cli", "config", "eval", "gate", "llm", "models", "passes",
               "placement", "quant", "reporting", "runtime", "simulation"}


def layout_problems(pkg: Path) -> list[str]:
    """What at the root of the package folder `pkg` is neither an allowed module, an allowed data file nor a
    package (a folder with an __init__.py); __pycache__ is ignored."""
    bad = []
    for p in sorted(pkg.iterdir()):
        if p.name == "__pycache__":
            continue
        if p.is_dir():
            if not (p / "__init__.py").is_file():
                bad.append(f"{p.name}/ (a folder without __init__.py)")
        elif p.suffix == ".py":
            if p.stem not in ALLOWED_MODULES:
                bad.append(f"{p.name} (a module at the root: move it into a subpackage)")
        elif p.name not in ALLOWED_FILES:
            bad.append(f"{p.name} (a file at the root)")
    return bad


def test_qcal_root_holds_only_the_entry_points_and_packages() -> None:
    assert layout_problems(ROOT / "qcal") == []


def test_the_subpackages_are_the_documented_ones() -> None:
    found = {p.name for p in (ROOT / "qcal").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert found == SUBPACKAGES


def test_the_check_can_fail(tmp_path: Path) -> None:
    pkg = tmp_path / "qcal"
    (pkg / "sim").mkdir(parents=True)
    (pkg / "cli").mkdir()
    (pkg / "cli" / "__init__.py").write_text("")
    for name in ("__init__.py", "api.py", "errors.py", "version.py", "py.typed", "graph.py", "notes.txt"):
        (pkg / name).write_text("")
    assert layout_problems(pkg) == ["graph.py (a module at the root: move it into a subpackage)",
                                    "notes.txt (a file at the root)", "sim/ (a folder without __init__.py)"]


def test_the_console_script_and_python_m_entry_exist() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["qcal"] == "qcal.cli:main"
    assert (ROOT / "qcal" / "cli" / "__init__.py").is_file() and (ROOT / "qcal" / "cli" / "__main__.py").is_file()
    import qcal.cli

    assert callable(qcal.cli.main)
