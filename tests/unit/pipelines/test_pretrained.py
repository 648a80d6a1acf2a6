"""`sdpose pretrained ship`: a training run's best student goes into the weights folder with
a card that records every leg and the AP measured on the run's val and on another seed's,
and `train.init` can start from it (the checksum in the index is the file's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.pretrained import plot_curves, ship
from sdpose.config import Params
from sdpose.core.paths import CROPS_DIR, TRAIN_HISTORY, TRAIN_METRICS, TRAIN_MODELS
from sdpose.data import synth
from sdpose.models import build_model
from sdpose.models.checkpoint import save_checkpoint
from sdpose.models.pretrained import file_sha256, shipped
from sdpose.training.history import write_history_csv, write_json

pytestmark = pytest.mark.unit

SYNTH = {"train_images": 2, "val_images": 3, "max_people": 2, "workers": 1}


def training_run(folder: Path, init: str = "scratch") -> Path:
    """What `sdpose train` leaves in a workdir: best.pt, config.json, train.json, history."""
    params = Params.model_validate({"synth": SYNTH, "train": {"init": init, "epochs": 2}})
    synth.run(params, folder)
    save_checkpoint(folder / TRAIN_MODELS / "best.pt", build_model("sdpose-nano"), epoch=1)
    (folder / TRAIN_MODELS / "config.json").write_text(json.dumps({"params": params.to_dict()}))
    rows = [
        {"epoch": epoch, "iterations": 10 * (epoch + 1), "epoch_time_s": 60.0,
         "val_time_s": 5.0, "student_ap": 0.1 * epoch, "teacher_ap": 0.1 * epoch}
        for epoch in range(2)
    ]  # fmt: skip
    write_history_csv(rows, folder / TRAIN_HISTORY)
    summary = {"epochs": 2, "best_epoch": 1, "best_student_ap": 0.1, "wall_time_s": 70.0,
               "train_time_s": 130.0, "resumed_after_epoch": 0,
               "samples_per_s": 180.0, "init": init, "initial_student_ap": None,
               "code": {"sdpose": "0.1.0", "git_commit": "abc"}}  # fmt: skip
    write_json(summary, folder / TRAIN_METRICS)
    crops = {"splits": {"train": {"rows": 3}, "val": {"rows": 4}}}
    (folder / CROPS_DIR).mkdir(parents=True)
    (folder / CROPS_DIR / "summary.json").write_text(json.dumps(crops))
    return folder


def test_shipping_writes_weights_card_and_checksum_and_legs_accumulate(tmp_path):
    weights = tmp_path / "weights"
    first = training_run(tmp_path / "leg1")
    card = ship("nano-test", first, weights, heldout_seed=5, heldout_images=3)
    entry = shipped(weights)["nano-test"]
    assert entry.sha256 == file_sha256(weights / "nano-test.pt")
    assert entry.config()["head"] == "simcc" and card["architecture"]["name"] == "sdpose-nano"
    assert set(card["ap"]) == {"own_val", "synthetic_val_seed5"}
    assert all(figures["instances"] > 0 for figures in card["ap"].values())
    assert all(0.0 <= figures["AP"] <= 1.0 for figures in card["ap"].values())
    (leg,) = card["legs"]
    assert leg["iterations"] == 20 and leg["data"]["synth"]["train_images"] == 2
    assert (leg["train_time_s"], leg["wall_time_s_last_run"]) == (130.0, 70.0)  # a resumed leg
    assert leg["resumed_after_epoch"] == 0
    assert [point["student_ap"] for point in leg["curve"]] == [0.0, 0.1]
    assert leg["code"]["git_commit"] == "abc" and leg["init"] == "scratch"

    second = training_run(tmp_path / "leg2", init="nano-test")  # continued from the shipped
    card = ship("nano-test", second, weights, heldout_seed=5, heldout_images=3)
    assert [leg["init"] for leg in card["legs"]] == ["scratch", "nano-test"]
    assert json.loads((weights / "nano-test.json").read_text())["legs"] == card["legs"]
    picture = plot_curves(card, tmp_path / "curve.png")
    assert picture.stat().st_size > 5000
