"""`sdpose train` on the tiny synthetic crops: 2 Ray Train workers (gloo), 2 epochs.

Checks the stage's contract: every output file, each loss term logged on its own and
adding up, the schedule's lr per epoch, AP of student and teacher, a best student that
rebuilds itself from `weights_only` loading and runs one cycle, and `resume=True` on a
finished run reproducing the same records without training again.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sdpose.core.codecs import codec_for_labels
from sdpose.models.checkpoint import load_checkpoint
from sdpose.training.history import read_history_csv
from sdpose.training.stage import run

pytestmark = pytest.mark.integration

LOSS_TERMS = (
    "loss",
    "pose_loss",
    "pose_loss_cycle1",
    "pose_loss_cycle2",
    "kpt_dist_loss",
    "vis_dist_loss",
    "heatmap_dist_loss",
)


@pytest.mark.timeout(600)
def test_train_writes_every_output_and_resume_keeps_them(train_workdir, tiny_params) -> None:
    params = tiny_params(train_workdir)
    summary = run(params, train_workdir)

    history = read_history_csv(train_workdir / "metrics" / "train_history.csv")
    assert [row["epoch"] for row in history] == [0, 1]
    for row in history:
        assert all(math.isfinite(row[name]) for name in LOSS_TERMS)
        assert row["pose_loss"] == pytest.approx(
            row["pose_loss_cycle1"] + row["pose_loss_cycle2"], rel=1e-6
        )
        parts = ("pose_loss", "kpt_dist_loss", "vis_dist_loss", "heatmap_dist_loss")
        assert row["loss"] == pytest.approx(sum(row[name] for name in parts), rel=1e-6)
        assert row["kpt_dist_loss"] > 0 and row["vis_dist_loss"] > 0  # two cycles distil
        assert 0.0 <= row["student_ap"] <= 1.0 and 0.0 <= row["teacher_ap"] <= 1.0
        assert row["samples_per_s"] > 0
        assert 0 <= row["data_wait_s"] <= row["epoch_time_s"]
    # train.json's speed is over the training passes, as bench/train.py measures it
    samples, seconds = (sum(row[name] for row in history) for name in ("samples", "epoch_time_s"))
    assert summary["samples_per_s"] == pytest.approx(samples / seconds, rel=1e-6)
    # no warmup, lr_steps [1], factor 0.1
    assert [row["lr"] for row in history] == pytest.approx([1e-3, 1e-4])
    # optimiser steps so far: each epoch adds the same number, the workers' batches
    steps = [row["iterations"] for row in history]
    assert steps[0] > 0 and steps[1] == 2 * steps[0]
    # the train split is sharded: the workers see it once per epoch together
    crops = json.loads((train_workdir / "data" / "crops" / "summary.json").read_text())
    train_rows = crops["splits"]["train"]["rows"]
    assert all(train_rows - 2 < row["samples"] <= train_rows for row in history)

    metrics = json.loads((train_workdir / "metrics" / "train.json").read_text())
    assert metrics == summary
    assert metrics["epochs"] == 2 and metrics["nodes"] == 1 and metrics["restores"] == 0
    assert metrics["student_ap"] == history[-1]["student_ap"]
    assert metrics["teacher_ap"] == history[-1]["teacher_ap"]
    assert metrics["best_student_ap"] == max(row["student_ap"] for row in history)
    assert metrics["dashboard_url"].startswith("http://127.0.0.1:")
    assert (train_workdir / "reports" / "train_curves.png").stat().st_size > 1000

    models = train_workdir / "models" / "train"
    student, payload = load_checkpoint(models / "best.pt")  # torch.load(weights_only=True)
    assert payload["student_ap"] == metrics["best_student_ap"]
    assert student.config.cycles == 2 and student.config.dim == 32
    with torch.no_grad():
        assert len(student(torch.zeros(1, 3, *student.config.input_size))) == 1  # one cycle
    last = torch.load(models / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and len(last["progress"]["history"]) == 2
    assert json.loads((models / "config.json").read_text())["model"]["dim"] == 32

    again = run(params, train_workdir, resume=True)
    assert again["resumed_after_epoch"] == 1
    assert read_history_csv(train_workdir / "metrics" / "train_history.csv") == history
    assert again["student_ap"] == metrics["student_ap"]


@pytest.mark.timeout(300)
def test_validation_scores_the_feeds_own_targets_ap_one(train_workdir, tiny_params) -> None:
    """The val feed's targets, decoded as if predicted, must match the COCO ground truth:
    crop geometry (feed), decoding (codec) and scoring (evaluation) agree on real data."""
    from sdpose.data import feed
    from sdpose.models.outputs import CycleOutput
    from sdpose.ray_runtime import ray_session
    from sdpose.training.launcher import TrainPaths
    from sdpose.training.validate import Predictions, coco_ap, predict_batches

    class TargetsAsPredictions(torch.nn.Module):
        predictions: torch.Tensor

        def forward(self, images, cycles=None):
            tokens = torch.zeros(len(images), 17, 4)
            return [CycleOutput(self.predictions, tokens, tokens)] * (cycles or 1)

    params = tiny_params(train_workdir, {"evaluate.flip_test": False})
    network, found = TargetsAsPredictions(), Predictions()
    with ray_session(params.ray):
        for batch in feed.val_dataset(params, train_workdir).iter_torch_batches(batch_size=8):
            network.predictions = batch["target"]
            codec = codec_for_labels(
                params.model.resolve(), params.train
            )  # the model's own sizes: 128x96 -> 32x24
            predictions = predict_batches(network, [batch], codec, params.evaluate, 1)
            found.extend(predictions["student"])
    annotations = TrainPaths.under(train_workdir, params).annotations
    assert coco_ap(found, annotations, params.evaluate)["AP"] > 0.99
