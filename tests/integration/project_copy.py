"""A throwaway copy of the project (its own git + DVC repo) with tiny parameters.

The DVC and Prefect end-to-end tests run every stage for real, so they work in a copy: the
checkout's data/, models/ and params.yaml stay untouched, and DVC sees a git repository of
its own. Files come from `git ls-files`, so new files not yet committed are included and
git-ignored build outputs are not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from shared import REPO

from sdpose.config import apply_overrides, validate_params

VENV_BIN = Path(sys.executable).parent
SKIPPED_DIRS = ("data", "models", "metrics", "reports", ".venv")
# what a `make run` in the checkout leaves at its top: DVC's lock (which DVC stages in git)
# and MLflow's; a copy with them would look like a project that has already run
SKIPPED_FILES = ("dvc.lock", "mlruns.db.lock")

STAGE_OUTPUTS = (
    "data/raw/synth/annotations/person_keypoints_train.json",
    "data/raw/synth/annotations/person_keypoints_val.json",
    "data/prepared/train.parquet",
    "data/prepared/val.parquet",
    "data/crops/summary.json",
    "models/train/best.pt",
    "metrics/train.json",
    "models/tune/best.pt",
    "metrics/tune.json",
    "metrics/eval.json",
    "reports/eval.md",
    "models/export/sdpose-student.onnx",
    "models/export/model_card.json",
)


def tool_env(**extra: str) -> dict[str, str]:
    """This venv's tools first on PATH (DVC's stage shells must find its `sdpose`)."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        **extra,
    }


def run_tool(
    args: list[str], cwd: Path, timeout: float = 900, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it fails."""
    done = subprocess.run(
        args, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def project_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of the checkout, minus pipeline outputs."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    names = [name for name in listed.split("\0") if name]
    return [
        name
        for name in names
        if name.split("/", 1)[0] not in SKIPPED_DIRS
        and name not in SKIPPED_FILES
        and (REPO / name).is_file()
    ]


def write_params(workdir: Path, overrides: dict[str, Any]) -> None:
    """params.yaml of the copy with the overrides applied (validated, so typos fail here)."""
    path = workdir / "params.yaml"
    raw = apply_overrides(yaml.safe_load(path.read_text()), overrides)
    validate_params(raw, str(path))
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def copy_project(destination: Path, overrides: dict[str, Any]) -> Path:
    """The project's files under `destination` with `overrides` (TINY_PIPELINE, or {} for
    the project's own params.yaml) in params.yaml, committed to a fresh git repo."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in project_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    if overrides:
        write_params(destination, overrides)
    git = ["git", "-c", "user.name=sdpose-tests", "-c", "user.email=tests@sdpose.invalid"]
    run_tool(["git", "init", "-q"], destination)
    run_tool(["git", "add", "-A"], destination)
    run_tool([*git, "commit", "-q", "-m", "project copy"], destination)
    return destination


def missing_outputs(workdir: Path) -> list[str]:
    """Stage outputs (docs/ARCHITECTURE.md's stage table) that are not in the workdir."""
    return [name for name in STAGE_OUTPUTS if not (workdir / name).is_file()]
