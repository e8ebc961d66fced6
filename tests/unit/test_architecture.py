"""The library's shape: it imports no front door and has no import circle.

Every ``import`` counts, also those inside functions and under ``TYPE_CHECKING``: a lazy import
hides a circle from Python, not from the reader who has to understand both modules at once.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "plugins" / "relay"
FRONT_DOORS = ("serving", "ray_jobs", "dags", "feature_repo", "bench", "tests")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, modules: set[str]) -> set[str]:
    """The modules (of any package) that ``path`` imports, resolved to the most specific known."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                # `from relay.serve import control` imports the module relay.serve.control
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return out


def library_graph() -> dict[str, set[str]]:
    paths = sorted(LIBRARY.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle among the library's modules, or None."""
    internal = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(internal[m]):
            if state.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(internal):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_library_imports_no_front_door() -> None:
    offenders = sorted(
        f"{m} imports {d}"
        for m, deps in library_graph().items()
        for d in deps
        if d.split(".")[0] in FRONT_DOORS
    )
    assert offenders == []


def test_the_library_has_no_import_circle() -> None:
    assert find_cycle(library_graph()) is None


def test_the_cycle_finder_sees_a_circle() -> None:
    graph = {"relay.a": {"relay.b"}, "relay.b": {"relay.c"}, "relay.c": {"relay.a", "os"}}
    assert find_cycle(graph) == ["relay.a", "relay.b", "relay.c", "relay.a"]
    assert find_cycle({"relay.a": {"relay.b"}, "relay.b": set()}) is None


@pytest.mark.parametrize("path", sorted(LIBRARY.rglob("*.py")), ids=lambda p: module_name(p))
def test_library_modules_stay_small(path: Path) -> None:
    # One module, one decision: past this, a module has usually grown a second purpose.
    assert len(path.read_text().splitlines()) <= MAX_LINES
