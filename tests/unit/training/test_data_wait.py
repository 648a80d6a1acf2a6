"""The history's `data_wait_s`: the time a worker's step waited for its next batch.

It tells a user whether the feed or the step bounds a run (docs/training.md, throughput),
so it must count the waiting and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch

from sdpose.config import Params
from sdpose.training.loop import distillation_loss, train_epoch
from sdpose.training.trainee import build_trainee

pytestmark = pytest.mark.unit

PAUSE_S = 0.15


def batches(count: int, pause_s: float) -> Iterator[dict[str, torch.Tensor]]:
    """`count` batches of two nano-sized samples, each after a pause (a slow feed)."""
    for _ in range(count):
        time.sleep(pause_s)
        yield {
            "images": torch.randint(0, 256, (2, 128, 96, 3), dtype=torch.uint8),
            "target": torch.rand(2, 17, 96 * 2 + 128 * 2),  # the nano's SimCC labels
            "target_weight": torch.ones(2, 17),
        }


def test_data_wait_counts_the_feed_not_the_step():
    torch.manual_seed(0)
    params = Params()
    trainee = build_trainee(params, torch.device("cpu"), total_iters=6, in_ray_train=False)
    loss = distillation_loss(params)
    slow = train_epoch(trainee, batches(3, PAUSE_S), loss, epoch=0)
    assert 3 * PAUSE_S <= slow["data_wait_s"] < slow["epoch_time_s"]
    fast = train_epoch(trainee, batches(3, 0.0), loss, epoch=1)
    assert fast["data_wait_s"] < PAUSE_S  # no pause: the batches are there when asked for
    assert fast["samples"] == slow["samples"] == 6
