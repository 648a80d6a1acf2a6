"""The `tune` stage's entry: `run(params, workdir, resume=False) -> summary`.

The search is search.py's; this module runs it and records the search that made
models/tune (models/tune/search.json, results.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdpose.config import Params
from sdpose.tuning.results import write_search_record
from sdpose.tuning.search import TunePaths
from sdpose.tuning.search import run as search


def run(params: Params, workdir: Path, resume: bool = False) -> dict[str, Any]:
    """Search, or resume (`resume=True`) the interrupted search under `workdir`."""
    summary = search(params, workdir, resume=resume)
    paths = TunePaths.under(workdir, params)
    write_search_record(params.to_dict()["tune"], paths.metrics, paths.best_model)
    return summary
