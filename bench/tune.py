"""Tune stage: trials per hour on this machine and the scheduler's overhead.

Prints
1. trials/hour and epochs/hour of `sdpose.tuning.stage.run` (ASHA, one trial at a time on two
   CPUs: 2 Ray Train workers x 0.5 CPU, one CPU left for Ray Data);
2. where the search's wall time went: inside the trials' own training (epochs and
   validation), in each trial's Ray Train start-up (controller, workers, process group,
   datasets), and in Tune itself (starting trial drivers, results, callbacks, state) =
   the scheduler overhead, goal <= 10% of the wall time;
3. the baseline: the same configs trained for the same epochs by `sdpose.training.stage.run`
   one after another without Tune, and Tune's wall time over theirs;
4. placement groups still holding CPUs after the search (must be 0: a leak stalls the
   next trial, see sdpose/tuning/cleanup.py).

The data are the synth stage's images at a small size, made in a temporary folder.
Usage: python bench/tune.py [--trials 5] [--epochs 3] [--train-images 48] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from sdpose.config import Params, load_params
from sdpose.data import crops, prepare, synth

CPUS = 2
GOAL_OVERHEAD = 0.10


def make_params(workdir: Path, args: argparse.Namespace) -> Params:
    return load_params(
        workdir / "params.yaml",
        {
            "synth.train_images": args.train_images,
            "synth.val_images": 8,
            "synth.max_people": 2,
            "synth.workers": 1,
            "model.preset": "sdpose-nano",
            "model.depth": 1,
            "train.batch_size": 8,
            "train.warmup_iters": 0,
            "evaluate.flip_test": False,
            "ray.num_workers": 2,
            "ray.cpus_per_worker": 0.5,
            "tune.num_samples": args.trials,
            "tune.max_epochs": args.epochs,
            "tune.grace_period": 1,
            "tune.reduction_factor": 2,
            "tune.space": {
                "model.cycles": {"choice": [1, 2]},
                "model.dim": {"choice": [32, 48]},
                "train.lr": {"loguniform": [1e-5, 3e-3]},
            },
        },
    )


def make_data(workdir: Path, params: Params) -> None:
    for stage in (synth, prepare, crops):
        stage.run(params, workdir)


def search(workdir: Path, params: Params) -> dict[str, Any]:
    from sdpose.tuning.stage import run

    run(params, workdir)
    return json.loads((workdir / "metrics" / "tune.json").read_text())


def leaked_placement_groups() -> int:
    from ray.util.placement_group import placement_group_table

    return sum(group["state"] == "CREATED" for group in placement_group_table().values())


def baseline(workdir: Path, params: Params, rows: list[dict[str, Any]]) -> float:
    """Wall seconds of plain `sdpose train` runs of the trials' configs and epochs."""
    from sdpose.training.stage import run as train
    from sdpose.tuning.space import trial_params

    total = 0.0
    for row in rows:
        if row["epochs_run"]:
            started = time.perf_counter()
            train(trial_params(params.to_dict(), row["config"], row["epochs_run"]), workdir)
            total += time.perf_counter() - started
    return total


def report(table: dict[str, Any], leaked: int, baseline_s: float | None) -> None:
    rows = table["trials"]
    wall = table["wall_time_s"]
    trials_s = sum(row["time_s"] or 0.0 for row in rows)
    train_s = sum(row["train_time_s"] for row in rows)
    epochs = sum(row["epochs_run"] for row in rows)
    overhead = (wall - trials_s / table["max_concurrent"]) / wall
    print(f"trials: {len(rows)} ({table['completed']} completed, {table['stopped']} stopped "
          f"by ASHA, {table['failed']} failed), {epochs} epochs, max concurrent "
          f"{table['max_concurrent']}")  # fmt: skip
    print(f"wall time of the search           {wall:8.1f} s")
    print(f"trials per hour                   {len(rows) / wall * 3600:8.1f}")
    print(f"epochs per hour                   {epochs / wall * 3600:8.1f}")
    print(f"  training + validation           {train_s:8.1f} s  {train_s / wall:6.1%}")
    start_up = trials_s - train_s
    print(f"  Ray Train start-up in trials    {start_up:8.1f} s  {start_up / wall:6.1%}")
    verdict = "met" if overhead <= GOAL_OVERHEAD else "MISSED"
    print(f"  Tune scheduler overhead         {wall - trials_s:8.1f} s  {overhead:6.1%}  "
          f"(goal <= {GOAL_OVERHEAD:.0%}: {verdict})")  # fmt: skip
    if baseline_s:
        print(f"baseline: same runs by sdpose train, no Tune  {baseline_s:8.1f} s")
        print(f"ratio Tune / baseline             {wall / baseline_s:8.2f}")
    print(f"placement groups left holding CPUs: {leaked}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-images", type=int, default=48)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sdpose-bench-tune-"))
    try:
        params = make_params(workdir, args)
        ray.init(address="local", num_cpus=CPUS, include_dashboard=True,
                 dashboard_host="127.0.0.1", logging_level="WARNING")  # fmt: skip
        make_data(workdir, params)
        table = search(workdir, params)
        leaked = leaked_placement_groups()
        baseline_s = None if args.no_baseline else baseline(workdir, params, table["trials"])
        report(table, leaked, baseline_s)
    finally:
        ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
