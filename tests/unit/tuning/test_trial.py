"""One trial: where its Ray Train run lives, what it reports to Tune (the scheduler's clock
and score, its placement group), and the line a person sees when it ends (trial_lines).

No Tune session: Ray's TuneReportCallback, which hands the report on to Tune, is replaced by
a recorder, and Ray's runtime context by a stub.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import ray
from ray.tune.integration.ray_train import TuneReportCallback

from sdpose import console
from sdpose.tuning import cleanup
from sdpose.tuning.cleanup import CONTROLLER, PLACEMENT_GROUP, PlacementGroupRecorder
from sdpose.tuning.trial import EPOCHS_DONE, RUNS_DIR, SCORE, TIE_BREAK, TrialReport, run_dir
from sdpose.tuning.trial_lines import TrialLines, trial_line

pytestmark = pytest.mark.unit


def test_each_trial_has_its_own_stable_run_folder(tmp_path) -> None:
    """runs/<trial id> inside the experiment folder, from a str or a Path alike."""
    assert run_dir(tmp_path, "a_00001") == tmp_path / RUNS_DIR / "a_00001"
    assert run_dir(str(tmp_path), "a_00001") == run_dir(tmp_path, "a_00001")
    assert run_dir(tmp_path, "a_00001") != run_dir(tmp_path, "a_00002")


# ------------------------------------------------------------------ TrialReport
@pytest.fixture
def reported(monkeypatch) -> list[tuple[Any, list[dict], Any]]:
    """What TrialReport hands on to Ray's TuneReportCallback, one tuple per report; the
    process's recorded worker group starts empty (restored afterwards)."""
    calls: list[tuple[Any, list[dict], Any]] = []

    def record(self, run_context, metrics, checkpoint) -> None:
        calls.append((run_context, metrics, checkpoint))

    monkeypatch.setattr(TuneReportCallback, "after_report", record)
    monkeypatch.setattr(cleanup, "_recorded", {}, raising=False)
    return calls


def report(metrics: list[dict], checkpoint: Any = None) -> None:
    """One after_report of a TrialReport built outside a Tune session."""
    TrialReport.__new__(TrialReport).after_report("ctx", metrics, checkpoint)


def test_the_clock_counts_finished_epochs_and_other_metrics_pass_through(reported) -> None:
    """epochs_done = the 0-based epoch + 1; rank 0's metrics are kept, the other ranks' rows
    and the checkpoint are passed on untouched."""
    first = {"epoch": 0, "student_ap": 0.25, "teacher_ap": 0.3, "loss": 0.5}
    other_rank = {"epoch": 0, "loss": 0.4}
    report([first, other_rank], checkpoint="ckpt")
    [(context, metrics, checkpoint)] = reported
    assert context == "ctx" and checkpoint == "ckpt"
    assert metrics[0][EPOCHS_DONE] == 1 and metrics[1] == other_rank
    assert {key: metrics[0][key] for key in first} == first
    report([{**first, "epoch": 4}])
    assert reported[1][1][0][EPOCHS_DONE] == 5


def test_score_is_the_student_ap_less_a_tiny_loss_tie_break(reported) -> None:
    """score = student AP - TIE_BREAK x the student's heatmap loss (pose_loss_cycle1, else
    loss), the loss capped at 1: equal APs rank by loss, and the shift never reaches
    TIE_BREAK, far below any AP difference."""
    report([{"epoch": 0, "student_ap": 0.0, "pose_loss_cycle1": 0.2, "loss": 0.9}])
    report([{"epoch": 0, "student_ap": 0.0, "pose_loss_cycle1": 0.4, "loss": 0.1}])
    report([{"epoch": 0, "student_ap": 0.5, "loss": 0.3}])  # no per-cycle loss: the total
    report([{"epoch": 0, "student_ap": 0.5, "loss": 50.0}])  # capped at 1
    report([{"epoch": 0, "student_ap": 0.5}])  # no loss reported: no shift
    scores = [metrics[0][SCORE] for _, metrics, _ in reported]
    assert scores[0] == pytest.approx(0.0 - TIE_BREAK * 0.2, abs=1e-15)
    assert scores[1] == pytest.approx(0.0 - TIE_BREAK * 0.4, abs=1e-15)
    assert scores[0] > scores[1]  # same AP: the lower student loss ranks higher
    assert scores[2] == pytest.approx(0.5 - TIE_BREAK * 0.3, abs=1e-15)
    assert scores[3] == pytest.approx(0.5 - TIE_BREAK, abs=1e-15)
    assert scores[4] == 0.5
    assert all(0.5 - TIE_BREAK <= score <= 0.5 for score in scores[2:])


