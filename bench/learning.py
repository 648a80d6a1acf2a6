"""Which head and loss learn fastest? AP against iterations and seconds, from scratch,
side by side.

Every variant (VARIANTS: the paper's heatmap MSE, the foreground-weighted heatmap MSE,
SimCC with RTMPose's KL loss) trains through the real `sdpose train` path (crop shards ->
Ray Data augmentation -> Ray Train workers, validation every epoch: student and teacher AP
with the project's COCO evaluation on ground-truth boxes) from scratch (`train.init:
scratch`, SCRATCH_RECIPE's lr and schedule), on one synthetic dataset built once under
--workdir, with params.yaml's other settings plus the overrides given, for the same epochs
and seeds. Screen with one seed; confirm a winner with three (--seeds 0 1 2) where the
curves separate.

Prints one line per evaluation point (variant, seed, epoch, iterations, wall seconds of
training and validation, student and teacher AP), then per variant the time to first reach
AP 0.05 and the final AP (mean and spread over seeds), and writes learning_curve.csv and
learning_curve.png under --out (default WORKDIR/reports). Resumable run by run: each
finished run is appended to WORKDIR/runs.jsonl, and a restarted bench with the same
settings trains only the runs that are missing.

Usage: python bench/learning.py [--variants simcc heatmap heatmap-fg] [--epochs 16]
       [--train-images 4000] [--val-images 200] [--seeds 0] [--set key=value ...]
       [--workdir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dataset_cache import build_dataset
from run_log import finished_runs, record_run, run_key

from sdpose.config import load_params, parse_override

FIRST_AP = 0.05  # "has left the flat plateau"
# params.yaml fine-tunes the shipped weights (lr 2e-4, short warmup); from scratch every
# variant trains with the recipe that made them (docs/pretrained.md).
SCRATCH_RECIPE: dict[str, Any] = {
    "train.init": "scratch",
    "train.lr": 1e-3,
    "train.warmup_iters": 300,
    "train.lr_schedule": "cosine",
}
# name -> the overrides that make the variant (everything else is shared)
VARIANTS: dict[str, dict[str, Any]] = {
    "simcc": {"model.head": "simcc"},
    "heatmap": {"model.head": "heatmap", "train.heatmap_foreground_weight": 1.0},
    "heatmap-fg": {"model.head": "heatmap", "train.heatmap_foreground_weight": 10.0},
}


def train_curve(root: Path, overrides: dict[str, Any], seed: int) -> list[dict[str, float]]:
    """One `sdpose train` run in its own folder (data shared by symlink); its history rows
    with the cumulative seconds (training plus validation) added."""
    from sdpose.training.history import read_history_csv
    from sdpose.training.stage import run

    workdir = Path(tempfile.mkdtemp(prefix="learning-", dir=root))
    try:
        (workdir / "data").symlink_to(root / "data")
        params = load_params(root / "params.yaml", {**overrides, "train.seed": seed})
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


def write_curves(curves: dict[tuple[str, int], list[dict[str, float]]], out: Path) -> list[Path]:
    """learning_curve.csv (one row per variant, seed and evaluation point) and its PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    table = out / "learning_curve.csv"
    columns = ["variant", "seed", "epoch", "iterations", "seconds", "student_ap", "teacher_ap",
               "pose_loss_cycle1"]  # fmt: skip
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for (variant, seed), rows in curves.items():
            writer.writerows({**row, "variant": variant, "seed": seed} for row in rows)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colours = {name: f"C{index}" for index, name in enumerate(VARIANTS)}
    for (variant, seed), rows in curves.items():
        for axis, x in zip(axes, ("iterations", "seconds"), strict=True):
            axis.plot(
                [row[x] for row in rows],
                [row["student_ap"] for row in rows],
                "o-",
                color=colours.get(variant),
                alpha=0.85,
                label=f"{variant}, seed {seed}",
            )
    axes[0].set_xlabel("iterations")
    axes[1].set_xlabel("seconds (training + validation)")
    axes[0].set_ylabel("student AP (synthetic val, ground-truth boxes)")
    for axis in axes:
        axis.axhline(FIRST_AP, color="grey", linewidth=0.8, linestyle=":")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    picture = out / "learning_curve.png"
    figure.savefig(picture, dpi=110)
    plt.close(figure)
    return [table, picture]


