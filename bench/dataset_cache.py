"""The benches' synthetic dataset: synth -> prepare -> crops once under a folder, reused by
every run while the parameters that shape it are unchanged (a module, not a benchmark)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sdpose.config import Params


def build_dataset(params: Params, root: Path) -> None:
    """Build root/data with the real stages; rebuilt when synth, crops or input size change."""
    from sdpose.data import crops, prepare, synth

    stamp = root / "data" / "dataset_params.json"
    wanted = json.dumps(
        {
            "synth": params.synth.model_dump(mode="json"),
            "crops": params.crops.model_dump(mode="json"),
            "input_size": list(params.model.resolve().input_size),
        },
        sort_keys=True,
    )
    done = (root / "data" / "crops" / "summary.json").exists()
    if done and stamp.exists() and stamp.read_text() == wanted:
        return
    shutil.rmtree(root / "data", ignore_errors=True)
    for stage in (synth, prepare, crops):
        stage.run(params, root)
    stamp.write_text(wanted)


if __name__ == "__main__":  # `make bench` runs every bench/*.py
    print("bench/dataset_cache.py: a helper of the other benches, nothing to measure")
