"""`dvc repro` of the whole pipeline in a project copy (its own git repo, tiny params).

One full reproduction per module: it must run all seven stages in order; a second one must
skip every stage and leave dvc.lock as it was; a changed tune parameter must rerun exactly
tune and what depends on it (evaluate, export); `dvc plots show` must write a page that
loads nothing from the network. Each test leaves the copy up to date, so any order works.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from project_copy import copy_project, missing_outputs, run_tool, write_params
from shared import TINY_PIPELINE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

# dvc.yaml's stages in dependency order, written out so that a lost stage fails the test
STAGES = ["synth", "prepare", "crops", "train", "tune", "evaluate", "export"]
UPSTREAM_OF_TUNE = ["synth", "prepare", "crops", "train"]
UP_TO_DATE = "Data and pipelines are up to date."


def stages_run(output: str) -> list[str]:
    return re.findall(r"^Running stage '([\w-]+)'", output, re.M)


def stages_skipped(output: str) -> list[str]:
    return re.findall(r"^Stage '([\w-]+)' didn't change, skipping", output, re.M)


def repro(workdir: Path) -> str:
    return run_tool(["dvc", "repro"], workdir, timeout=1000).stdout


def lock_entries(workdir: Path) -> dict[str, dict]:
    return yaml.safe_load((workdir / "dvc.lock").read_text())["stages"]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny project copy after its first `dvc repro`, and that run's output."""
    workdir = copy_project(tmp_path_factory.mktemp("dvc-repro") / "project", TINY_PIPELINE)
    return workdir, repro(workdir)


def test_first_repro_runs_every_stage_in_order(reproduced: tuple[Path, str]) -> None:
    workdir, output = reproduced
    assert stages_run(output) == STAGES, output
    assert missing_outputs(workdir) == []
    assert list((workdir / "data" / "crops" / "val").glob("*.parquet"))
    assert sorted(lock_entries(workdir)) == sorted(STAGES)
    search = json.loads((workdir / "models" / "tune" / "search.json").read_text())
    assert search["tune"]["num_samples"] == TINY_PIPELINE["tune.num_samples"]
    assert len(search["trials"]) == TINY_PIPELINE["tune.num_samples"]


def test_second_repro_skips_every_stage(reproduced: tuple[Path, str]) -> None:
    workdir, _ = reproduced
    lock_before = (workdir / "dvc.lock").read_text()

    output = repro(workdir)

    assert stages_run(output) == [], output
    assert stages_skipped(output) == STAGES, output
    assert (workdir / "dvc.lock").read_text() == lock_before
    assert UP_TO_DATE in run_tool(["dvc", "status"], workdir).stdout


def test_tune_parameter_reruns_only_tune_evaluate_export(reproduced: tuple[Path, str]) -> None:
    workdir, _ = reproduced
    before = lock_entries(workdir)
    num_samples = yaml.safe_load((workdir / "params.yaml").read_text())["tune"]["num_samples"]
    changed = 1 if num_samples != 1 else 2  # one trial: the cheapest new search

    write_params(workdir, {"tune.num_samples": changed})
    output = repro(workdir)

    assert stages_run(output) == ["tune", "evaluate", "export"], output
    assert stages_skipped(output) == UPSTREAM_OF_TUNE, output
    after = lock_entries(workdir)
    for stage in UPSTREAM_OF_TUNE:
        assert after[stage] == before[stage], stage
    assert after["tune"]["params"]["params.yaml"]["tune"]["num_samples"] == changed
    search = json.loads((workdir / "models" / "tune" / "search.json").read_text())
    assert search["tune"]["num_samples"] == changed
    assert len(search["trials"]) == changed
    assert UP_TO_DATE in run_tool(["dvc", "status"], workdir).stdout


def test_plots_show_needs_no_network(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    workdir, _ = reproduced
    run_tool(["dvc", "plots", "show", "-o", str(tmp_path)], workdir)

    page = (tmp_path / "index.html").read_text()
    remote = re.findall(r"""<(?:script|link|img)\b[^>]*(?:src|href)=["']?(https?:)?//""", page)
    assert remote == [], "the plots page loads files from the network"
    declared = [
        next(iter(plot)) if isinstance(plot, dict) else plot
        for stage in yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"].values()
        for plot in stage.get("plots", [])
    ]
    shown = re.findall(r'<img src="([^"]+)"', page)
    assert len(declared) >= 5 and len(shown) == len(declared), (declared, shown)
    for source in shown:
        assert (tmp_path / source).stat().st_size > 1000, source


@pytest.mark.parametrize(
    "module", ["sdpose/evaluation/visualize.py", "sdpose/data/feed.py", "sdpose/core/presets.py"]
)
def test_touching_a_module_stales_exactly_the_stages_that_import_it(
    reproduced: tuple[Path, str], module: str
) -> None:
    """dvc.yaml's code deps are each stage's imports (tests/unit/layout/test_dvc_deps.py); here DVC
    itself must see a changed module as changing exactly those stages, and no others."""
    workdir, _ = reproduced
    stages = yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"]
    importing = {name for name, stage in stages.items() if module in stage.get("deps", [])}
    assert importing, f"no stage depends on {module}"
    path = workdir / module
    source = path.read_text()
    path.write_text(source + "\n# touched by the test\n")
    try:
        status = json.loads(run_tool(["dvc", "status", "--json"], workdir).stdout)
    finally:
        path.write_text(source)
    changed_code = {
        name
        for name, changes in status.items()
        for change in changes
        if module in change.get("changed deps", {})
    }
    assert changed_code == importing, status
    assert UP_TO_DATE in run_tool(["dvc", "status"], workdir).stdout


def test_an_orchestration_parameter_stales_no_stage(reproduced: tuple[Path, str]) -> None:
    """pipeline.* tells the flow how to run the stages (retries); no stage reads it."""
    workdir, _ = reproduced
    retries = yaml.safe_load((workdir / "params.yaml").read_text())["pipeline"]["retries"]
    write_params(workdir, {"pipeline.retries": retries + 1})
    assert UP_TO_DATE in run_tool(["dvc", "status"], workdir).stdout
