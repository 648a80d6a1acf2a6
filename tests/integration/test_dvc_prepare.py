"""`dvc repro prepare` in a fresh git + DVC repo: runs synth and prepare, then skips both."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from shared import REPO

from sdpose.data.manifest import read_manifest

pytestmark = pytest.mark.integration


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """The project's dvc.yaml and code, with a params.yaml for a handful of images."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(
        REPO / "sdpose", tmp_path / "sdpose", ignore=shutil.ignore_patterns("__pycache__")
    )
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"].update(train_images=6, val_images=3, image_size=[128, 96], workers=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], tmp_path)
    _run(["dvc", "init", "-q"], tmp_path)
    _run(["dvc", "config", "core.analytics", "false"], tmp_path)
    return tmp_path


@pytest.mark.timeout(600)
def test_repro_prepare_runs_then_skips(dvc_repo: Path):
    first = _run(["dvc", "repro", "prepare"], dvc_repo)
    assert "Running stage 'synth'" in first.stdout and "Running stage 'prepare'" in first.stdout
    table, image_root = read_manifest(dvc_repo / "data" / "prepared" / "train.parquet")
    assert table.num_rows > 0 and (dvc_repo / image_root).is_dir()
    assert (dvc_repo / "data" / "prepared" / "report.json").is_file()
    assert (dvc_repo / "dvc.lock").is_file()

    second = _run(["dvc", "repro", "prepare"], dvc_repo)
    assert "Running stage" not in second.stdout
    for stage in ("synth", "prepare"):
        assert f"Stage '{stage}' didn't change, skipping" in second.stdout
    status = _run(["dvc", "status", "prepare"], dvc_repo)
    assert "up to date" in status.stdout

    ignored = _run(
        [
            "git",
            "check-ignore",
            "data/prepared/train.parquet",
            "data/raw/synth/annotations/person_keypoints_train.json",
        ],
        dvc_repo,
    )
    assert len(ignored.stdout.splitlines()) == 2, "DVC outputs must be ignored by git"
