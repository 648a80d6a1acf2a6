"""How fast does the model learn? AP against iterations and seconds, from scratch.

Trains through the real `sdpose train` path (crop shards -> Ray Data augmentation -> Ray
Train workers, validation every epoch: student and teacher AP with the project's COCO
evaluation on ground-truth boxes) on a synthetic dataset built once under --workdir, with
params.yaml's recipe plus the overrides given. Prints one line per evaluation point
(epoch, iterations, wall seconds of training and validation, student and teacher AP), the
time to first reach AP 0.05, and writes reports/learning_curve.csv and .png under
--workdir (or --out). Several --seeds draw one curve each; the table gives every seed.

Usage: python bench/learning.py [--epochs 12] [--train-images 4000] [--val-images 200]
       [--seeds 0] [--set key=value ...] [--workdir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from dataset_cache import build_dataset

from sdpose.config import load_params, parse_override

FIRST_AP = 0.05  # "has left the flat-heatmap plateau"


def train_curve(root: Path, overrides: dict[str, Any], seed: int) -> list[dict[str, float]]:
    """One `sdpose train` run in its own folder (data shared by symlink); its history rows
    with the cumulative seconds (training plus validation) added."""
    from sdpose.training import run
    from sdpose.training.history import read_history_csv

    workdir = Path(tempfile.mkdtemp(prefix="learning-", dir=root))
    try:
        (workdir / "data").symlink_to(root / "data")
        params = load_params(workdir / "params.yaml", {**overrides, "train.seed": seed})
        run(params, workdir)
        rows = read_history_csv(workdir / "metrics" / "train_history.csv")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = 0.0
    for row in rows:
        elapsed += row["epoch_time_s"] + row.get("val_time_s", 0.0)
        row["seconds"] = elapsed
    return rows


def first_reaching(rows: list[dict[str, float]], threshold: float) -> dict[str, float] | None:
    """The first evaluation point whose student AP is at least `threshold`."""
    return next((row for row in rows if row["student_ap"] >= threshold), None)


def write_curves(curves: dict[int, list[dict[str, float]]], out: Path) -> tuple[Path, Path]:
    """reports/learning_curve.csv (one row per seed and evaluation point) and its PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    table = out / "learning_curve.csv"
    columns = ["seed", "epoch", "iterations", "seconds", "student_ap", "teacher_ap",
               "pose_loss_cycle1"]  # fmt: skip
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for seed, rows in curves.items():
            writer.writerows({**row, "seed": seed} for row in rows)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for seed, rows in curves.items():
        for axis, x in zip(axes, ("iterations", "seconds"), strict=True):
            xs = [row[x] for row in rows]
            axis.plot(xs, [row["student_ap"] for row in rows], "o-", label=f"student, seed {seed}")
            axis.plot(xs, [row["teacher_ap"] for row in rows], "x--", label=f"teacher, seed {seed}")
    axes[0].set_xlabel("iterations")
    axes[1].set_xlabel("seconds (training + validation)")
    axes[0].set_ylabel("COCO AP (synthetic val, ground-truth boxes)")
    for axis in axes:
        axis.axhline(FIRST_AP, color="grey", linewidth=0.8, linestyle=":")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    picture = out / "learning_curve.png"
    figure.savefig(picture, dpi=110)
    plt.close(figure)
    return table, picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="a params.yaml override, repeatable")  # fmt: skip
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sdpose-learning"))
    parser.add_argument("--out", type=Path, default=None, help="default: WORKDIR/reports")
    args = parser.parse_args()

    from sdpose.ray_runtime import ray_session

    root = args.workdir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if args.params.exists():
        shutil.copyfile(args.params, root / "params.yaml")  # the recipe under test
    overrides = {
        "synth.train_images": args.train_images,
        "synth.val_images": args.val_images,
        "train.epochs": args.epochs,
        **dict(parse_override(text) for text in args.overrides),
    }
    params = load_params(root / "params.yaml", overrides)
    model = params.model.resolve()
    print(
        f"{model.name}: input {list(model.input_size)}, heatmaps {list(model.heatmap_size)}, "
        f"{model.cycles} cycles; batch {params.train.batch_size}, lr {params.train.lr} "
        f"({params.train.lr_schedule}), sigma {params.train.sigma}; {args.epochs} epochs of "
        f"{args.train_images} synthetic images",
        flush=True,
    )
    started = time.perf_counter()
    curves: dict[int, list[dict[str, float]]] = {}
    with ray_session(params.ray):  # one Ray for the dataset and every run
        build_dataset(params, root)
        for seed in args.seeds:
            curves[seed] = train_curve(root, overrides, seed)
            print(f"\nseed {seed}")
            print(
                f"{'epoch':>5} {'iters':>6} {'seconds':>8} {'student AP':>10} {'teacher AP':>10}"
                f" {'student loss':>12}"  # the cycle-1 heatmap MSE: moves long before AP does
            )
            for row in curves[seed]:
                print(
                    f"{int(row['epoch']):>5} {int(row['iterations']):>6} {row['seconds']:>8.0f} "
                    f"{row['student_ap']:>10.4f} {row['teacher_ap']:>10.4f} "
                    f"{row['pose_loss_cycle1']:>12.6f}",
                    flush=True,
                )
    table, picture = write_curves(curves, args.out or root / "reports")
    print(f"\n{time.perf_counter() - started:.0f} s in all (dataset included); {table}, {picture}")
    for seed, rows in curves.items():
        reached = first_reaching(rows, FIRST_AP)
        when = (
            f"after {reached['seconds']:.0f} s ({int(reached['iterations'])} iterations)"
            if reached
            else "never"
        )
        best = max(rows, key=lambda row: row["student_ap"])
        print(
            f"seed {seed}: student AP {FIRST_AP} reached {when}; final student AP "
            f"{rows[-1]['student_ap']:.4f} (best {best['student_ap']:.4f}), teacher AP "
            f"{rows[-1]['teacher_ap']:.4f}, {rows[-1]['seconds']:.0f} s of training"
        )


if __name__ == "__main__":
    main()
