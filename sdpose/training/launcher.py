"""The `train` stage: a Ray Train TorchTrainer over the crops, and the files it leaves behind.

The same call trains on two CPU cores or a GPU cluster: `ray.num_workers`, `ray.use_gpu`
and `ray.cpus_per_worker` only change the ScalingConfig. Runs live under
`<ray.storage_path>/<run name>` (a local path, NFS, or an s3:// or gs:// URI; shared storage
on a multi-node cluster); the name is stable (RUN_NAME), which is what lets Ray Train V2 hand
the latest registered checkpoint of an interrupted run to the workers when a driver starts it
again (`resume=True`). A fresh run removes the previous run's folder first, so it never
continues by accident. Worker failures are retried from the last checkpoint
`train.max_failures` times; the checkpoint carries the history, so no epoch is lost or
recorded twice.

Outputs (docs/ARCHITECTURE.md's stage table): models/train/{best.pt, last.pt, config.json},
metrics/train.json, metrics/train_history.csv, reports/train_curves.png.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from sdpose.config import Params
from sdpose.core.errors import MissingInputError
from sdpose.core.paths import (
    REPORTS_DIR,
    TRAIN_HISTORY,
    TRAIN_METRICS,
    TRAIN_MODELS,
    resolve,
    split_paths,
)
from sdpose.core.provenance import code_version
from sdpose.data import feed
from sdpose.ray_runtime import ray_session
from sdpose.training.checkpoints import BEST_FILE, STATE_FILE, load_state
from sdpose.training.history import plot_history, write_history_csv, write_json
from sdpose.training.init import resolve_init
from sdpose.training.loop import train_loop_per_worker
from sdpose.training.rendezvous import torch_config
from sdpose.training.storage import RunStorage

RUN_NAME = "sdpose-train"


@dataclass(frozen=True)
class TrainPaths:
    """Every file the stage reads or writes, resolved against the working directory."""

    annotations: Path
    run: RunStorage
    models: Path
    metrics: Path
    history: Path
    curves: Path

    @classmethod
    def under(cls, workdir: Path, params: Params) -> TrainPaths:
        workdir = Path(workdir).resolve()
        annotations, _ = split_paths(params.data.source, params.data.root, "val")
        return cls(
            annotations=resolve(workdir, annotations),
            run=RunStorage.of(params.ray.storage_path, RUN_NAME, workdir),
            models=workdir / TRAIN_MODELS,
            metrics=workdir / TRAIN_METRICS,
            history=workdir / TRAIN_HISTORY,
            curves=workdir / REPORTS_DIR / "train_curves.png",
        )


def run(
    params: Params,
    workdir: Path,
    resume: bool = False,
    placement_strategy: str = "PACK",
) -> dict[str, Any]:
    """Train (or resume) the run; write the outputs; return the summary of metrics/train.json.

    `placement_strategy` is Ray's: PACK fills a node before the next, SPREAD puts workers
    on different nodes (one worker per machine).
    """
    workdir = Path(workdir).resolve()
    paths = TrainPaths.under(workdir, params)
    _check_annotations(paths)
    resolve_init(params, workdir)  # a train.init that cannot start this run: before Ray
    code = code_version()  # at the start: the code may change while a long run trains
    latest = paths.run.latest_checkpoint() if resume else None
    last_epoch = latest[0] if latest else -1
    if latest is None:  # a fresh run: never continue an old one by accident
        paths.run.remove()
    started = time.perf_counter()
    ray_info: dict[str, Any] = {}
    if latest is not None and last_epoch + 1 >= params.train.epochs:  # it had finished
        with latest[1].as_directory() as folder:
            summary = outputs_from_checkpoint(Path(folder), paths, params)
    else:
        summary, ray_info = train(params, workdir, paths, last_epoch + 1, placement_strategy)
    summary |= {
        "code": code,  # which code trained it (shipped weights' cards cite it)
        "wall_time_s": time.perf_counter() - started,
        "resumed_after_epoch": last_epoch if last_epoch >= 0 else None,
        "run_dir": str(paths.run),
        "dashboard_url": ray_info.get("dashboard_url", ""),
        "ray_address": ray_info.get("address", ""),
    }
    write_json(summary, paths.metrics)
    return summary


def train(
    params: Params, workdir: Path, paths: TrainPaths, first_epoch: int, placement_strategy: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the TorchTrainer, write the outputs of its last checkpoint; (summary, Ray info)."""

    with ray_session(params.ray) as ray_info:
        if ray_info.get("dashboard_url"):
            print(f"Ray dashboard: {ray_info['dashboard_url']}", file=sys.stderr, flush=True)
        trainer = build_trainer(params, workdir, paths, first_epoch, placement_strategy)
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{paths.run}: the run finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        return outputs_from_checkpoint(Path(folder), paths, params), ray_info


