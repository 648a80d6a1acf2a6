"""Training records: the history CSV keeps one row per epoch in epoch order, columns fixed."""

from __future__ import annotations

import csv

import cv2
import pytest

from sdpose.training.history import (
    history_columns,
    plot_history,
    read_history_csv,
    write_history_csv,
)

pytestmark = pytest.mark.unit


def _row(epoch: int, cycles: int = 2) -> dict[str, float]:
    row = {"epoch": epoch, "student_ap": 0.1 * epoch, "teacher_ap": 0.2 * epoch, "lr": 1e-3}
    row |= {f"pose_loss_cycle{c}": 1.0 / (epoch + c) for c in range(1, cycles + 1)}
    return row | {"loss": 2.0 / (epoch + 1), "samples_per_s": 10.0, "val_time_s": 1.5}


def test_columns_lead_with_epoch_then_sorted_losses_then_the_rest() -> None:
    columns = history_columns([_row(0)])
    assert columns[:4] == ["epoch", "lr", "student_ap", "teacher_ap"]
    losses = [name for name in columns if "loss" in name]
    assert losses == sorted(losses) and columns.index("val_time_s") > columns.index(losses[-1])


def test_csv_round_trip_orders_rows_by_epoch(tmp_path) -> None:
    path = tmp_path / "metrics" / "train_history.csv"
    rows = [_row(2), _row(0), _row(1)]  # a restored run appends; order must not matter
    write_history_csv(rows, path)
    back = read_history_csv(path)
    assert [row["epoch"] for row in back] == [0, 1, 2]
    assert back[1] == pytest.approx(_row(1))
    with path.open() as handle:
        assert next(csv.reader(handle))[0] == "epoch"  # DVC plots: x = epoch


def test_plot_draws_the_rows_it_is_given(tmp_path) -> None:
    """The PNG decodes, has curves on it, and changes when the history does."""
    rising, falling = tmp_path / "rising.png", tmp_path / "falling.png"
    plot_history([_row(0), _row(1), _row(2)], rising)
    flipped = [_row(2) | {"epoch": 0}, _row(1), _row(0) | {"epoch": 2}]
    plot_history(flipped, falling)
    images = [cv2.imread(str(path)) for path in (rising, falling)]
    for image in images:
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 200
        drawn = (image < 200).any(axis=2).mean()  # axes, labels and curves on white
        assert 0.01 < drawn < 0.5
        coloured = (image.max(axis=2).astype(int) - image.min(axis=2)) > 60
        assert coloured.sum() > 100  # the curves are coloured lines, not only black axes
    assert images[0].shape == images[1].shape and (images[0] != images[1]).any()
