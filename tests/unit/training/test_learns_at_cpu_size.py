"""The CPU-sized default leaves the flat prediction's loss: the training step really learns.

Real COCO people (the shared sample) go through the project's own prepare -> crop ->
augment chain at the default model's input size (128x96 -> 32x24), and the training loop's
own `train_epoch` (all cycles, every loss term, Adam, warmup + cosine) fits them. A model
stuck on the plateau predicts a flat output (an all-zero heatmap, or uniform SimCC bins)
and cannot get under that output's loss; after a few dozen steps this one does, by a clear
margin.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from shared import COCO_SAMPLE

from sdpose.config import CropsParams, Params
from sdpose.core.codecs import codec_for_labels
from sdpose.data import crop_rows, feed
from sdpose.data.manifest import SCHEMA
from sdpose.data.prepare import prepare_split
from sdpose.models import build_model
from sdpose.training.loop import train_epoch
from sdpose.training.losses import DistillationLoss, pose_loss_for
from sdpose.training.schedule import WarmupStepSchedule
from sdpose.training.trainee import Trainee

pytestmark = pytest.mark.unit

SAMPLE = COCO_SAMPLE
EPOCHS = 80
# flips and mild zooms only: the test is about the training step, not the augmentation
MILD = {"rotation_prob": 0.0, "half_body_prob": 0.0, "scale_factor": 0.1, "shift_prob": 0.0}


def coco_crops(params: Params) -> pa.Table:
    """The sample's labelled people as crop rows, cut for the default model's input."""
    prepared = prepare_split(
        SAMPLE / "person_keypoints_val2017_sample.json", SAMPLE / "images", "val", workers=1
    )
    rows = pa.Table.from_pylist(prepared.rows, schema=SCHEMA)
    height = crop_rows.max_box_height(params.model.resolve().input_size)
    table, skipped = crop_rows.crop_rows(rows, SAMPLE / "images", CropsParams(), height)
    assert not skipped and table.num_rows == 12
    return table


def test_default_model_gets_well_under_the_flat_prediction_loss():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    params = Params.model_validate({"train": {"lr": 2e-3, "warmup_iters": 5, "augment": MILD}})
    codec = codec_for_labels(params.model.resolve(), params.train)
    assert codec.input_size == (128, 96)
    pose_loss = pose_loss_for(params.model.resolve(), params.train)
    table = coco_crops(params)
    model = build_model(params.model.resolve()).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=params.train.lr)
    schedule = WarmupStepSchedule(
        optimizer, params.train.lr, 5, 0.001, [], 1.0, policy="cosine", total_iters=EPOCHS * 2
    )
    trainee = Trainee(model, optimizer, schedule, torch.amp.GradScaler("cpu", enabled=False),
                      torch.device("cpu"))  # fmt: skip
    zero_losses, losses = [], []
    for epoch in range(EPOCHS):
        batch = feed.augment_batch(table, params.train.augment, 0, epoch, codec)
        target, weight = torch.from_numpy(batch["target"]), torch.from_numpy(batch["target_weight"])
        zero_losses.append(float(pose_loss(torch.zeros_like(target), target, weight)))
        halves = [
            {name: torch.from_numpy(batch[name][part]) for name in ("images", "target",
                                                                     "target_weight")}
            for part in (slice(0, 6), slice(6, 12))
        ]  # fmt: skip
        row = train_epoch(trainee, iter(halves), DistillationLoss(pose_loss=pose_loss), epoch)
        losses.append(row["pose_loss_cycle1"])
    assert losses[0] > zero_losses[0]  # a fresh head predicts noise, worse than flat
    last = slice(-4, None)
    assert np.mean(losses[last]) < 0.8 * np.mean(zero_losses[last])
