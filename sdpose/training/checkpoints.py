"""What a training checkpoint holds, and how a worker writes and restores it.

Rank 0 writes `state.pt` (model, optimiser, schedule, AMP scaler, the resolved params and
the `Progress`: epoch, best AP, history rows, workers) and `best.pt` (the best student so
far) into a folder that `ray.train.report` registers as the epoch's checkpoint. A restored
run continues from there, so each epoch is recorded exactly once
(docs/ARCHITECTURE.md, checkpoint format).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import torch

from sdpose.config import Params
from sdpose.core.errors import InputError
from sdpose.models import build_model
from sdpose.models.checkpoint import save_checkpoint, unwrap
from sdpose.training.trainee import Trainee

STATE_FILE = "state.pt"  # everything a restart needs
BEST_FILE = "best.pt"  # the best student so far (model weights only)


@dataclass
class Progress:
    """The run's bookkeeping that travels in checkpoints."""

    epoch: int = -1  # last finished epoch (0-based); -1 before the first
    best_ap: float = -1.0
    best_epoch: int = -1
    restores: int = 0  # how many times training continued from a checkpoint
    history: list[dict[str, float]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)  # rank, node, weights digest
    # student and teacher AP of train.init's weights before the first step (None: scratch)
    initial: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_state(folder: Path) -> tuple[dict[str, Any], Progress]:
    """A checkpoint folder's state.pt (on the CPU) and its Progress, history included.

    The one reader of the format: restoring a run, the run's outputs and the search's trial
    rows all read a checkpoint through here.
    """
    state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    return state, Progress(**state["progress"])


def restore(
    trainee: Trainee, folder: Path, params: Params
) -> tuple[Progress, dict[str, torch.Tensor]]:
    """Load a checkpoint written by `report`; returns the progress and the best weights."""
    state, progress = load_state(folder)
    model = unwrap(trainee.model)
    if state["config"] != model.config.to_dict():
        raise InputError(
            f"{folder / STATE_FILE}: the checkpoint's model {state['config']} differs from "
            f"the requested {model.config.to_dict()}; resume with the run's own parameters "
            "or start a fresh run"
        )
    model.load_state_dict(state["model"])
    trainee.optimizer.load_state_dict(state["optimizer"])  # moves its state to the device
    trainee.schedule.load_state_dict(state["schedule"])
    trainee.scaler.load_state_dict(state["scaler"])
    best = torch.load(folder / BEST_FILE, map_location="cpu", weights_only=True)["model"]
    progress.restores += 1
    return progress, best


def report(
    metrics: dict[str, float],
    trainee: Trainee,
    progress: Progress,
    best_state: dict[str, torch.Tensor] | None,
    params: Params,
    rank: int,
) -> None:
    """ray.train.report on every rank; rank 0 attaches the checkpoint (epoch-NNNN)."""
    dir_name = f"epoch-{progress.epoch:04d}"
    if rank != 0:
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=dir_name)
        return
    with tempfile.TemporaryDirectory(prefix="sdpose-ckpt-") as folder:
        write_checkpoint(Path(folder), trainee, progress, best_state, params)
        checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)


def write_checkpoint(
    folder: Path,
    trainee: Trainee,
    progress: Progress,
    best_state: dict[str, torch.Tensor] | None,
    params: Params,
) -> None:
    """state.pt (resumable, also a loadable sdpose checkpoint) and best.pt (best student)."""
    model = unwrap(trainee.model)
    save_checkpoint(
        folder / STATE_FILE,
        model,
        optimizer=trainee.optimizer.state_dict(),
        schedule=trainee.schedule.state_dict(),
        scaler=trainee.scaler.state_dict(),
        progress=progress.to_dict(),
        params=params.to_dict(),
        epoch=progress.epoch,
    )
    best_model = build_model(model.config)
    best_model.load_state_dict(best_state if best_state is not None else model.state_dict())
    save_checkpoint(
        folder / BEST_FILE,
        best_model,
        epoch=progress.best_epoch,
        student_ap=progress.best_ap,
        params=params.to_dict(),
    )


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()}
