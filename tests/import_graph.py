"""The `sdpose` import graph, read from the source with `ast` (no module is imported).

Shared by the tests that hold the layout to its rules: dvc.yaml's code deps equal each
stage's import closure, the packages import each other without cycles, the library never
imports the orchestration (tests/unit/layout/test_dvc_deps.py, tests/unit/layout/test_layout.py).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path | None:
    """The source file of an `sdpose` module or package; None for names that are not."""
    base = REPO / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_names(
    path: Path, roots: tuple[str, ...] = ("sdpose",), annotations: bool = False
) -> set[str]:
    """Every module name under `roots` that `path` imports (`from m import x`: m and m.x),
    at module level or inside functions; `annotations`: those under `if TYPE_CHECKING:` too
    (they run for no stage, but a layer that names a type above it still reaches up)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    package = parts[:-1]  # a module's package; for __init__.py the package itself
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree) if annotations else _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.split(".")[0] in roots}


def function_local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, source line) of every import inside a function of `path`."""
    lines = path.read_text().splitlines()
    found = []
    for function in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    found.append((node.lineno, lines[node.lineno - 1]))
    return sorted(set(found))


def _runtime_nodes(tree: ast.AST):  # -> Iterator[ast.AST]
    """Every node except those under `if TYPE_CHECKING:`: annotations only, never run, so
    they neither change what a stage does nor make an import cycle."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def stage_code(entry: str) -> set[str]:
    """Repository paths of the closure of `entry`'s imports (packages' __init__ included)."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(imported_names(path))
    return {str(path.relative_to(REPO)) for path in seen}
