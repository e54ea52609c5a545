"""The project's import graph has no cycles (DESIGN.md "Style", issue 11 "Check").

Every import counts: module level, function level and under TYPE_CHECKING, since a cycle hidden
that way is still two modules that cannot be understood apart. The graph is read with `ast`
from the source folders that install as `fognode.*` (nothing is imported), and every strongly
connected component of more than one module is reported at once.

No cycle is allowed: the last two (fl messages <-> rewards receipts, registry api <-> role)
went in issue 11.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

from fognode.node.datadir import default_config_text

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"node": "fognode.node", "protocols": "fognode.protocols", "ledger": "fognode.ledger",
            "tools": "fognode.tools"}



def module_files() -> dict[str, Path]:
    """`fognode.x.y` -> its source file, for every module of the project."""
    mods: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join((package, *parts))] = path
    return mods


def resolve(module: str, level: int, importer: str, is_package: bool) -> str:
    """The absolute name of a `from ... import` with `level` leading dots."""
    if not level:
        return module
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports (anywhere in its body)."""
    mods = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                target = resolve(node.module or "", node.level, name, path.name == "__init__.py")
                deps.add(target)
                deps |= {f"{target}.{a.name}" for a in node.names}
        # importing a package's submodule runs the package's __init__, never the reverse
        graph[name] = {d for d in deps if d in mods and d != name and not name.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, todo = work[-1]
            if todo:
                w = todo.pop()
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, sorted(graph[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                comp: set[str] = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def short(comp: frozenset[str]) -> frozenset[str]:
    return frozenset(m.removeprefix("fognode.") for m in comp)


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(map(sorted, cycles(graph))) == [["a", "b", "c"], ["d", "e"]]
    assert resolve("x", 1, "fognode.ledger.service", False) == "fognode.ledger.x"
    assert resolve("", 2, "fognode.ledger.sub", True) == "fognode.ledger"


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "fognode.ledger.service" in graph["fognode.ledger.protocol"]        # module level
    assert "fognode.ledger.errors" in graph["fognode.protocols.fl.rewards.ledger"]   # in a function
    assert "fognode.node.streams" in graph["fognode.node.gossip"]       # TYPE_CHECKING
    assert len(graph) > 100 and all(m.startswith("fognode.") for m in graph)


def test_no_import_cycles() -> None:
    found = sorted(sorted(short(c)) for c in cycles(import_graph()))
    report = "\n".join(" <-> ".join(c) for c in found)
    assert not found, f"import cycles (each line: modules that import each other):\n{report}"


MAX_LINES = 500
LONG_MARKER = "Long because:"


def long_modules() -> dict[str, tuple[int, bool]]:
    """Module -> (its line count, whether its docstring says why it is long), for every module
    of the project over MAX_LINES lines."""
    out: dict[str, tuple[int, bool]] = {}
    for name, path in module_files().items():
        text = path.read_text()
        lines = text.count("\n") + (not text.endswith("\n"))
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text, filename=str(path))) or ""
        out[name] = (lines, any(line.startswith(LONG_MARKER) for line in doc.splitlines()))
    return out


def test_no_module_over_500_lines_without_a_reason() -> None:
    """DESIGN.md "Style": split a module well before 500 lines. A module that stays longer
    says why in its docstring, on a line starting with "Long because:"."""
    unexplained = sorted(f"{m} ({n} lines)" for m, (n, why) in long_modules().items() if not why)
    assert not unexplained, (f"modules over {MAX_LINES} lines without a line starting "
                             f"{LONG_MARKER!r} in their docstring: {', '.join(unexplained)}")


def test_one_node_toml() -> None:
    """The root node.toml is the one file to edit: node/node.toml (the package data `fognode
    init` copies, and what a wheel or sdist ships: setuptools stores the file's content) is a
    symlink to it."""
    packaged = ROOT / "node" / "node.toml"
    assert packaged.is_symlink() and os.readlink(packaged) == "../node.toml"
    assert default_config_text() == (ROOT / "node.toml").read_text(encoding="utf-8")
