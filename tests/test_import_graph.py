"""The import graph of qcal, calib_sets, exporters (and tests), read with `ast` from the source, never imported.

Rules (shared/ARCHITECTURE.md, "Packages and import direction"):
  (a) no import cycle among the modules of qcal/, calib_sets/, exporters/ (the failure names the cycle's path);
  (b) no module imports a private name (one leading underscore, not a dunder) of *another* module of those
      packages or of tests/: `from qcal.x import _foo`, `from qcal.x import _sub` where _sub is a private
      submodule, and `qcal.x._foo` read through an `import qcal.x` alias all count; tests/ are held to it too
      (a helper one test module shares with another is public);
  (c) nothing under exporters/ or calib_sets/ (nor tests/exporters, tests/calib_sets and the conftest.py files
      pytest loads for them) reaches qcal, directly or through another module, and neither package reaches the
      other ("nothing of ours").

What counts as an edge, decided here:
  - Every import statement at any depth counts: module level, inside functions and methods, inside try/except.
    A lazy import in a function is still a dependency and still a cycle; moving an import into a function is not
    a way to pass this test.
  - Imports under `if TYPE_CHECKING:` do not count for (a): they never run, and annotation-only references are
    the standard way to name a type without a runtime dependency. They do count for (b) and (c): a type
    imported from qcal is still a dependency of exporters on qcal's design.
  - `import a.b.c` is an edge to a.b.c; `from a.b import c` is an edge to a.b.c when c is a submodule, else to
    a.b. Relative imports are resolved against the importing module's package.
  - The implicit execution of parent packages' __init__ (importing a.b.c runs a/__init__ and a/b/__init__) is not
    an edge: every submodule would otherwise close a loop through its package's re-exports. A module that takes
    a name from its own package's __init__ (`from qcal import __version__`) does add that edge, and that is a
    real cycle when the __init__ imports it back.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("qcal", "calib_sets", "exporters")
SCANNED = (*PACKAGES, "tests")
# package -> what it must never reach (rule c)
FORBIDDEN = {"exporters": ("qcal", "calib_sets"), "calib_sets": ("qcal", "exporters")}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str            # the module imported from
    name: str           # the name taken from it ('' for a plain import or a submodule)
    line: int
    type_only: bool     # under `if TYPE_CHECKING:`


def module_names(root: Path = ROOT, top: Iterable[str] = SCANNED) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the given top-level folders."""
    out: dict[str, Path] = {}
    for pkg in top:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _ours(mod: str) -> bool:
    return mod.split(".")[0] in SCANNED


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _base_package(mod: str, path: Path, level: int) -> str:
    """The package a relative import of `level` dots resolves against."""
    parts = mod.split(".")
    if path.name != "__init__.py":
        parts = parts[:-1]
    return ".".join(parts[: len(parts) - (level - 1)] if level > 1 else parts)


