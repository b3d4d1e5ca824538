"""The LLM path's import graph: no cycle through any of its modules and no private name imported across
modules (function-level imports count: a lazy import is still a dependency).

The root package `qcal` (qcal/__init__.py) is the public facade: it re-exports lazily, so a module that imports
from it closes a loop through it. __version__ lives in the leaf qcal.version, and the LLM modules take nothing
from the facade (checked). tests/test_import_graph.py checks the same rules over every module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("qcal", "exporters", "calib_sets")
LLM = ("qcal.llm", "exporters.llm_onnx", "qcal.quant.llm_schemes", "qcal.quant.gptq", "qcal.passes.gptq",
       "qcal.passes.smoothquant")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def _imports(path: Path, mods: dict[str, Path]) -> list[tuple[str, str]]:
    """(module imported, name imported or '') for every import in the file, at any depth."""
    out: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in PACKAGES:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub, "") if sub in mods else (node.module, a.name))
    return out


def _is_llm(mod: str) -> bool:
    return any(mod == m or mod.startswith(m + ".") for m in LLM)


def test_no_private_names_across_llm_modules() -> None:
    mods = _modules()
    bad = [f"{src} imports {name} from {dst}" for src, f in mods.items() for dst, name in _imports(f, mods)
           if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
           and (_is_llm(src) or _is_llm(dst)) and dst != src]
    assert bad == []


def test_no_import_cycle_through_the_llm_path() -> None:
    mods = _modules()
    from_root = {(m, name) for m, f in mods.items() if _is_llm(m) for d, name in _imports(f, mods) if d == "qcal"}
    assert from_root == set(), from_root
    graph = {m: {d for d, _ in _imports(f, mods) if d in mods and d != m} for m, f in mods.items()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for n in graph[todo.pop()] - seen:
                seen.add(n)
                todo.append(n)
        return seen

    cycles = sorted(m for m in mods if _is_llm(m) and m in reach(m))
    assert cycles == []
    assert "qcal.llm.pipeline" in mods and not any(m.startswith("qcal.llm_") for m in mods)   # the layout


def test_the_check_sees_a_cycle_and_a_private_import(tmp_path: Path) -> None:
    """The parser above finds what it must find (a test of the test, on two files that import each other)."""
    (tmp_path / "a.py").write_text("def f():\n    from qcal.llm.b import _g\n")
    (tmp_path / "b.py").write_text("from qcal.llm.a import f\n")
    mods = {"qcal.llm.a": tmp_path / "a.py", "qcal.llm.b": tmp_path / "b.py"}
    assert _imports(mods["qcal.llm.a"], mods) == [("qcal.llm.b", "_g")]
    assert _imports(mods["qcal.llm.b"], mods) == [("qcal.llm.a", "f")]
