"""No import circle in src/: the module graph, parsed with ast, is acyclic.

Two graphs over ``src/sparserobust``:

- **every import** (module level, ``if TYPE_CHECKING:`` blocks and imports inside
  functions), an edge to the module each statement names (``from a.b import c`` names
  ``a.b``, and ``a.b.c`` when that is a module): no layer depends on a higher one, not
  even lazily or for annotations only;
- **what Python runs at import time** (module level and ``TYPE_CHECKING`` blocks), with
  an edge to every package whose ``__init__`` runs first (``import a.b.c`` runs ``a``
  and ``a.b``), except the importer's own packages (already being imported). An import
  inside a function runs after every module is loaded, so it cannot meet a
  half-initialised package: that is why it counts in the first graph only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "src" / "sparserobust").is_dir())
SRC = ROOT / "src"  # found upwards, so the test may live in any folder under tests/
PACKAGE = SRC / "sparserobust"

Edge = tuple[str, str, str]  # importer, imported, where (scope:line)


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, is_package: bool, modules: set[str]) -> list[Edge]:
    """Every import of module ``name`` that names a module of the package."""
    edges: list[Edge] = []

    def target(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(body: list[ast.stmt], scope: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(node.body, "function")
            elif isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.body, "typing" if scope == "module" else scope)
                visit(node.orelse, scope)
            elif isinstance(node, ast.Import):
                edges.extend(
                    (name, a.name, f"{scope}:{node.lineno}")
                    for a in node.names
                    if a.name in modules
                )
            elif isinstance(node, ast.ImportFrom):
                mod = target(node)
                if mod in modules:
                    edges.append((name, mod, f"{scope}:{node.lineno}"))
                for a in node.names:
                    if f"{mod}.{a.name}" in modules:
                        edges.append((name, f"{mod}.{a.name}", f"{scope}:{node.lineno}"))
            else:
                for child in ("body", "orelse", "finalbody", "handlers"):
                    block = getattr(node, child, None)
                    if isinstance(block, list):
                        visit(block, scope)

    visit(ast.parse(path.read_text()).body, "module")
    return [e for e in edges if e[0] != e[1]]


def _all_edges() -> list[Edge]:
    modules = _modules()
    names = set(modules)
    return [e for n, (p, pkg) in modules.items() for e in _imports(n, p, pkg, names)]


def _with_packages(edges: list[Edge]) -> list[Edge]:
    """``edges`` plus one to every package run before the imported module, other than
    the importer's own packages."""
    out = list(edges)
    for importer, imported, where in edges:
        parts = imported.split(".")
        for k in range(1, len(parts)):
            package = ".".join(parts[:k])
            if importer != package and not importer.startswith(package + "."):
                out.append((importer, package, f"{where} (package of {imported})"))
    return out


def find_cycle(edges: list[Edge]) -> list[Edge] | None:
    """One cycle of the directed graph ``edges`` as its edges, or None (depth-first
    search, iterative, colours: 0 unseen, 1 on the stack, 2 done)."""
    graph: dict[str, list[Edge]] = {}
    for e in edges:
        graph.setdefault(e[0], []).append(e)
        graph.setdefault(e[1], [])
    colour = dict.fromkeys(graph, 0)
    for root in sorted(graph):
        if colour[root]:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[Edge] = []
        colour[root] = 1
        while stack:
            node, i = stack[-1]
            if i < len(graph[node]):
                stack[-1] = (node, i + 1)
                edge = graph[node][i]
                nxt = edge[1]
                if colour[nxt] == 1:
                    start = next(k for k, e in enumerate(path) if e[0] == nxt) if path else 0
                    return [*path[start:], edge]
                if colour[nxt] == 0:
                    colour[nxt] = 1
                    path.append(edge)
                    stack.append((nxt, 0))
            else:
                colour[node] = 2
                stack.pop()
                if path:
                    path.pop()
    return None


def _describe(cycle: list[Edge]) -> str:
    return "; ".join(f"{a} -> {b} ({where})" for a, b, where in cycle)


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle([("a", "b", ""), ("b", "c", ""), ("a", "c", "")]) is None
    cycle = find_cycle([("a", "b", "1"), ("b", "c", "2"), ("c", "a", "3"), ("c", "d", "4")])
    assert cycle is not None
    assert {(a, b) for a, b, _ in cycle} == {("a", "b"), ("b", "c"), ("c", "a")}


def test_the_parser_sees_the_known_layering() -> None:
    """The graph is real: config imports the registries (one way), measurements import
    no config, and a function-level import is seen."""
    edges = {(a, b) for a, b, _ in _all_edges()}
    assert ("sparserobust.config", "sparserobust.measurements.registry") in edges
    assert ("sparserobust.config", "sparserobust.pruning.registry") in edges
    assert not any(
        a.startswith("sparserobust.measurements") and b == "sparserobust.config" for a, b in edges
    )
    scopes = {w.split(":")[0] for _, _, w in _all_edges()}
    assert {"module", "function"} <= scopes


@pytest.mark.parametrize(
    "graph",
    ["every import, named modules", "import time, with packages"],
)
def test_no_import_circle(graph: str) -> None:
    edges = _all_edges()
    if graph == "import time, with packages":
        edges = _with_packages([e for e in edges if not e[2].startswith("function")])
    cycle = find_cycle(edges)
    assert cycle is None, f"import circle: {_describe(cycle or [])}"
