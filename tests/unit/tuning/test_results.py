"""The search's record: each trial's row read from its Ray Train run, the best trial, the
Pareto front, metrics/tune.json, models/tune and its search.json.

A trial's run is built in tmp_path the way Ray Train and the trainer leave it: `epoch-NNNN`
checkpoint folders with `state.pt` (the progress history) and `best.pt`, and Ray's
checkpoint manager snapshot naming the registered ones. No Ray cluster is started.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import matplotlib.pyplot  # noqa: F401  (imported at collection, not in the plot test)
import numpy as np
import pytest
import ray
import torch
from ray.exceptions import RayTaskError
from ray.train import Checkpoint

from sdpose.config import Params
from sdpose.core.presets import resolve_model_config
from sdpose.models.cost import model_info
from sdpose.training.checkpoints import BEST_FILE, STATE_FILE
from sdpose.training.launcher import RUN_NAME
from sdpose.training.storage import CHECKPOINT_PREFIX
from sdpose.tuning.results import (
    OBJECTIVE,
    RECORDED_TRIAL_KEYS,
    SEARCH_RECORD,
    best_row,
    pareto_front,
    plot_pareto,
    trial_cost,
    trial_error,
    trial_history,
    trial_row,
    write_results,
    write_search_record,
)
from sdpose.tuning.space import InvalidTrialConfigError

pytestmark = pytest.mark.unit

# The cost test's expectation, from the cost table directly. Computed at collection: the
# first meta-device forward of a process imports torch._dynamo, which takes seconds.
BASE = Params().to_dict()
SMALL_COST = model_info(resolve_model_config(BASE["model"]["preset"], dim=32, depth=1))

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of registered checkpoints


@dataclass
class FakeTrial:
    """The parts of a Tune Trial that the record reads."""

    trial_id: str
    config: dict[str, Any]
    status: str
    last_result: dict[str, Any] | None = None
    error: BaseException | None = None  # what Tune pickled beside the trial
    error_text: str | None = None  # Tune's error file, when nothing was pickled
    pickled_error_file: str | None = None

    def get_pickled_error(self) -> BaseException | None:
        return self.error

    def get_error(self) -> str | None:
        return self.error_text


def epoch(index: int, student: float, teacher: float, seconds: float = 10.0, **extra) -> dict:
    """One history row as the training loop records it."""
    return {"epoch": index, OBJECTIVE: student, "teacher_ap": teacher, "epoch_time_s": seconds,
            **extra}  # fmt: skip


def write_run(run: Path, history: list[dict], *, with_best: bool = True) -> Path:
    """A trial's Ray Train run after len(history) epochs: one registered checkpoint per epoch,
    each state.pt holding the history so far; returns the latest checkpoint folder."""
    folder = run / RUN_NAME
    results = []
    for count in range(1, len(history) + 1):
        name = f"{CHECKPOINT_PREFIX}{count - 1:04d}"
        checkpoint = folder / name
        checkpoint.mkdir(parents=True)
        torch.save({"progress": {"history": history[:count]}}, checkpoint / STATE_FILE)
        if with_best:
            torch.save({"model": {}, "epoch": count - 1}, checkpoint / BEST_FILE)
        results.append({"checkpoint_dir_name": name, "metrics": history[count - 1]})
    if results:
        snapshot = {
            "ray_version": ray.__version__,
            "checkpoint_results": results,
            "checkpoint_report_indices": list(range(len(results))),
            "latest_checkpoint_result": results[-1],
            "pending_training_results": [],
            "pending_validation_specs": [],
            "current_report_index": len(results),
            "validated_checkpoint_dir_names": [],
            "timed_out_validation_checkpoint_dir_names": [],
            "failed_validation_checkpoint_dir_names": [],
        }
        (folder / SNAPSHOT).write_text(json.dumps(snapshot))
    return folder / f"{CHECKPOINT_PREFIX}{len(history) - 1:04d}"


COST = {"params": 1000, "gflops": 0.5}


# ------------------------------------------------------------------ trial_row
def test_a_finished_trial_row_is_its_best_epoch_with_that_epochs_teacher(tmp_path) -> None:
    """student_ap is the best epoch's, teacher_ap that same epoch's (not the teacher's best);
    the checkpoint is the latest checkpoint's best.pt; times and cost are carried over."""
    history = [
        epoch(0, 0.20, 0.50, 10.0, val_time_s=2.0),
        epoch(1, 0.40, 0.30, 11.0, val_time_s=2.0),
        epoch(2, 0.30, 0.60, 12.0),  # no val_time_s: counts as 0
    ]
    latest = write_run(tmp_path / "run", history)
    trial = FakeTrial("t1", {"model.dim": np.int64(48), "train.lr": np.float64(1e-3)},
                      "TERMINATED", last_result={"time_total_s": 99.5})  # fmt: skip

    row = trial_row(trial, tmp_path / "run", COST, max_epochs=3)

    assert row["id"] == "t1" and row["status"] == "completed" and row["error"] is None
    assert (row[OBJECTIVE], row["teacher_ap"], row["best_epoch"]) == (0.40, 0.30, 1)
    assert row["epochs_run"] == 3
    assert row["train_time_s"] == pytest.approx(10.0 + 2.0 + 11.0 + 2.0 + 12.0)
    assert row["time_s"] == 99.5
    assert (row["params"], row["gflops"]) == (COST["params"], COST["gflops"])
    assert Path(row["checkpoint"]) == (latest / BEST_FILE).resolve()
    # numpy samples become plain numbers: the row goes into JSON as it is
    assert type(row["config"]["model.dim"]) is int and type(row["config"]["train.lr"]) is float
    assert json.loads(json.dumps(row)) == row


def test_equal_best_epochs_pick_the_first(tmp_path) -> None:
    """Of epochs with the same student AP, the earliest is the trial's best."""
    write_run(tmp_path / "run", [epoch(0, 0.1, 0.2), epoch(1, 0.5, 0.7), epoch(2, 0.5, 0.9)])
    row = trial_row(FakeTrial("t", {}, "TERMINATED"), tmp_path / "run", COST, max_epochs=3)
    assert (row["best_epoch"], row["teacher_ap"]) == (1, 0.7)


@pytest.mark.parametrize(
    ("tune_status", "epochs", "max_epochs", "expected"),
    [
        ("TERMINATED", 2, 2, "completed"),
        ("TERMINATED", 3, 2, "completed"),  # a restored trial may record more than max
        ("TERMINATED", 1, 2, "stopped"),  # ASHA or the time budget ended it early
        ("TERMINATED", 0, 2, "stopped"),
        ("PENDING", 0, 2, "not_run"),
        ("PENDING", 1, 2, "interrupted"),  # restored, waiting to continue
        ("RUNNING", 1, 2, "interrupted"),
        ("PAUSED", 0, 2, "interrupted"),
    ],
)
def test_status_comes_from_tune_and_the_epochs_run(
    tmp_path, tune_status, epochs, max_epochs, expected
) -> None:
    """completed = all epochs; stopped = ended early; not_run / interrupted otherwise."""
    write_run(tmp_path / "run", [epoch(i, 0.1 * i, 0.2) for i in range(epochs)])
    row = trial_row(FakeTrial("t", {}, tune_status), tmp_path / "run", COST, max_epochs)
    assert row["status"] == expected and row["epochs_run"] == epochs
    assert row["error"] is None


def test_a_failed_trial_without_a_checkpoint_has_its_error_and_no_numbers(tmp_path) -> None:
    """A trial that failed before its first checkpoint: the root error, no AP, no checkpoint,
    no cost when its config cannot be built."""
    wrapped = RayTaskError("drive_trial", "Traceback ...", ValueError("out of memory"))
    trial = FakeTrial("bad", {"model.dim": 36}, "ERROR", last_result=None, error=wrapped)
    row = trial_row(trial, tmp_path / "never-made", {"invalid": "why"}, max_epochs=2)
    assert row["status"] == "failed" and row["error"] == "ValueError: out of memory"
    assert row[OBJECTIVE] is None and row["teacher_ap"] is None and row["best_epoch"] is None
    assert row["checkpoint"] is None and row["epochs_run"] == 0 and row["train_time_s"] == 0
    assert row["params"] is None and row["gflops"] is None and row["time_s"] is None


def test_a_trial_that_failed_mid_run_keeps_its_epochs(tmp_path) -> None:
    """A crash after some epochs: failed, but its scored epochs and checkpoint are recorded."""
    latest = write_run(tmp_path / "run", [epoch(0, 0.25, 0.3)])
    trial = FakeTrial("late", {}, "ERROR", error=RuntimeError("worker died"))
    row = trial_row(trial, tmp_path / "run", COST, max_epochs=4)
    assert row["status"] == "failed" and row["error"] == "RuntimeError: worker died"
    assert row[OBJECTIVE] == 0.25 and row["checkpoint"] == str((latest / BEST_FILE).resolve())


def test_folders_without_rays_record_count_for_nothing(tmp_path) -> None:
    """Checkpoint folders that Ray never registered (no snapshot) are not the trial's."""
    write_run(tmp_path / "run", [epoch(0, 0.5, 0.5)])
    (tmp_path / "run" / RUN_NAME / SNAPSHOT).unlink()
    row = trial_row(FakeTrial("t", {}, "TERMINATED"), tmp_path / "run", COST, max_epochs=1)
    assert row["epochs_run"] == 0 and row[OBJECTIVE] is None and row["checkpoint"] is None
    assert row["status"] == "stopped"


def test_a_scored_trial_without_best_pt_names_no_checkpoint(tmp_path) -> None:
    """The row points at best.pt only if that file is there."""
    write_run(tmp_path / "run", [epoch(0, 0.5, 0.5)], with_best=False)
    row = trial_row(FakeTrial("t", {}, "TERMINATED"), tmp_path / "run", COST, max_epochs=1)
    assert row[OBJECTIVE] == 0.5 and row["checkpoint"] is None


# ------------------------------------------------------------------ history and errors
def test_trial_history_reads_the_latest_checkpoints_state(tmp_path) -> None:
    """Every finished epoch comes from the given checkpoint's state.pt; no checkpoint, none."""
    history = [epoch(0, 0.1, 0.2), epoch(1, 0.3, 0.4)]
    latest = write_run(tmp_path / "run", history)
    assert trial_history((1, Checkpoint.from_directory(str(latest)))) == history
    assert trial_history(None) == []


def test_trial_error_unwraps_rays_wrap_to_the_root_error() -> None:
    """RayTaskError wraps the user's exception: the record names the root's type and message;
    an invalid config's keyed reason is shown alone."""
    inner = RayTaskError("f", "tb", KeyError("student_ap"))
    outer = RayTaskError("drive_trial", "tb", inner)
    assert trial_error(FakeTrial("t", {}, "ERROR", error=outer)) == "KeyError: 'student_ap'"
    invalid = InvalidTrialConfigError("model.dim: 36 must be divisible by heads (8)")
    wrapped = RayTaskError("drive_trial", "tb", invalid)
    assert trial_error(FakeTrial("t", {}, "ERROR", error=wrapped)) == str(invalid)
    assert trial_error(FakeTrial("t", {}, "ERROR", error=ValueError("  x  "))) == "ValueError: x"


def test_trial_error_without_a_pickled_error_falls_back_to_tunes_text() -> None:
    """No pickled exception: Tune's error text, stripped; nothing at all: an empty string."""
    text = FakeTrial("t", {}, "ERROR", error_text="\nTuneError: boom\n")
    assert trial_error(text) == "TuneError: boom"
    assert trial_error(FakeTrial("t", {}, "ERROR")) == ""


# ------------------------------------------------------------------ cost
def test_trial_cost_is_the_sampled_models_and_an_invalid_config_says_why() -> None:
    """The cost of the model the trial builds (base preset with the sampled values), in the
    cost table's own numbers; an impossible combination gives its reason instead."""
    base = BASE
    small = trial_cost({"model.dim": 32, "model.depth": 1}, base_params=base, max_epochs=2)
    assert small == {"params": SMALL_COST["params"], "gflops": SMALL_COST["gflops"]}
    default = resolve_model_config(base["model"]["preset"])
    assert (default.dim, default.depth) != (32, 1)  # so the sampled values were applied
    invalid = trial_cost({"model.dim": 36, "model.heads": 8}, base_params=base, max_epochs=2)
    assert invalid == {"invalid": "model.dim: 36 must be divisible by heads (8)"}


# ------------------------------------------------------------------ best and Pareto
def row(name, ap, gflops=1.0, status="completed", checkpoint="x.pt", **extra) -> dict:
    """A metrics/tune.json row with the fields ranking reads."""
    return {"id": name, OBJECTIVE: ap, "gflops": gflops, "status": status,
            "checkpoint": checkpoint, **extra}  # fmt: skip


def test_the_best_trial_has_the_highest_ap_among_those_that_did_not_fail() -> None:
    """A failed trial never wins, even with the highest AP; a stopped or interrupted one can;
    a row without a checkpoint cannot (there is nothing to copy)."""
    rows = [
        row("failed", 0.9, status="failed"),
        row("no-file", 0.8, checkpoint=None),
        row("stopped", 0.6, status="stopped"),
        row("done", 0.5),
        row("unscored", None, status="not_run", checkpoint=None),
    ]
    assert best_row(rows)["id"] == "stopped"
    assert best_row([*rows[:2], row("interrupted", 0.1, status="interrupted")])["id"] == (
        "interrupted"
    )


def test_equal_ap_goes_to_the_cheaper_model_whatever_the_order() -> None:
    """Ties on student AP are broken by fewer GFLOPs."""
    rows = [row("big", 0.5, gflops=2.0), row("small", 0.5, gflops=1.0), row("low", 0.4, 0.1)]
    assert best_row(rows)["id"] == "small"
    assert best_row(rows[::-1])["id"] == "small"


def test_no_candidate_no_best() -> None:
    """No trial, only failed ones, or none with a checkpoint: None."""
    assert best_row([]) is None
    assert best_row([row("a", 0.9, status="failed"), row("b", None, checkpoint=None)]) is None


def test_pareto_front_is_cheapest_first_and_drops_dominated_and_unscored_rows() -> None:
    """A row is on the front when no row has at least its AP for at most its GFLOPs; rows
    without AP or cost are left out; the input list is not reordered."""
    rows = [
        row("costly-better", 0.70, gflops=5.0),
        row("no-cost", 0.99, gflops=None),
        row("cheap", 0.30, gflops=1.0),
        row("same-ap-dearer", 0.30, gflops=1.5),  # cheap has that AP for less
        row("mid", 0.50, gflops=2.0),
        row("mid-worse", 0.45, gflops=2.0),  # mid costs the same for more
        row("dear-worse", 0.60, gflops=6.0),  # costly-better beats it on both
        row("unscored", None, gflops=0.1),
    ]
    order = [item["id"] for item in rows]
    front = pareto_front(rows)
    assert [item["id"] for item in front] == ["cheap", "mid", "costly-better"]
    assert [item["id"] for item in rows] == order
    gflops = [item["gflops"] for item in front]
    aps = [item[OBJECTIVE] for item in front]
    assert gflops == sorted(gflops) and aps == sorted(aps)  # a staircase
    assert pareto_front([row("x", None), row("y", 0.1, gflops=None)]) == []


def test_a_failed_trial_is_not_on_the_front_even_with_a_scored_epoch() -> None:
    """The front lists candidates, as `best_row` chooses among them: a trial that failed
    after scoring an epoch neither joins the front nor hides a cheaper trial behind it."""
    rows = [row("failed", 0.9, gflops=0.5, status="failed"), row("ok", 0.4, gflops=1.0)]
    assert [item["id"] for item in pareto_front(rows)] == ["ok"]


# ------------------------------------------------------------------ outputs
def outputs(workdir: Path) -> tuple[Path, Path]:
    """metrics/tune.json and models/tune/best.pt under a working folder."""
    return workdir / "metrics" / "tune.json", workdir / "models" / "tune" / "best.pt"


def full_row(name: str, ap: float | None, checkpoint: Path | None, **extra) -> dict:
    """A complete metrics/tune.json row (every key trial_row writes)."""
    return {
        "id": name, "config": {"model.dim": 48}, "status": "completed", "error": None,
        OBJECTIVE: ap, "teacher_ap": ap, "best_epoch": 0 if ap is not None else None,
        "epochs_run": 1, "params": 10, "gflops": 1.0, "time_s": 1.0, "train_time_s": 1.0,
        "checkpoint": str(checkpoint) if checkpoint else None, **extra,
    }  # fmt: skip


def test_write_results_copies_the_best_student_and_records_every_trial(tmp_path) -> None:
    """tune.json holds the summary, the best row, the Pareto ids and all rows; models/tune
    holds the best trial's best.pt (byte for byte) and its row as config.json."""
    files = {}
    for name in ("a", "b", "c"):
        files[name] = tmp_path / "runs" / name / "best.pt"
        files[name].parent.mkdir(parents=True)
        files[name].write_bytes(f"student of {name}".encode())
    rows = [
        full_row("a", 0.2, files["a"], gflops=1.0),
        full_row("b", 0.6, files["b"], gflops=3.0),
        full_row("c", 0.9, files["c"], status="failed", error="ValueError: x", gflops=2.0),
        full_row("d", None, None, status="not_run", epochs_run=0),
    ]
    metrics, best_model = outputs(tmp_path)

    best = write_results(rows, {"trial_count": 4, "learned": True}, metrics, best_model)

    assert best["id"] == "b"
    assert best_model.read_bytes() == b"student of b"
    assert json.loads((best_model.parent / "config.json").read_text()) == best
    record = json.loads(metrics.read_text())
    assert record["trial_count"] == 4 and record["learned"] is True
    assert record["best"] == best and record["trials"] == rows
    assert record["pareto"] == [item["id"] for item in pareto_front(rows)]
    assert "a" in record["pareto"] and "d" not in record["pareto"]


def test_a_search_without_a_best_removes_the_older_searchs_student(tmp_path) -> None:
    """No scored trial: an older search's best.pt and its config.json must not pass for
    this one's; tune.json says there is no best."""
    metrics, best_model = outputs(tmp_path)
    best_model.parent.mkdir(parents=True)
    best_model.write_bytes(b"older search")
    (best_model.parent / "config.json").write_text('{"id": "older winner"}')
    rows = [full_row("x", None, None, status="failed", error="E: e", epochs_run=0)]
    assert write_results(rows, {}, metrics, best_model) is None
    assert not best_model.exists() and not (best_model.parent / "config.json").exists()
    record = json.loads(metrics.read_text())
    assert record["best"] is None and record["pareto"] == [] and record["trials"] == rows


def test_search_record_names_the_tune_section_the_best_and_each_outcome(tmp_path) -> None:
    """models/tune/search.json: what was searched, which trial won, and per trial only the
    recorded keys (no paths or timings, which change from run to run)."""
    checkpoint = tmp_path / "best-a.pt"
    checkpoint.write_bytes(b"a")
    rows = [full_row("a", 0.4, checkpoint), full_row("b", None, None, status="not_run")]
    metrics, best_model = tmp_path / "tune.json", tmp_path / "models" / "tune" / "best.pt"
    write_results(rows, {}, metrics, best_model)
    tune = {"num_samples": 2, "space": {"model.dim": {"choice": [48]}}}

    path = write_search_record(tune, metrics, best_model)

    assert path == best_model.parent / SEARCH_RECORD
    record = json.loads(path.read_text())
    assert record["tune"] == tune and record["best"] == "a"
    assert record["trials"] == [{key: item[key] for key in RECORDED_TRIAL_KEYS} for item in rows]
    assert all("checkpoint" not in item and "time_s" not in item for item in record["trials"])

    write_results(rows[1:], {}, metrics, best_model)  # a search with no scored trial
    assert json.loads(write_search_record(tune, metrics, best_model).read_text())["best"] is None


def test_plot_pareto_writes_a_png_even_without_scored_trials(tmp_path) -> None:
    """The plot is written (parent folders made) for a normal search and an empty one."""
    rows = [
        full_row("a", 0.2, None, gflops=1.0, config={"model.dim": 32, "train.lr": 1e-3}),
        full_row("b", 0.5, None, gflops=2.0, status="stopped"),
        full_row("c", 0.1, None, gflops=1.5, status="interrupted"),
        full_row("d", None, None, status="failed"),
    ]
    path = tmp_path / "reports" / "tune_pareto.png"
    plot_pareto(rows, rows[1], path)
    image = cv2.imread(str(path))
    assert image is not None and image.std() > 0  # a real picture, not a blank file
    empty = tmp_path / "empty" / "tune_pareto.png"
    plot_pareto([rows[-1]], None, empty)
    assert empty.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_only_undominated_trials() -> None:
    def row(name: str, gflops: float, ap: float | None) -> dict:  # a row before it had a status
        return {"id": name, "gflops": gflops, "student_ap": ap}

    rows = [
        row("a", 1.0, 0.50),
        row("b", 2.0, 0.40),
        row("c", 2.0, 0.60),
        row("d", 3.0, 0.60),
        row("e", 4.0, 0.70),
        row("f", 0.5, None),
    ]
    # b: c costs the same for more AP; d: c is cheaper for the same AP; f: never scored
    assert [item["id"] for item in pareto_front(rows)] == ["a", "c", "e"]
