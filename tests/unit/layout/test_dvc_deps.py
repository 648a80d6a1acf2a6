"""dvc.yaml's code deps are the code each stage runs: no more, no less.

A stage's code is the closure of `sdpose` modules its entry module (`sdpose.stages.STAGES`)
imports, at module level or inside functions, read from the source with `ast`. A module
missing from the deps would let `dvc repro` keep a stale output after a change; an extra
one would rerun a stage that a change cannot affect.
"""

from __future__ import annotations

import pytest
import yaml
from import_graph import REPO, stage_code

from sdpose.stages import STAGES

pytestmark = pytest.mark.unit


def declared_code(stage: dict) -> set[str]:
    deps = [str(dep).split()[0] for dep in stage.get("deps", [])]
    return {dep for dep in deps if dep.startswith("sdpose/")}


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_imports(stage: str) -> None:
    declared = declared_code(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage])
    imported = stage_code(STAGES[stage].module)
    hint = " (python tests/update_dvc_deps.py rewrites them)"
    assert not imported - declared, f"dvc.yaml {stage}: add {sorted(imported - declared)}{hint}"
    assert not declared - imported, f"dvc.yaml {stage}: drop {sorted(declared - imported)}{hint}"


def test_the_import_reader_follows_lazy_and_relative_imports() -> None:
    code = stage_code("sdpose.stages")
    assert "sdpose/training/stage.py" in code  # imported inside a function of stages.py
    assert "sdpose/training/__init__.py" in code  # the package of an imported module
    code = stage_code("sdpose.training.stage")
    assert "sdpose/training/loop.py" in code  # through launcher.py
    assert "sdpose/export/stage.py" not in code  # training never reaches the export stage
