"""The `train` stage: SDPose self-distillation trained data-parallel with Ray Train.

`run(params, workdir, resume=False)` is the stage (launcher.py); the per-worker loop is in
loop.py, validation (flip test, DARK, COCO AP of student and teacher) in validate.py, the
learning-rate schedule in schedule.py and the metrics files in history.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from sdpose.config import Params

__all__ = ["run"]


def run(params: Params, workdir: Path, resume: bool = False) -> dict[str, Any]:
    """Train or resume (`resume=True`) the run of `params` under `workdir`; see launcher.run."""
    from sdpose.training.launcher import run as launch  # Ray and torch only when training

    return launch(params, workdir, resume=resume)
