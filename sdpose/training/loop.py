"""The per-worker Ray Train loop: get_dataset_shard -> iter_torch_batches -> prepare_model ->
report(metrics, checkpoint), once per epoch, and nothing hidden.

Every worker runs `train_loop_per_worker`. It restores the latest checkpoint when Ray hands
one over (after a worker failure, or when a run is resumed under the same name), trains one
epoch on its shard of the train split with every loss term summed, validates the student
and the teacher, and reports. Rank 0 writes the checkpoint: model, optimiser, schedule,
AMP scaler, epoch, best AP, the resolved params, and the history rows so far, so that a
restored run records each epoch exactly once.

Shapes: N batch, K keypoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from sdpose import console
from sdpose.config import Params
from sdpose.core.codecs import Codec, codec_for_labels
from sdpose.core.inputs import normalize_tensor
from sdpose.models.checkpoint import unwrap
from sdpose.training import validate
from sdpose.training.checkpoints import Progress, cpu_copy, report, restore
from sdpose.training.losses import DistillationLoss, pose_loss_for
from sdpose.training.passes import OpenedPass
from sdpose.training.trainee import Trainee, build_trainee


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; `config`: params (dict), annotations (val GT json path),
    train_rows (crops in the train split: the cosine schedule's length)."""
    params = Params.model_validate(config["params"])
    rank = ray.train.get_context().get_world_rank()
    seed_everything(params.train.seed)
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, math.floor(params.ray.cpus_per_worker)))

    world_size = ray.train.get_context().get_world_size()
    per_epoch = iterations_per_epoch(int(config.get("train_rows", 0)), params, world_size)
    checkpoint = ray.train.get_checkpoint()
    # a fresh run's first pass starts up while the model is built (sdpose.training.passes);
    # a restored one opens its pass once it knows that epochs are left
    train_pass = open_train_pass(params, world_size) if checkpoint is None else None
    # train.init's weights start a fresh run only; a restored one continues its own
    init = config.get("init") if checkpoint is None else None
    trainee = build_trainee(params, device, per_epoch * params.train.epochs, init_path=init)
    best_state: dict[str, torch.Tensor] | None = None
    progress = Progress()
    annotations = Path(config["annotations"])
    # rank 0 of a stage's own run talks to the terminal (sdpose.console); a Tune trial's
    # workers do not: the search prints one line per trial
    shown = bool(config.get("console", True)) and rank == 0
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            progress, best_state = restore(trainee, Path(folder), params)
    elif init:
        # what the run starts from, on the same val set: the fine-tuning's gain is measured
        progress.initial = validate_model(trainee, params, annotations)
        if shown:
            console.say(
                f"starting from {params.train.init}: student AP "
                f"{progress.initial['student_ap']:.4f}, teacher AP "
                f"{progress.initial['teacher_ap']:.4f}"
            )
    total_iters = per_epoch * params.train.epochs
    for epoch in range(progress.epoch + 1, params.train.epochs):
        row, train_pass = run_epoch(
            trainee,
            epoch,
            params,
            annotations,
            train_pass or open_train_pass(params, world_size),
            total_iters if shown else 0,
        )
        progress.workers = _all_gather(describe_worker(trainee, rank))
        progress.epoch = epoch
        progress.history.append(row)
        if row["student_ap"] > progress.best_ap:
            progress.best_ap, progress.best_epoch = row["student_ap"], epoch
            best_state = cpu_copy(unwrap(trainee.model).state_dict())
        metrics = {**row, "best_student_ap": progress.best_ap, "restores": progress.restores}
        if shown:
            console.say(epoch_line(progress.history, params.train.epochs))
        report(metrics, trainee, progress, best_state, params, rank)


def run_epoch(
    trainee: Trainee,
    epoch: int,
    params: Params,
    annotations: Path,
    train_pass: OpenedPass[dict[str, torch.Tensor]],
    total_iters: int = 0,
) -> tuple[dict[str, Any], OpenedPass[dict[str, torch.Tensor]] | None]:
    """Train on this worker's pass over its shard, then validate; (history row, next pass).

    The next epoch's pass is opened before validation, so that its start-up overlaps it
    (None after the last epoch). `total_iters` > 0: a progress bar over the run's
    iterations (sdpose.console).
    """
    world_size = ray.train.get_context().get_world_size()
    loss_fn = distillation_loss(params)
    batches: Iterator[dict[str, torch.Tensor]] = iter(train_pass)
    if total_iters:
        batches = _with_progress(batches, trainee, total_iters)
    row = {"epoch": epoch, **train_epoch(trainee, batches, loss_fn, epoch)}
    row["iterations"] = trainee.schedule.iteration  # optimiser steps so far, the whole run
    next_pass = open_train_pass(params, world_size) if epoch + 1 < params.train.epochs else None
    return row | validate_model(trainee, params, annotations), next_pass


