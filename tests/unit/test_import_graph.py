"""The import graph of the tree, read statically (ast): the app imports no backend internals,
and no module takes part in an import cycle.

Every import counts, at module level or inside a function: a lazy import that dodges a cycle at
run time is still a cycle. ``from X import Y`` is an edge to ``X`` (its ``__init__`` runs) and
to ``X.Y`` when that is a module. The module list comes from walking the folders.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from tests.import_probe import PACKAGE, tree_modules

ROOT = "tokenprism"
SUBPACKAGES = ("analysis", "backend", "app")
# The one backend module the Streamlit app may import; everything else goes over HTTP.
APP_MAY_IMPORT = frozenset({"tokenprism.backend.display"})


def _source(module: str) -> tuple[Path, bool]:
    """The file of ``module`` and whether it is a package ``__init__``."""
    base = PACKAGE.joinpath(*module.split(".")[1:])
    package = base / "__init__.py"
    return (package, True) if package.is_file() else (base.with_suffix(".py"), False)


def _canonical(name: str) -> str:
    """``backend.x`` written without the root names the same module as ``tokenprism.backend.x``."""
    return f"{ROOT}.{name}" if name.split(".")[0] in SUBPACKAGES else name


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [_canonical(alias.name) for alias in node.names]
    if node.level:
        parts = package.split(".")
        base = parts[: len(parts) - node.level + 1]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = _canonical(node.module or "")
    return [stem] + [f"{stem}.{alias.name}" for alias in node.names]


def source_imports(source: str, module: str, known: frozenset[str], *, package: bool) -> set[str]:
    """The modules of ``known`` that ``source``, the text of ``module``, imports anywhere.

    Args:
        source: the module's Python source.
        module: its dotted name.
        known: every module of the tree; a target outside it (stdlib, third party) is dropped,
            a target that names something inside a module (``X.Y`` with ``Y`` a function)
            counts as that module.
        package: the source is a package's ``__init__`` (relative imports start there).

    Returns:
        The imported modules, ``module`` itself left out.
    """
    base = module if package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for target in _targets(node, base):
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target in known and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Every module of the tree mapped to the tree modules it imports."""
    known = frozenset(name for sub in SUBPACKAGES for name in tree_modules(sub)) | {ROOT}
    graph = {}
    for module in sorted(known):
        path, package = _source(module)
        source = path.read_text(encoding="utf-8")
        graph[module] = source_imports(source, module, known, package=package)
    return graph


def _reachable(graph: Mapping[str, Iterable[str]], start: str) -> set[str]:
    """Every node a path of one or more edges leads to from ``start`` (iterative DFS)."""
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of two or more modules.

    Two modules share a component when each reaches the other; with about a hundred modules a
    DFS from every node is instant and simpler to trust than Tarjan's bookkeeping.

    Args:
        graph: each node mapped to the nodes it points to.

    Returns:
        Each cycle's nodes sorted, the cycles sorted.
    """
    reach = {node: _reachable(graph, node) for node in graph}
    found = set()
    for node in graph:
        component = {other for other in reach[node] if node in reach.get(other, ())} | {node}
        if len(component) > 1:
            found.add(tuple(sorted(component)))
    return sorted(list(c) for c in found)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_app_imports_no_backend_module_but_display(graph: dict[str, set[str]]) -> None:
    wrong = {
        module: sorted(
            t for t in targets if t.startswith(f"{ROOT}.backend") and t not in APP_MAY_IMPORT
        )
        for module, targets in graph.items()
        if module.startswith(f"{ROOT}.app")
    }
    assert {module: targets for module, targets in wrong.items() if targets} == {}


def test_the_graph_sees_the_app_imports(graph: dict[str, set[str]]) -> None:
    """Guard against a vacuous check: the graph holds the app's known imports."""
    assert "tokenprism.backend.display" in graph["tokenprism.app.components.token_view"]
    assert "tokenprism.analysis.registry" in graph["tokenprism.app.components.compare"]
    assert "tokenprism.app.components" in graph
    assert any(m.startswith("tokenprism.backend.") for m in graph)


def test_no_module_takes_part_in_an_import_cycle(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_cycles_and_only_them() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": {"e"},
        "e": {"d"},
        "f": {"a"},
        "g": set(),
    }
    assert cycles(graph) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_every_kind_of_import_counts() -> None:
    """Lazy imports, relative imports, ``from package import module`` and root-less names."""
    known = frozenset(
        {
            "tokenprism.backend",
            "tokenprism.backend.room",
            "tokenprism.backend.room.a",
            "tokenprism.backend.room.b",
            "tokenprism.backend.room.c",
            "tokenprism.backend.d",
            "tokenprism.backend.e",
            "tokenprism.backend.f",
        }
    )
    source = (
        "import os\n"
        "from . import b\n"
        "from .c import helper\n"
        "from tokenprism.backend import d\n"
        "def lazy():\n"
        "    import backend.e\n"
        "    from tokenprism.backend.f import thing\n"
        "    from ..room.a import itself\n"
    )
    found = source_imports(source, "tokenprism.backend.room.a", known, package=False)
    assert found == {
        "tokenprism.backend",
        "tokenprism.backend.room",
        "tokenprism.backend.room.b",
        "tokenprism.backend.room.c",
        "tokenprism.backend.d",
        "tokenprism.backend.e",
        "tokenprism.backend.f",
    }
    init = source_imports("from .a import x\n", "tokenprism.backend.room", known, package=True)
    assert init == {"tokenprism.backend.room.a"}
