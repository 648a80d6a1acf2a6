"""Shared integration fixtures: one tiny synthetic dataset, cut into crops once per session.

Every Ray Train test copies its `data/` into its own working directory, so runs never share
outputs, while the synth -> prepare -> crops chain (the real stages) runs only once.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from shared import TINY_DATA, TINY_TRAIN

from sdpose.config import Params, load_params


@pytest.fixture(scope="session")
def tiny_params() -> Callable[..., Params]:
    """TINY_TRAIN with dotted-key overrides: `tiny_params(workdir, {"train.epochs": 3})`."""

    def make(workdir: Path, overrides: dict[str, Any] | None = None) -> Params:
        return load_params(Path(workdir) / "params.yaml", {**TINY_TRAIN, **(overrides or {})})

    return make


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding data/raw, data/prepared and data/crops of TINY_DATA."""
    from sdpose.data import crops, prepare, synth

    root = tmp_path_factory.mktemp("tiny-dataset")
    params = load_params(root / "params.yaml", TINY_DATA)
    for stage in (synth, prepare, crops):
        stage.run(params, root)
    return root


@pytest.fixture
def train_workdir(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A fresh working directory with its own copy of the tiny dataset's data/."""
    workdir = tmp_path / "work"
    shutil.copytree(tiny_dataset / "data", workdir / "data")
    return workdir