def validate_model(trainee: Trainee, params: Params, annotations: Path) -> dict[str, float]:
    """Student and teacher AP of the model as it is, on the whole validation split.

    Validation is not split by Ray (a split drops rows to even the shards out): every
    worker reads all of it and predicts every world_size-th batch.
    """
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    val_batches = ray.train.get_dataset_shard("val").iter_torch_batches(
        batch_size=per_worker_batch(params, world_size)
    )
    own_share = (batch for index, batch in enumerate(val_batches) if index % world_size == rank)
    codec = codec_for_labels(params.model.resolve(), params.train)
    return validate_epoch(trainee, own_share, codec, params, annotations)


def open_train_pass(params: Params, world_size: int) -> OpenedPass[dict[str, torch.Tensor]]:
    """Start this worker's next pass over its train shard (Ray Data's next execution)."""
    shard = ray.train.get_dataset_shard("train")
    return OpenedPass(shard.iter_torch_batches(batch_size=per_worker_batch(params, world_size)))


def per_worker_batch(params: Params, world_size: int) -> int:
    """Each worker's share of `train.batch_size` (DDP sums the gradients of the shares)."""
    return max(1, params.train.batch_size // world_size)


def distillation_loss(params: Params) -> DistillationLoss:
    """The head's loss on every cycle and the token distillation between them, as `train`
    sets."""
    return DistillationLoss(
        token_weight=params.train.token_distill_weight,
        heatmap_distill_weight=params.train.heatmap_distill_weight,
        detach_teacher=params.train.detach_teacher,
        use_joint_weights=params.train.use_joint_weights,
        pose_loss=pose_loss_for(params.model.resolve(), params.train),
    )


def epoch_line(history: list[dict[str, Any]], epochs: int) -> str:
    """`epoch 3/6  loss ...  student AP ...  teacher AP ...  samples/s  ~40 s left`."""
    row = history[-1]
    seconds = [r["epoch_time_s"] + r.get("val_time_s", 0.0) for r in history]
    left = (epochs - row["epoch"] - 1) * sum(seconds) / len(seconds)
    return (
        f"epoch {row['epoch'] + 1}/{epochs}  loss {row['loss']:.5f}  "
        f"student AP {row['student_ap']:.4f}  teacher AP {row['teacher_ap']:.4f}  "
        f"{row['samples_per_s']:.1f} samples/s  ~{left:.0f} s left"
    )


def _with_progress(
    batches: Iterator[dict[str, torch.Tensor]], trainee: Trainee, total: int, every_s: float = 2.0
) -> Iterator[dict[str, torch.Tensor]]:
    """The batches, with a progress line at most every `every_s` (they travel through Ray)."""
    shown_at = 0.0
    for batch in batches:
        yield batch
        if (now := time.monotonic()) - shown_at >= every_s:
            console.progress("train iterations", trainee.schedule.iteration, total)
            shown_at = now


def seed_everything(seed: int) -> None:
    """Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def iterations_per_epoch(train_rows: int, params: Params, world_size: int) -> int:
    """Optimiser steps per epoch on each worker: its share of the rows, in per-worker batches."""
    return math.ceil(math.ceil(train_rows / world_size) / per_worker_batch(params, world_size))


def train_epoch(
    trainee: Trainee,
    batches: Iterator[dict[str, torch.Tensor]],
    loss_fn: DistillationLoss,
    epoch: int,
) -> dict[str, float]:
    """One pass over this worker's shard; loss terms averaged over every worker's samples.

    Batches are the train feed's: uint8 BGR images, normalised here on the device.

    `data_wait_s` is the time spent waiting for the next batch (the feed starving the step),
    the slowest worker's; near 0 means the feed keeps up.
    """
    trainee.model.train()
    trainee.schedule.start_epoch(epoch)
    sums: dict[str, float] = defaultdict(float)
    samples, lr = 0, trainee.schedule.current_lr
    started = time.perf_counter()
    waited = _Waited(batches)
    for batch in waited:
        lr = trainee.schedule.before_iteration()
        images = normalize_tensor(batch["images"].to(trainee.device, non_blocking=True))
        target = batch["target"].to(trainee.device, non_blocking=True)
        target_weight = batch["target_weight"].to(trainee.device, non_blocking=True)
        with torch.autocast(trainee.device.type, dtype=torch.float16, enabled=trainee.amp):
            terms = loss_fn(trainee.model(images), target, target_weight)
        trainee.optimizer.zero_grad(set_to_none=True)
        trainee.scaler.scale(terms["loss"]).backward()
        trainee.scaler.step(trainee.optimizer)
        trainee.scaler.update()
        count = len(images)
        samples += count
        for name, value in terms.items():
            sums[name] += float(value.detach()) * count
    elapsed = time.perf_counter() - started
    return _global_means(dict(sums), samples, elapsed, lr, waited.seconds)


class _Waited:
    """An iterator of batches that adds up the time spent waiting for each one."""

    def __init__(self, batches: Iterator[dict[str, torch.Tensor]]) -> None:
        self._batches = iter(batches)
        self.seconds = 0.0

    def __iter__(self) -> _Waited:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        started = time.perf_counter()
        try:
            return next(self._batches)
        finally:
            self.seconds += time.perf_counter() - started


def _global_means(
    sums: dict[str, float], samples: int, elapsed: float, lr: float, waited: float = 0.0
) -> dict[str, float]:
    """Sample-weighted means over all workers; samples/s over the slowest worker's time."""
    shares = _all_gather((sums, samples, elapsed, waited))
    total = sum(share[1] for share in shares)
    slowest = max(share[2] for share in shares)
    names = sorted({name for share in shares for name in share[0]})
    means = {
        name: sum(share[0].get(name, 0.0) for share in shares) / max(total, 1) for name in names
    }
    return {
        **means,
        "lr": lr,
        "samples": total,
        "samples_per_s": total / max(slowest, 1e-9),
        "epoch_time_s": slowest,
        "data_wait_s": max(share[3] for share in shares),
    }


def validate_epoch(
    trainee: Trainee,
    batches: Iterator[dict[str, torch.Tensor]],
    codec: Codec,
    params: Params,
    annotations: Path,
) -> dict[str, float]:
    """Student (cycle 1) and teacher (last cycle) AP over the whole validation split."""
    started = time.perf_counter()
    model = unwrap(trainee.model)
    found = validate.predict_batches(model, batches, codec, params.evaluate, model.config.cycles)
    merged = {role: validate.Predictions() for role in validate.ROLES}
    for share in _all_gather(found):
        for role in validate.ROLES:
            merged[role].extend(share[role])
    # Every rank scores the same merged predictions (deterministic, a few ms on small splits)
    # instead of broadcasting rank 0's figures: one collective fewer to go wrong.
    with _prints_silenced():
        scores = {
            f"{role}_ap": validate.coco_ap(merged[role], annotations, params.evaluate)["AP"]
            for role in validate.ROLES
        }
    return {**scores, "val_time_s": time.perf_counter() - started}


@contextlib.contextmanager
def _prints_silenced() -> Iterator[None]:
    """Drop pycocotools' console chatter inside Ray Train workers.

    Train V2 turns `print` into INFO records of the root logger (contextlib's stdout
    redirection no longer catches them), so the root logger is raised for the duration.
    """
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(level)


def describe_worker(trainee: Trainee, rank: int) -> dict[str, Any]:
    """Where this rank runs and a digest of its weights: equal digests = DDP kept ranks in step.

    Parameters only: BatchNorm statistics are per rank between DDP's buffer broadcasts.
    """
    digest = hashlib.sha256()
    for parameter in unwrap(trainee.model).parameters():
        digest.update(parameter.detach().cpu().numpy().tobytes())
    context = ray.get_runtime_context()
    return {"rank": rank, "node_id": context.get_node_id(), "weights_sha256": digest.hexdigest()}


def _all_gather(value: Any) -> list[Any]:
    """Every rank's `value` (a list of one without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
