"""The `tune` stage: a Ray Tune search over cycles, embedding size and any other model or
train parameter of `tune.space`, each trial a full Ray Train run of the train stage.

`run(params, workdir, resume=False)` is the stage (search.py); the trial driver and its
Ray Train callbacks are in trial.py, the search space and concurrency in space.py, the
per-trial record and Pareto front in results.py, the MLflow runs in tracking.py.
models/tune/search.json records the search that made models/tune (results.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from sdpose.config import Params

__all__ = ["run"]


def run(params: Params, workdir: Path, resume: bool = False) -> dict[str, Any]:
    """Search, or resume (`resume=True`) the interrupted search under `workdir`."""
    from sdpose.tuning.results import write_search_record
    from sdpose.tuning.search import TunePaths
    from sdpose.tuning.search import run as search  # Ray, torch and MLflow only when tuning

    summary = search(params, workdir, resume=resume)
    paths = TunePaths.under(workdir, params)
    write_search_record(params.to_dict()["tune"], paths.metrics, paths.best_model)
    return summary