def parse_edges(mod: str, path: Path, mods: dict[str, Path]) -> list[Edge]:
    """Every import of one of our modules in `path` (at any depth), with private attribute reads through
    module aliases (`import qcal.x as m; m._foo`) reported as an Edge naming _foo."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    edges: list[Edge] = []
    aliases: dict[str, str] = {}   # local name bound to one of our modules -> module

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                if _ours(a.name):
                    edges.append(Edge(mod, a.name, "", node.lineno, type_only))
                    if a.asname:
                        aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _base_package(mod, path, node.level)
                base = f"{pkg}.{base}" if base else pkg
            if _ours(base):
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in mods:
                        edges.append(Edge(mod, sub, "", node.lineno, type_only))
                        aliases[a.asname or a.name] = sub
                        if _is_private(a.name):   # a private submodule is a private name of its package
                            edges.append(Edge(mod, base, a.name, node.lineno, type_only))
                    else:
                        edges.append(Edge(mod, base, a.name, node.lineno, type_only))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    for node in ast.walk(tree):   # m._foo where m is an alias of one of our modules
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain: list[str] = []
            cur: ast.expr = node.value
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                head = aliases.get(cur.id) or (cur.id if cur.id in mods else None)
                if head:
                    target = ".".join([head, *reversed(chain)])
                    if target in mods:
                        edges.append(Edge(mod, target, node.attr, node.lineno, False))
    return edges


def graph_of(mods: dict[str, Path]) -> dict[str, list[Edge]]:
    return {m: parse_edges(m, f, mods) for m, f in mods.items()}


def _in(mod: str, packages: Iterable[str]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in packages)


def find_cycles(edges: dict[str, list[Edge]], within: Iterable[str] = PACKAGES) -> list[list[str]]:
    """One cycle path [a, b, ..., a] per strongly connected component with a loop (Tarjan), among modules of
    `within`; TYPE_CHECKING-only edges left out."""
    within = tuple(within)
    nodes = sorted(m for m in edges if _in(m, within))
    succ = {m: sorted({e.dst for e in edges[m] if not e.type_only and e.dst in edges and e.dst != m
                       and _in(e.dst, within)}) for m in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []

    def strong(v: str) -> None:   # recursive Tarjan; the graph has a few hundred nodes
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in nodes:
        if v not in index:
            strong(v)
    cycles = []
    for comp in sorted(sccs):   # shortest loop through the component's first node (BFS inside the component)
        start, members = comp[0], set(comp)
        prev: dict[str, str] = {}
        todo = [start]
        while todo and start not in prev:
            nxt = []
            for v in todo:
                for w in succ[v]:
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            todo = nxt
        path = [start]
        while True:
            path.append(prev[path[-1]])
            if path[-1] == start:
                break
        cycles.append(list(reversed(path)))
    return cycles


def private_imports(edges: dict[str, list[Edge]]) -> list[str]:
    return sorted({f"{e.src}:{e.line} takes {e.name} from {e.dst}" for es in edges.values() for e in es
                   if _is_private(e.name) and e.dst != e.src and _in(e.dst, SCANNED)})


def _roots_of(package: str, mods: dict[str, Path]) -> list[str]:
    """The modules that must stay clear of what `package` may not import: the package, its tests, and the
    conftest.py files pytest loads for those tests."""
    tests = f"tests.{package}"
    out = [m for m in mods if _in(m, (package, tests))]
    if any(_in(m, (tests,)) for m in mods):
        out += [c for c in ("tests.conftest",) if c in mods]
    return sorted(set(out))


def forbidden_reaches(edges: dict[str, list[Edge]], mods: dict[str, Path],
                      forbidden: dict[str, tuple[str, ...]] = FORBIDDEN) -> list[str]:
    """'root -> ... -> target' for every module of a restricted package (or its tests) that reaches, directly or
    transitively (TYPE_CHECKING imports included), a package it must not import."""
    bad = []
    for package, banned in forbidden.items():
        for root in _roots_of(package, mods):
            prev: dict[str, str] = {root: ""}
            todo = [root]
            while todo:
                v = todo.pop()
                for e in edges.get(v, []):
                    w = e.dst
                    if _in(w, banned):
                        path = [w, v]
                        while prev[path[-1]]:
                            path.append(prev[path[-1]])
                        bad.append(" -> ".join(reversed(path)) + f" (line {e.line} of {v})")
                    elif w in edges and w not in prev:
                        prev[w] = v
                        todo.append(w)
    return sorted(set(bad))


# --- the rules, on the real tree ---------------------------------------------------------------------------

def _real() -> tuple[dict[str, Path], dict[str, list[Edge]]]:
    mods = module_names()
    return mods, graph_of(mods)


def test_no_import_cycles() -> None:
    _, edges = _real()
    cycles = find_cycles(edges)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_across_modules() -> None:
    _, edges = _real()
    bad = private_imports(edges)
    assert bad == [], "private names imported across modules:\n" + "\n".join(bad)


def test_exporters_and_calib_sets_import_nothing_of_ours() -> None:
    mods, edges = _real()
    bad = forbidden_reaches(edges, mods)
    assert bad == [], "exporters/calib_sets reach a package they may not import:\n" + "\n".join(bad)


def test_the_scan_sees_the_tree() -> None:
    """Guards against a checker that passes because it read nothing."""
    mods, edges = _real()
    assert {"qcal", "qcal.api", "exporters.qdq", "calib_sets.manifest", "tests.test_import_graph"} <= set(mods)
    assert any(e.dst == "exporters.quant_table" for e in edges["qcal.simulation.sim"])
    assert sum(len(es) for es in edges.values()) > 300


# --- the checker can fail ----------------------------------------------------------------------------------

def _synthetic(tmp_path: Path, files: dict[str, str]) -> tuple[dict[str, Path], dict[str, list[Edge]]]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    mods = module_names(tmp_path)
    return mods, graph_of(mods)


def test_checker_flags_a_cycle_through_a_lazy_and_a_relative_import(tmp_path: Path) -> None:
    mods, edges = _synthetic(tmp_path, {
        "qcal/__init__.py": "",
        "qcal/a.py": "def f():\n    from qcal import b\n",        # lazy, submodule via `from pkg import`
        "qcal/b.py": "from . import c\n",                             # relative
        "qcal/c.py": "import qcal.a\n",
        "qcal/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from qcal.e import E\n",
        "qcal/e.py": "from qcal.d import x\n",                         # d <-> e only through TYPE_CHECKING
        "calib_sets/__init__.py": "", "exporters/__init__.py": "", "tests/__init__.py": "",
    })
    assert find_cycles(edges) == [["qcal.a", "qcal.b", "qcal.c", "qcal.a"]]
    edges["qcal.e"].append(Edge("qcal.e", "qcal.e", "", 1, False))   # a self-import is not a cycle
    assert find_cycles(edges) == [["qcal.a", "qcal.b", "qcal.c", "qcal.a"]]


def test_checker_flags_private_names(tmp_path: Path) -> None:
    mods, edges = _synthetic(tmp_path, {
        "qcal/__init__.py": "__version__ = '0'\n",
        "qcal/x.py": "_hidden = 1\n__all__ = []\n",
        "qcal/_secret.py": "",
        "qcal/y.py": "from qcal.x import _hidden, __all__\nfrom .x import _hidden as h\n",
        "qcal/z.py": "import qcal.x as m\nfrom qcal import _secret, __version__\nv = m._hidden\n",
        "tests/__init__.py": "", "tests/t.py": "def test():\n    from qcal.x import _hidden\n",
        "tests/u.py": "from tests.t import _helper\n",
        "calib_sets/__init__.py": "", "exporters/__init__.py": "",
    })
    assert private_imports(edges) == ["qcal.y:1 takes _hidden from qcal.x", "qcal.y:2 takes _hidden from qcal.x",
                                      "qcal.z:2 takes _secret from qcal", "qcal.z:3 takes _hidden from qcal.x",
                                      "tests.t:2 takes _hidden from qcal.x", "tests.u:1 takes _helper from tests.t"]


def test_checker_flags_exporters_reaching_qcal(tmp_path: Path) -> None:
    mods, edges = _synthetic(tmp_path, {
        "qcal/__init__.py": "", "qcal/config.py": "",
        "exporters/__init__.py": "", "exporters/w.py": "from exporters import helper\n",
        "exporters/helper.py": "def f():\n    from qcal.config import QuantConfig\n",
        "calib_sets/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import exporters\n",
        "tests/__init__.py": "", "tests/helpers.py": "import qcal.config\n",
        "tests/exporters/__init__.py": "", "tests/exporters/test_w.py": "from tests import helpers\n",
    })
    assert forbidden_reaches(edges, mods) == [
        "calib_sets -> exporters (line 3 of calib_sets)",
        "exporters.helper -> qcal.config (line 2 of exporters.helper)",
        "exporters.w -> exporters.helper -> qcal.config (line 2 of exporters.helper)",
        "tests.exporters.test_w -> tests.helpers -> qcal.config (line 1 of tests.helpers)",
    ]
