"""Does self-distillation help? One-cycle baseline against the SDPose student, 3 seeds each.

Trains, with the real `train` stage (Ray Train), on one synthetic dataset:
- `tokenpose-nano`: the one-cycle baseline (same layers, no cycles, no distillation),
- `sdpose-nano` with 2 cycles and with 3 cycles (the student is cycle 1 of those),
with the same epochs, data and seeds (train.seed = 0, 1, 2: initialisation and
augmentation), then prints the student AP of every run and each configuration's mean and
spread (sample standard deviation), plus the teacher AP and the student's (cycle 1) final
heatmap loss, which moves long before AP leaves 0 on a short budget. The student costs the
same at inference in every row, so any AP difference is what the cycles bought in training.

Resumable run by run: every finished run is appended to DIR/runs.jsonl with the settings
it was made with; a restarted benchmark with the same settings skips those runs and
trains only the missing ones (a stopped run is trained again from its start).

Usage: python bench/ablation.py [--epochs 8] [--train-images 3000] [--val-images 200]
       [--seeds 0 1 2] [--workdir DIR]   (the dataset is built once under DIR/data)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dataset_cache import build_dataset
from run_log import finished_runs, record_run, run_key

from sdpose.config import load_params

# (label, model overrides): the baseline first
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("tokenpose-nano (1 cycle)", {"model.preset": "tokenpose-nano"}),
    ("sdpose-nano, 2 cycles", {"model.preset": "sdpose-nano", "model.cycles": 2}),
    ("sdpose-nano, 3 cycles", {"model.preset": "sdpose-nano", "model.cycles": 3}),
]


def base_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Data and budget shared by every run; the recipe is params.yaml's."""
    return {
        "synth.train_images": args.train_images,
        "synth.val_images": args.val_images,
        "train.epochs": args.epochs,
    }


def train_once(root: Path, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    """One run of the train stage in its own working directory (data shared by symlink)."""
    from sdpose.training.history import read_history_csv
    from sdpose.training.stage import run

    workdir = Path(tempfile.mkdtemp(prefix="ablation-", dir=root))
    try:
        (workdir / "data").symlink_to(root / "data")
        params = load_params(workdir / "params.yaml", {**overrides, "train.seed": seed})
        summary = run(params, workdir)
        last = read_history_csv(workdir / "metrics" / "train_history.csv")[-1]
        return summary | {"student_loss": last["pose_loss_cycle1"]}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sdpose-ablation"))
    args = parser.parse_args()

    from sdpose.ray_runtime import ray_session

    root = args.workdir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile("params.yaml", root / "params.yaml")  # the project's recipe
    shared = base_overrides(args)
    params = load_params(root / "params.yaml", shared)
    log = root / "runs.jsonl"
    done = finished_runs(log)
    started = time.perf_counter()
    rows: list[tuple[str, list[dict[str, Any]]]] = [(label, []) for label, _ in CONFIGS]
    with ray_session(params.ray):  # one Ray for the dataset and all nine runs
        build_dataset(params, root)
        # seed by seed, so that a stopped benchmark still holds paired comparisons
        for seed in args.seeds:
            for (label, model), (_, runs) in zip(CONFIGS, rows, strict=True):
                key = run_key(label, seed, {**shared, **model})
                resumed = key in done
                if not resumed:
                    done[key] = train_once(root, {**shared, **model}, seed)
                    record_run(log, key, done[key])
                last = done[key]
                runs.append(last)
                source = f"from {log.name}" if resumed else f"{last['wall_time_s']:.0f} s"
                print(
                    f"seed {seed} {label:<26} student AP {last['student_ap']:.4f} "
                    f"teacher AP {last['teacher_ap']:.4f} student loss {last['student_loss']:.6f}"
                    f" ({source})",
                    flush=True,
                )

    seconds = time.perf_counter() - started
    print(
        f"\n{args.epochs} epochs, {args.train_images} train / {args.val_images} val images, "
        f"seeds {args.seeds}, {seconds:.0f} s in all"
    )
    print_table(rows)


def print_table(rows: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """Mean and spread of the student AP per configuration, against the first (baseline)."""
    print(
        f"{'configuration':<26} {'student AP':>10} {'spread':>7} {'vs base':>8} "
        f"{'teacher AP':>10} {'student loss':>12}"
    )
    baseline = statistics.mean(run["student_ap"] for run in rows[0][1])
    for label, runs in rows:
        student = [run["student_ap"] for run in runs]
        mean = statistics.mean(student)
        teacher = statistics.mean(run["teacher_ap"] for run in runs)
        loss = statistics.mean(run["student_loss"] for run in runs)
        print(
            f"{label:<26} {mean:>10.4f} {spread(student):>7.4f} {mean - baseline:>+8.4f} "
            f"{teacher:>10.4f} {loss:>12.6f}"
        )


if __name__ == "__main__":
    main()
