"""The layers of docs/architecture.md, enforced: every import in production code points down.

Imports are read with ``ast`` from every module, including imports inside
functions (a late import is still an arrow). A rule names, per package, the
first-party packages it may import; a second table forbids single modules to
parts of a package (the store knows nothing of flame trees).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("ground", "stacks", "render", "profiler", "aggregator", "viewer", "flamewatch")

# package -> first-party packages it may import (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "stacks": set(),
    "ground": set(),
    "render": {"stacks", "ground"},
    "profiler": {"stacks", "ground"},
    "aggregator": {"stacks", "ground", "render"},
    "viewer": {"stacks", "ground", "render"},
    "flamewatch": set(FIRST_PARTY),
}

# module prefix -> imported module prefixes it must not use, with the reason.
FORBIDDEN: dict[str, dict[str, str]] = {
    "aggregator.store": {
        "stacks.tree": "storage returns profiles; flame trees are built above it",
        "stacks.diff": "storage returns profiles; diffs are built above it",
        "stacks.export": "storage returns profiles; output formats are chosen above it",
        "aggregator.query": "the store is below the query layer",
        "aggregator.app": "the store is below the HTTP layer",
    },
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``source``, relative ones resolved."""
    out: list[tuple[int, str]] = []
    pkg = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            # `from pkg import submodule` is an arrow to pkg.submodule as well.
            out.extend((node.lineno, f"{name}.{a.name}") for a in node.names)
    return out


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import of ``module`` that runs against the layers, as readable lines."""
    top = module.split(".")[0]
    allowed = ALLOWED[top] | {top}
    bad: list[str] = []
    for line, name in imports_of(source, module, is_package):
        target = name.split(".")[0]
        if target in FIRST_PARTY and target not in allowed:
            bad.append(f"{module}:{line} imports {name}: {top} may import only {sorted(allowed)}")
        for prefix, rules in FORBIDDEN.items():
            if module == prefix or module.startswith(prefix + "."):
                for forbidden, why in rules.items():
                    if name == forbidden or name.startswith(forbidden + "."):
                        bad.append(f"{module}:{line} imports {name}: {why}")
    return bad


def production_modules() -> list[Path]:
    return sorted(p for pkg in ALLOWED for p in (ROOT / pkg).rglob("*.py") if "_proto" not in p.parts)


def test_every_production_import_points_down() -> None:
    bad: list[str] = []
    for path in production_modules():
        bad += violations(module_name(path), path.read_text(encoding="utf-8"), path.name == "__init__.py")
    assert not bad, "imports against the layers (docs/architecture.md):\n" + "\n".join(bad)


def test_every_package_has_a_rule() -> None:
    # A new top-level package must be placed in a layer before it can be imported.
    pkgs = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench", "scripts"}
    assert pkgs <= set(ALLOWED), f"packages without a layer rule: {sorted(pkgs - set(ALLOWED))}"


@pytest.mark.parametrize(
    ("module", "source", "expect"),
    [
        ("stacks.tree", "from aggregator.store import base\n", "stacks may import only"),
        ("ground.settings", "def f():\n    import profiler.agent\n", "ground may import only"),
        ("aggregator.store.clickhouse", "from stacks.tree import metadata_frames\n", "flame trees"),
        ("aggregator.query", "from viewer.standalone import standalone_html\n", "aggregator may import only"),
        ("aggregator.store.sqlite", "from ..query import x\n", "below the query layer"),
        ("profiler.agent", "from aggregator import app\n", "profiler may import only"),
    ],
)
def test_checker_catches_arrows_against_the_layers(module: str, source: str, expect: str) -> None:
    found = violations(module, source)
    assert any(expect in v for v in found), found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("aggregator.query", "from stacks.tree import Tree\nfrom render import RENDERERS\n"),
        ("flamewatch.cli", "import aggregator.app\nimport viewer.app\n"),
        ("aggregator.store.sqlite", "from stacks.model import Profile\nfrom . import base\n"),
    ],
)
def test_checker_allows_arrows_that_point_down(module: str, source: str) -> None:
    assert violations(module, source) == []


# -- import circles ---------------------------------------------------------------------------
# Circles closed only by imports inside functions (late) or under ``if TYPE_CHECKING:``: known
# debts, each named with why it is still there. Any other circle fails the test below.


def module_arrows(source: str, module: str, is_package: bool, late: bool) -> set[str]:
    """The modules ``source`` imports: those run on import, and with ``late`` also those inside
    functions and under ``if TYPE_CHECKING:``."""
    if late:
        return {name for _, name in imports_of(source, module, is_package)}
    kept: list[ast.stmt] = []

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                kept.append(node)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(ast.parse(source).body)
    return {name for _, name in imports_of(ast.unparse(ast.Module(body=kept, type_ignores=[])), module, is_package)}


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected sets of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.add(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def import_graph(late: bool) -> dict[str, set[str]]:
    """Production module -> the production modules it imports (a parent package, imported first
    anyway, is no arrow)."""
    paths = {module_name(p): p for p in production_modules()}
    return {m: {n for n in module_arrows(p.read_text(encoding="utf-8"), m, p.name == "__init__.py", late)
                if n in paths and n != m and not m.startswith(n + ".")}
            for m, p in paths.items()}


def test_no_import_circle() -> None:
    """No circle among the production modules' imports (issue 29), counting those that run on
    import, those inside functions and those under ``if TYPE_CHECKING:``."""
    assert circles(import_graph(late=False)) == []
    assert [sorted(c) for c in circles(import_graph(late=True))] == []


def test_circle_finder_finds_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set(), "g": {"g"}}
    assert sorted(map(sorted, circles(graph))) == [["a", "b", "c"], ["d", "e"]]
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from stacks import node\n"
           "def f():\n    import stacks.prune\n")
    assert module_arrows(src, "stacks.columns", False, late=False) == {"typing", "typing.TYPE_CHECKING"}
    assert {"stacks.node", "stacks.prune"} <= module_arrows(src, "stacks.columns", False, late=True)
