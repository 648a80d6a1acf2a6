"""One trial of the search: a Tune function trainable that drives a full Ray Train run.

This is Ray's Train V2 pattern for Train inside Tune (`Tuner(trainer)` is deprecated): the
trial validates its sampled parameters, builds the train stage's own TorchTrainer (same
per-worker loop, same data feed) with a run folder of its own, and fits it. The trainer's
`TrialReport` callback forwards every epoch's metrics to Tune, which hands them to the
scheduler (ASHA) and to the MLflow callback in the main process.

A trial's run folder is stable across a restore (`runs/<trial id>`), so a trial that was
running when the search was interrupted continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from sdpose.ray_runtime import quiet_ray_logs
from sdpose.training.launcher import RUN_NAME, TrainPaths, build_trainer
from sdpose.training.storage import RunStorage
from sdpose.tuning.cleanup import PlacementGroupRecorder, recorded_worker_group
from sdpose.tuning.space import trial_params

RUNS_DIR = "runs"  # inside the experiment folder: one Ray Train run per trial
EPOCHS_DONE = "epochs_done"  # the scheduler's clock: finished epochs, counted from 1
SCORE = "score"  # what the scheduler ranks: the student AP, ties broken (see TrialReport)
# Scale of the tie-break: the student's heatmap MSE is below 1, so the shift stays under
# 1e-6 AP, far below any difference a COCO AP can show.
TIE_BREAK = 1e-6


def run_dir(experiment_dir: Path, trial_id: str) -> Path:
    """Where a trial's Ray Train run lives (the storage path of its TorchTrainer)."""
    return Path(experiment_dir) / RUNS_DIR / trial_id


def drive_trial(
    config: dict[str, Any], *, base_params: dict[str, Any], workdir: str, experiment_dir: str
) -> None:
    """Tune trainable: validate the sampled config, train it, let TrialReport report.

    An impossible combination raises InvalidTrialConfigError before anything starts, so Tune
    records the trial as failed with that message and the search goes on.
    """

    quiet_ray_logs()  # the trial's datasets take this process's DataContext
    max_epochs = base_params["tune"]["max_epochs"]
    params = trial_params(base_params, config, max_epochs)
    trial_id = ray.tune.get_context().get_trial_id()
    run = RunStorage.of(run_dir(Path(experiment_dir), trial_id), RUN_NAME, Path(workdir))
    paths = dataclasses.replace(TrainPaths.under(Path(workdir), params), run=run)
    # A restored trial continues its run: augmentation seeds go on from the next epoch.
    latest = run.latest_checkpoint()
    first_epoch = latest[0] + 1 if latest else 0
    callbacks = [TrialReport(), PlacementGroupRecorder()]
    trainer = build_trainer(
        params, Path(workdir), paths, first_epoch, callbacks=callbacks, console=False
    )
    trainer.fit()  # raises the run's error: Tune records it on the trial


class TrialReport(TuneReportCallback):
    """Ray's TuneReportCallback plus the scheduler's clock and score and the placement group.

    `epochs_done` = epoch + 1: ASHA's grace period and rungs count finished epochs, and the
    training loop's `epoch` is 0-based. `score` is the student AP minus TIE_BREAK times
    the student's training heatmap loss: early in training many trials share an AP (often
    0.0), and ASHA stops no trial that merely ties its rung's cutoff, so a search would
    otherwise spend its whole budget before the AP separates the trials.
    """

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        first = metrics[0]
        student_loss = float(first.get("pose_loss_cycle1", first.get("loss", 0.0)))
        # a diverged (NaN) loss takes the full penalty: a NaN score never falls below ASHA's
        # cutoff, and the trial would run to max_epochs
        penalty = min(student_loss, 1.0) if math.isfinite(student_loss) else 1.0
        extra = {
            EPOCHS_DONE: int(first["epoch"]) + 1,
            SCORE: first["student_ap"] - TIE_BREAK * penalty,
        }
        extra |= recorded_worker_group()
        super().after_report(run_context, [{**first, **extra}, *metrics[1:]], checkpoint)