def _check_annotations(paths: TrainPaths) -> None:
    if not paths.annotations.is_file():
        raise MissingInputError(
            f"{paths.annotations}: validation annotations not found (data.root); "
            "the train stage scores COCO AP against them"
        )


def build_trainer(
    params: Params,
    workdir: Path,
    paths: TrainPaths,
    first_epoch: int = 0,
    placement_strategy: str = "PACK",
    callbacks: list | None = None,
    console: bool = True,
):
    """The TorchTrainer: gloo on CPU, NCCL on GPU, the train split sharded across workers.

    `first_epoch` seeds the augmentation of the first pass (the feed counts passes on);
    `callbacks` are Ray Train run callbacks (Tune's report callback inside a trial);
    `console`: rank 0 prints epoch lines and a progress bar (off inside a Tune trial).
    """

    init = resolve_init(params, workdir)
    resources = {"CPU": params.ray.cpus_per_worker}
    if params.ray.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "params": params.to_dict(),
            "annotations": str(paths.annotations),
            "train_rows": feed.split_rows(workdir, "train"),
            "console": console,
            "init": str(init.path) if init else None,
        },
        torch_config=torch_config("nccl" if params.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=params.ray.num_workers,
            use_gpu=params.ray.use_gpu,
            resources_per_worker=resources,
            placement_strategy=placement_strategy,
        ),
        run_config=RunConfig(
            name=paths.run.name,
            storage_path=paths.run.storage_uri,
            failure_config=FailureConfig(max_failures=params.train.max_failures),
            # the latest checkpoint (for restarts) and one before it, in case the latest is
            # being written when a node dies; the best student travels in every checkpoint
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
        datasets={
            "train": feed.train_dataset(params, workdir, epoch=first_epoch),
            "val": feed.validation_feed(params, workdir),
        },
        dataset_config=DataConfig(
            datasets_to_split=["train"],
            execution_options={"train": feed.ingest_options(params)},  # the read-ahead budget
        ),
    )


def outputs_from_checkpoint(folder: Path, paths: TrainPaths, params: Params) -> dict[str, Any]:
    """models/train, the history CSV and curves; returns the summary (without timings)."""
    state, progress = load_state(folder)
    paths.models.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / BEST_FILE, paths.models / BEST_FILE)
    shutil.copyfile(folder / STATE_FILE, paths.models / "last.pt")
    config = {"model": state["config"], "params": params.to_dict(), "run_name": RUN_NAME}
    (paths.models / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    history = progress.history
    write_history_csv(history, paths.history)
    plot_history(history, paths.curves)
    final = history[-1]
    train_time = sum(row["epoch_time_s"] for row in history)
    initial = progress.initial or {}
    return {
        "init": params.train.init,
        "initial_student_ap": initial.get("student_ap"),
        "epochs": len(history),
        "student_ap": final["student_ap"],
        "teacher_ap": final["teacher_ap"],
        "best_student_ap": progress.best_ap,
        "best_epoch": progress.best_epoch,
        # over the training passes (validation apart), as bench/train.py measures the path
        "samples_per_s": sum(row["samples"] for row in history) / max(train_time, 1e-9),
        "train_time_s": train_time,
        "data_wait_s": sum(row.get("data_wait_s", 0.0) for row in history),
        "restores": progress.restores,
        "nodes": len({worker["node_id"] for worker in progress.workers}),
        "num_workers": params.ray.num_workers,
        "model": state["config"]["name"],
        "cycles": state["config"]["cycles"],
    }
