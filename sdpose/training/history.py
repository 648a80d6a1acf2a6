"""Training records: the per-epoch history (CSV), the final summary (JSON), the curves (PNG).

The history travels inside every checkpoint, so after a worker failure or a driver restart
the run continues from the checkpoint's rows: each epoch is recorded exactly once,
whatever was lost with the interrupted attempt.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdpose.core.paths import write_text_atomic

# Leading columns in a fixed order; loss terms (one per cycle) follow, then the rest.
LEADING_COLUMNS = ("epoch", "iterations", "lr", "student_ap", "teacher_ap", "samples_per_s",
                   "epoch_time_s")  # fmt: skip


def history_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Column order: the leading ones, the loss terms sorted by name, anything else."""
    names: list[str] = []
    for row in rows:
        names.extend(name for name in row if name not in names)
    losses = sorted(name for name in names if "loss" in name)
    rest = [name for name in names if name not in LEADING_COLUMNS and name not in losses]
    return [name for name in LEADING_COLUMNS if name in names] + losses + rest


def write_history_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One row per epoch, ordered by epoch (DVC plots read it with x=epoch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rows, key=lambda row: row["epoch"])
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=history_columns(ordered))
        writer.writeheader()
        writer.writerows(ordered)


def read_history_csv(path: Path) -> list[dict[str, float]]:
    """The rows back as numbers (epoch as int); for tests and reports."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {name: int(value) if name == "epoch" else float(value) for name, value in row.items()}
        for row in rows
    ]


def write_json(summary: dict[str, Any], path: Path) -> None:
    write_text_atomic(path, json.dumps(summary, indent=2, sort_keys=True) + "\n")


def plot_history(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Two panels: every loss term (log scale) and the student and teacher AP per epoch."""
    import matplotlib  # lazy: matplotlib costs 0.6 s and picks its backend at import

    matplotlib.use("Agg")  # no display on servers and in Ray workers
    import matplotlib.pyplot as plt  # lazy: matplotlib costs 0.6 s and picks its backend at import

    ordered = sorted(rows, key=lambda row: row["epoch"])
    epochs = [row["epoch"] for row in ordered]
    figure, (loss_axis, ap_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name in history_columns(ordered):
        values = [row.get(name) for row in ordered]
        if "loss" in name and all(value is not None and value > 0 for value in values):
            loss_axis.plot(epochs, values, marker=".", label=name)
    loss_axis.set(xlabel="epoch", ylabel="loss", yscale="log", title="training losses")
    loss_axis.legend(fontsize=7)
    for name, label in (("student_ap", "student (1 cycle)"), ("teacher_ap", "teacher (last)")):
        ap_axis.plot(epochs, [row.get(name) for row in ordered], marker="o", label=label)
    ap_axis.set(xlabel="epoch", ylabel="COCO AP", title="validation AP")
    ap_axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
