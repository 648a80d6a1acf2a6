"""What every test layer shares: the repository, the ../shared fixtures, the tiny params.

`../shared` (beside the checkout) holds the real COCO sample and the official SDPose-T's
numbers; the tiny parameter sets make each stage take seconds on two shared cores. One
definition each, imported by the conftests, the helpers and the tests
(`pythonpath = ["tests"]` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COCO_SAMPLE = SHARED / "fixtures" / "coco-val2017-sample"
REFERENCE = SHARED / "reference"

# 24 train and 8 val images with up to 2 people each: a few dozen crops.
TINY_DATA: dict[str, Any] = {
    "synth.train_images": 24,
    "synth.val_images": 8,
    "synth.max_people": 2,
    "synth.workers": 1,
}

# sdpose-nano shrunk to seconds per epoch on one core; no warmup, lr decays at epoch 1.
TINY_MODEL: dict[str, Any] = {
    "model.preset": "sdpose-nano",
    "train.init": "scratch",  # the shipped weights are for the full-size nano
    "model.dim": 32,
    "model.depth": 2,
    "train.batch_size": 8,
    "train.warmup_iters": 0,
    "train.lr_steps": [1],
    "ray.cpus_per_worker": 0.5,
}

# The Ray Train tests: two workers, two epochs.
TINY_TRAIN: dict[str, Any] = {**TINY_DATA, **TINY_MODEL, "train.epochs": 2, "ray.num_workers": 2}

# Every stage of the pipeline in seconds: one worker, one epoch, a search of 2 trials x 1
# epoch over a 2-value space.
TINY_PIPELINE: dict[str, Any] = {
    **TINY_DATA,
    **TINY_MODEL,
    "train.epochs": 1,
    "pipeline.retries": 0,
    "evaluate.flip_test": False,
    "tune.num_samples": 2,
    "tune.max_epochs": 1,
    "tune.scheduler": "fifo",
    "tune.max_concurrent": 1,
    "tune.space": {"model.dim": {"choice": [32, 48]}},
    "ray.num_workers": 1,
}
