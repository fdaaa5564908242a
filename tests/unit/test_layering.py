"""The package's layering, read from the source: no import cycles (function-local
imports included), no private name imported from another module, and the
front ends above the daemon, never below it.

Every `import` statement anywhere in a module counts (at the top, inside a
function, under TYPE_CHECKING): a lazy import still makes the two modules
depend on each other.
"""

from __future__ import annotations

import ast
import functools
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "slirpy"


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {
        _module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))
    }


def _imports(tree: ast.Module, known: set[str]) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every slirpy import in `tree`."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.startswith("slirpy")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("slirpy"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                # `from slirpy.host import spawn` imports the module slirpy.host.spawn.
                out.append((sub, None) if sub in known else (node.module, alias.name))
    return out


@functools.cache
def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, tree in mods.items():
        deps = set()
        for mod, _ in _imports(tree, known):
            # A package's own __init__ (slirpy) is every submodule's parent:
            # importing it is not a dependency between two modules.
            if mod in known and mod != name and not name.startswith(mod + "."):
                deps.add(mod)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_lazy_imports() -> None:
    # The daemon imports the services only inside functions: they must count.
    graph = _graph()
    assert "slirpy.services.dns" in graph["slirpy.daemon"]
    assert "slirpy.host.spawn" in graph["slirpy.daemon"]


def test_no_import_cycles() -> None:
    assert _cycle(dict(_graph())) is None


def test_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_private_name_imported_from_another_module() -> None:
    mods = _modules()
    offenders = [
        f"{name}: {mod}.{imported}"
        for name, tree in mods.items()
        for mod, imported in _imports(tree, set(mods))
        if imported is not None and imported.startswith("_") and imported != "__version__"
    ]
    assert offenders == []


def _below_front_ends() -> list[str]:
    layers = sorted(
        _module_name(p)
        for sub in ("host", "services", "control")
        for p in (PACKAGE / sub).glob("*.py")
    )
    return ["slirpy.daemon", "slirpy.options", "slirpy.engine", "slirpy.config", *layers]


@pytest.mark.parametrize("below", _below_front_ends())
def test_nothing_below_the_front_ends_imports_them(below: str) -> None:
    assert not {d for d in _graph()[below] if d.startswith("slirpy.frontends")}
