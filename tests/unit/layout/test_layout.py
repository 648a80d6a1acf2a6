"""The tree reads like the pipeline, and its rules hold (docs/ARCHITECTURE.md, layout).

- The library never imports the orchestration: `pipelines/` depends on `sdpose`, not back.
- Every package of `sdpose` imports only the layers below it (LAYERS), read from the
  source: imports inside functions and annotation-only ones count. So there is no cycle,
  and `sdpose.core` imports nothing of the project.
- The same holds at run time: importing a package's modules loads no package above it.
- A function-local import says why it is lazy (`# lazy: ...`, its measured cost).
- No module is over MAX_LINES: a module that long holds more than one job.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from import_graph import REPO, function_local_imports, imported_names

pytestmark = pytest.mark.unit

MAX_LINES = 400
# Bottom up; a package may import its own modules and those of the layers below, never one
# of its own layer or above (docs/ARCHITECTURE.md draws the same order).
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "core",  # the shared conventions: keypoints, geometry, codecs, presets, paths
        "config console",  # validated params; what a stage prints
        "models ray_runtime mlflow_store",  # the networks; the run's Ray; the MLflow store
        "data",  # synth, prepare, crops, the feed
        "evaluation",  # the one inference and scoring path, the evaluate stage
        "training",  # Ray Train
        "tuning",  # Ray Tune over training
        "deploy",  # runtimes, predict, the registry
        "export",  # builds, measures and judges what ships
        "stages",  # the stage table
        "cli",  # the commands
    )
)
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}
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
    """Package -> the other `sdpose` packages (or top-level modules) it imports, anywhere in
    its source (inside functions and under `if TYPE_CHECKING:` included)."""
    graph: dict[str, set[str]] = {}
    for path in library_files():
        source = package_of(module_name(path))
        imported = imported_names(path, annotations=True)
        targets = {package_of(name) for name in imported if name != "sdpose"}
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
    assert package_graph()["core"] == set(), package_graph()["core"]


def test_every_package_has_a_layer() -> None:
    unplaced = set(package_graph()) - set(RANK) - {"sdpose"}
    assert not unplaced, f"add {sorted(unplaced)} to LAYERS (and docs/ARCHITECTURE.md)"


def test_each_package_imports_only_the_layers_below_it() -> None:
    upward = {
        f"{source} -> {target}"
        for source, targets in package_graph().items()
        for target in targets
        if source in RANK and target in RANK and RANK[target] >= RANK[source]
    }
    assert not upward, f"imports of a layer at or above the importer's: {sorted(upward)}"


def importing_loads(modules: list[str]) -> set[str]:
    """The `sdpose` packages a fresh interpreter has loaded after importing `modules`."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(' '.join(sorted(name for name in sys.modules if name.startswith('sdpose.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {package_of(name) for name in result.stdout.split()}


@pytest.mark.parametrize("package", ["core", "config", "models", "data", "evaluation", "deploy"])
def test_at_run_time_a_package_loads_no_layer_above_it(package: str) -> None:
    """What the source reading cannot see (an `importlib` call, a plugin) shows here."""
    modules = sorted(
        {module_name(path) for path in library_files() if package_of(module_name(path)) == package}
    )
    above = {name for name in importing_loads(modules) if RANK.get(name, -1) > RANK[package]}
    assert not above, f"importing sdpose.{package} loads {sorted(above)}"


def test_function_local_imports_say_why_they_are_lazy() -> None:
    unexplained = [
        f"{path.relative_to(REPO)}:{line}: {text.strip()}"
        for path in library_files()
        for line, text in function_local_imports(path)
        if "# lazy" not in text and "# lazy" not in path.read_text().splitlines()[line - 2]
    ]
    assert not unexplained, "a function-local import without `# lazy: why`: " + "; ".join(
        unexplained
    )


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
