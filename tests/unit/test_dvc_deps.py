"""dvc.yaml's code deps are the code each stage runs: no more, no less.

A stage's code is the closure of `sdpose` modules its entry module (`sdpose.cli.STAGES`)
imports, at module level or inside functions, read from the source with `ast`. A module
missing from the deps would let `dvc repro` keep a stale output after a change; an extra
one would rerun a stage that a change cannot affect.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from sdpose.cli import STAGES

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def module_file(name: str) -> Path | None:
    """The source file of an `sdpose` module or package; None for names that are not."""
    base = REPO / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_names(path: Path) -> set[str]:
    """Every module name `path` imports (and `from m import x` as both m and m.x)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    package = parts[:-1]  # a module's package; for __init__.py the package itself
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
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
    return {name for name in names if name.split(".")[0] == "sdpose"}


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


def declared_code(stage: dict) -> set[str]:
    deps = [str(dep).split()[0] for dep in stage.get("deps", [])]
    return {dep for dep in deps if dep.startswith("sdpose/")}


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_imports(stage: str) -> None:
    declared = declared_code(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage])
    imported = stage_code(STAGES[stage][0])
    assert not imported - declared, f"dvc.yaml {stage}: add to deps {sorted(imported - declared)}"
    assert not declared - imported, f"dvc.yaml {stage}: not imported {sorted(declared - imported)}"


def test_the_import_reader_follows_lazy_and_relative_imports() -> None:
    code = stage_code("sdpose.training")
    assert "sdpose/training/loop.py" in code  # imported by the package's __init__
    assert "sdpose/ray_runtime.py" in code  # imported inside a function of launcher.py
    assert "sdpose/export.py" not in code  # training never reaches the export stage