def test_a_diverged_loss_still_leaves_a_finite_score(reported) -> None:
    """A NaN training loss must not make the score NaN: the AP still ranks the trial."""
    report([{"epoch": 0, "student_ap": 0.0, "pose_loss_cycle1": float("nan")}])
    score = reported[0][1][0][SCORE]
    assert math.isfinite(score) and -TIE_BREAK <= score <= 0.0


def test_the_report_carries_the_worker_groups_placement_group(reported, swap) -> None:
    """Once the controller's worker group started (PlacementGroupRecorder), every report
    names its placement group and controller, for the janitor in the main process."""
    swap(ray.get_runtime_context, lambda: SimpleNamespace(get_actor_id=lambda: "controller-1"), ray)
    handle = SimpleNamespace(placement_group=SimpleNamespace(id=SimpleNamespace(hex=lambda: "ab")))
    state = SimpleNamespace(placement_group_handle=handle)
    PlacementGroupRecorder().after_worker_group_start(
        SimpleNamespace(get_worker_group_state=lambda: state)
    )
    report([{"epoch": 1, "student_ap": 0.1, "loss": 0.1}])
    metrics = reported[0][1][0]
    assert metrics[PLACEMENT_GROUP] == "ab" and metrics[CONTROLLER] == "controller-1"


# ------------------------------------------------------------------ trial lines
def test_a_scored_trial_line_names_its_numbers() -> None:
    """Position, id, config and outcome; AP to 4 places and the epochs when scored."""
    line = trial_line(3, 8, "x_3", {"train.lr": 0.001}, "completed",
                      {"student_ap": 0.123456, "teacher_ap": 0.5, EPOCHS_DONE: 6})  # fmt: skip
    assert line == (
        "trial 3/8 x_3 {'train.lr': 0.001}: completed, student AP 0.1235, teacher AP 0.5000, "
        "6 epochs"
    )


def test_an_ap_of_zero_is_shown_and_missing_numbers_default() -> None:
    """AP 0.0 is a score (shown); no teacher AP or epoch count reads as 0; no AP, no numbers."""
    zero = trial_line(1, 2, "t", {}, "stopped early", {"student_ap": 0.0})
    assert zero == "trial 1/2 t {}: stopped early, student AP 0.0000, teacher AP 0.0000, 0 epochs"
    none = trial_line(2, 2, "t", {}, "failed", {"student_ap": None, EPOCHS_DONE: 3})
    assert none == "trial 2/2 t {}: failed"


@dataclass
class FakeTrial:
    trial_id: str
    config: dict[str, Any] = field(default_factory=dict)
    last_result: dict[str, Any] | None = None


def said(text: str) -> list[str]:
    """The console lines (say) in captured output, markers removed."""
    return [line.removeprefix(console.MARKER) for line in text.splitlines()
            if line.startswith(console.MARKER)]  # fmt: skip


def progress(text: str) -> list[str]:
    return [line.removeprefix(console.PROGRESS_MARKER) for line in text.splitlines()
            if line.startswith(console.PROGRESS_MARKER)]  # fmt: skip


def test_trial_lines_count_the_ended_trials_and_say_how_each_ended(capfd) -> None:
    """A trial that ran max_epochs completed, one that ended sooner was stopped early, an
    error failed; each ended trial gets the next number and moves the bar."""
    lines = TrialLines(total=4, max_epochs=3)
    full = {"student_ap": 0.5, "teacher_ap": 0.6, EPOCHS_DONE: 3}
    lines.on_trial_complete(0, [], FakeTrial("a", {"model.dim": 48}, full))
    lines.on_trial_complete(0, [], FakeTrial("b", {}, {**full, EPOCHS_DONE: 1}))
    lines.on_trial_error(0, [], FakeTrial("c", {}, None))
    lines.on_trial_complete(0, [], FakeTrial("d", {}, None))  # never reported: stopped early
    out = capfd.readouterr().out
    assert said(out) == [
        trial_line(1, 4, "a", {"model.dim": 48}, "completed", full),
        trial_line(2, 4, "b", {}, "stopped early", {**full, EPOCHS_DONE: 1}),
        trial_line(3, 4, "c", {}, "failed", {}),
        trial_line(4, 4, "d", {}, "stopped early", {}),
    ]
    assert said(out)[0].startswith("trial 1/4 a {'model.dim': 48}: completed")
    assert progress(out) == ["trials 1 4", "trials 2 4", "trials 3 4", "trials 4 4"]
