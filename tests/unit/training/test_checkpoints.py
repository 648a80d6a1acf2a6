"""`load_state`: the one reader of a checkpoint's state.pt, which the run's outputs, the
restore and the search's trial rows share (the history above all)."""

from __future__ import annotations

import pytest
import torch

from sdpose.training.checkpoints import STATE_FILE, Progress, load_state

pytestmark = pytest.mark.unit

HISTORY = [
    {"epoch": 0.0, "student_ap": 0.1, "teacher_ap": 0.2, "epoch_time_s": 3.0},
    {"epoch": 1.0, "student_ap": 0.3, "teacher_ap": 0.25, "epoch_time_s": 2.5},
]


def test_load_state_gives_the_state_and_its_progress(tmp_path) -> None:
    progress = Progress(epoch=1, best_ap=0.3, best_epoch=1, restores=2, history=HISTORY)
    torch.save({"config": {"name": "sdpose-nano"}, "progress": progress.to_dict()},
               tmp_path / STATE_FILE)  # fmt: skip
    state, loaded = load_state(tmp_path)
    assert state["config"] == {"name": "sdpose-nano"}
    assert isinstance(loaded, Progress) and loaded == progress
    assert loaded.history == HISTORY
    assert loaded.restores == 2  # reading is not restoring: `restore` counts, not this


def test_load_state_fills_what_an_older_progress_lacks(tmp_path) -> None:
    torch.save({"progress": {"history": HISTORY[:1]}}, tmp_path / STATE_FILE)
    _, progress = load_state(tmp_path)
    assert progress.history == HISTORY[:1]
    assert progress.initial is None and progress.workers == [] and progress.epoch == -1
