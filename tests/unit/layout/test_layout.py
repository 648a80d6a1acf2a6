"""The tree reads like the pipeline, and its rules hold (docs/ARCHITECTURE.md, layout).

- The library never imports the orchestration: `pipelines/` depends on `sdpose`, not back.
- The packages of `sdpose` import each other without cycles, and `sdpose.core` imports no
  other package: every layer may use the shared conventions, they use nothing above them.
- No module is over MAX_LINES: a module that long holds more than one job.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from import_graph import REPO, imported_names

pytestmark = pytest.mark.unit

MAX_LINES = 400
LIBRARY = REPO / "sdpose"


def library_files() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def package_of(module: str) -> str:
    """`sdpose.deploy.registry` -> `deploy`; top-level modules (`sdpose.cli`) are their own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_graph() -> dict[str, set[str]]:
    """Package -> the other `sdpose` packages (or top-level modules) it imports."""
    graph: dict[str, set[str]] = {}
    for path in library_files():
        source = package_of(module_name(path))
        targets = {package_of(name) for name in imported_names(path) if name != "sdpose"}
        graph.setdefault(source, set()).update(targets - {source})
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that returns to its start, or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*trail[trail.index(target) :], target] if target in trail else [target]
            if target not in state and (cycle := visit(target, [*trail, target])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_library_never_imports_the_orchestration() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for path in library_files()
        if imported_names(path, roots=("pipelines",))
    ]
    assert not offenders, f"sdpose imports pipelines/ in {offenders}"


def test_packages_import_each_other_without_cycles() -> None:
    graph = package_graph()
    assert {"core", "data", "models", "training", "evaluation", "export", "deploy"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle between packages: {find_cycle(graph)}"


def test_core_uses_nothing_above_it() -> None:
    assert package_graph()["core"] <= {"config"}, package_graph()["core"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_is_over_the_line_limit() -> None:
    long = {
        str(path.relative_to(REPO)): count
        for path in library_files()
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