def summary_lines(curves: dict[tuple[str, int], list[dict[str, float]]]) -> list[str]:
    """Per variant: when AP 0.05 was first reached, the final and best AP over the seeds."""
    lines = [f"{'variant':<12} {'seeds':>5} {'AP 0.05 after':>18} {'final AP':>9} "
             f"{'spread':>7} {'best AP':>8} {'seconds':>8}"]  # fmt: skip
    for variant in dict.fromkeys(name for name, _ in curves):
        runs = [rows for (name, _), rows in curves.items() if name == variant]
        reached = [first_reaching(rows, FIRST_AP) for rows in runs]
        when = (
            f"{statistics.mean(r['seconds'] for r in reached):.0f} s / "
            f"{statistics.mean(r['iterations'] for r in reached):.0f} it"
            if all(reached)
            else f"{sum(1 for r in reached if r)} of {len(runs)} seeds"
        )
        final = [rows[-1]["student_ap"] for rows in runs]
        spread = statistics.stdev(final) if len(final) > 1 else 0.0
        best = max(row["student_ap"] for rows in runs for row in rows)
        seconds = statistics.mean(rows[-1]["seconds"] for rows in runs)
        lines.append(
            f"{variant:<12} {len(runs):>5} {when:>18} {statistics.mean(final):>9.4f} "
            f"{spread:>7.4f} {best:>8.4f} {seconds:>8.0f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=16)
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
    shared = {
        "synth.train_images": args.train_images,
        "synth.val_images": args.val_images,
        "train.epochs": args.epochs,
        **SCRATCH_RECIPE,
        **dict(parse_override(text) for text in args.overrides),
    }
    params = load_params(root / "params.yaml", shared)
    print(
        f"{params.model.preset}, {args.epochs} epochs of {args.train_images} synthetic images, "
        f"batch {params.train.batch_size}, lr {params.train.lr} ({params.train.lr_schedule}); "
        f"variants {', '.join(args.variants)}; seeds {args.seeds}",
        flush=True,
    )
    log = root / "runs.jsonl"
    done = finished_runs(log)
    started = time.perf_counter()
    curves: dict[tuple[str, int], list[dict[str, float]]] = {}
    print(f"{'variant':<12} {'seed':>4} {'epoch':>5} {'iters':>6} {'seconds':>8} "
          f"{'student AP':>10} {'teacher AP':>10}")  # fmt: skip
    with ray_session(params.ray):  # one Ray for the dataset and every run
        build_dataset(params, root)
        # seed by seed, so that a stopped bench still holds paired comparisons
        for seed in args.seeds:
            for variant in args.variants:
                overrides = {**shared, **VARIANTS[variant]}
                key = run_key(variant, seed, overrides)
                if key not in done:
                    done[key] = train_curve(root, overrides, seed)
                    record_run(log, key, done[key])
                curves[variant, seed] = done[key]
                for row in done[key]:
                    print(
                        f"{variant:<12} {seed:>4} {int(row['epoch']):>5} "
                        f"{int(row['iterations']):>6} {row['seconds']:>8.0f} "
                        f"{row['student_ap']:>10.4f} {row['teacher_ap']:>10.4f}",
                        flush=True,
                    )
    files = write_curves(curves, args.out or root / "reports")
    print(f"\n{time.perf_counter() - started:.0f} s in all; {', '.join(map(str, files))}")
    print("\n".join(summary_lines(curves)))


if __name__ == "__main__":
    main()
