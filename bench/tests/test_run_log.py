"""The learning benches resume run by run (bench/run_log.py): finished runs are read back,
a torn line is not."""

from __future__ import annotations

import sys

import pytest
from shared import REPO

sys.path.insert(0, str(REPO / "bench"))
import run_log

pytestmark = pytest.mark.unit


def test_finished_runs_come_back_and_a_torn_last_line_is_ignored(tmp_path):
    log = tmp_path / "runs.jsonl"
    shared = {"train.epochs": 8, "synth.train_images": 3000}
    first = run_log.run_key("sdpose-nano, 2 cycles", 0, shared)
    second = run_log.run_key("sdpose-nano, 2 cycles", 1, shared)
    run_log.record_run(log, first, {"student_ap": 0.31, "wall_time_s": 700.0})
    run_log.record_run(log, second, {"student_ap": 0.29, "wall_time_s": 690.0})
    with log.open("a") as handle:
        handle.write('{"key": "killed mid-write", "res')  # a run stopped while recording
    done = run_log.finished_runs(log)
    assert set(done) == {first, second}
    assert done[first]["student_ap"] == 0.31 and done[second]["student_ap"] == 0.29


def test_a_run_with_other_settings_is_not_taken_for_a_finished_one():
    shared = {"train.epochs": 8, "synth.train_images": 3000}
    key = run_log.run_key("tokenpose-nano (1 cycle)", 0, shared)
    assert key != run_log.run_key("tokenpose-nano (1 cycle)", 0, {**shared, "train.epochs": 9})
    assert key != run_log.run_key("tokenpose-nano (1 cycle)", 2, shared)
    assert key == run_log.run_key("tokenpose-nano (1 cycle)", 0, dict(reversed(shared.items())))


def test_missing_log_means_nothing_is_finished(tmp_path):
    assert run_log.finished_runs(tmp_path / "runs.jsonl") == {}
