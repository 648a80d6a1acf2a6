"""The `train` stage's entry: `run(params, workdir, resume=False) -> summary`.

The stage itself (paths, Ray Train, the outputs) is the launcher's; this module is the one
entry the CLI, the flow and DVC call, named as every stage's is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdpose.config import Params
from sdpose.training.launcher import run as launch


def run(params: Params, workdir: Path, resume: bool = False) -> dict[str, Any]:
    """Train or resume (`resume=True`) the run of `params` under `workdir`; see launcher.run."""
    return launch(params, workdir, resume=resume)
