"""The search's record: one row per trial, the best one, the accuracy/cost Pareto front.

A trial's numbers come from its own Ray Train run (the latest checkpoint holds every
epoch's history, also across a restore), its status and error from Tune, and its cost
from the model it would build (`sdpose.models.cost.model_info`, the paper's convention).
The row's `student_ap` is the trial's best epoch, the one its `best.pt` holds, with the
teacher's AP of that same epoch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import ray
from ray import cloudpickle

from sdpose.core.paths import write_text_atomic
from sdpose.models.cost import model_info
from sdpose.training.checkpoints import BEST_FILE, load_state
from sdpose.training.launcher import RUN_NAME
from sdpose.training.storage import RunStorage
from sdpose.tuning.space import InvalidTrialConfigError, trial_params

OBJECTIVE = "student_ap"
STATUSES = ("completed", "stopped", "failed", "interrupted", "not_run")


def trial_cost(config: dict[str, Any], *, base_params: dict[str, Any], max_epochs: int) -> dict:
    """params and GFLOPs of the model a trial config builds; {"invalid": reason} if none."""

    try:
        params = trial_params(base_params, config, max_epochs)
    except InvalidTrialConfigError as error:
        return {"invalid": str(error)}
    info = model_info(params.model.resolve())
    return {"params": info["params"], "gflops": info["gflops"]}


def trial_error(trial) -> str:
    """A failed trial's reason: the root exception's type and message, without Ray's wrap."""
    error = _pickled_error(trial)
    if error is None:
        text = trial.get_error()
        return str(text).strip() if text else ""
    while getattr(error, "cause", None) is not None:  # RayTaskError wraps the user's one
        error = error.cause
    message = str(error).strip()
    if type(error).__name__ == "InvalidTrialConfigError":
        return message
    return f"{type(error).__name__}: {message}"


def _pickled_error(trial) -> Exception | None:
    """Tune writes the error beside the trial first and copies it to storage later:
    callbacks of the failing step find only the first, a finished search only the second."""

    local = trial.pickled_error_file if ray.is_initialized() else None  # a session folder
    if local and Path(local).is_file():
        with open(local, "rb") as handle:
            return cloudpickle.load(handle)
    return trial.get_pickled_error()


def trial_history(latest) -> list[dict[str, float]]:
    """Every finished epoch of a trial's Ray Train run, from its latest (epoch, checkpoint)."""

    if latest is None:
        return []
    with latest[1].as_directory() as folder:
        return load_state(Path(folder))[1].history


def trial_row(trial, run: Path, cost: dict[str, Any], max_epochs: int) -> dict[str, Any]:
    """One row of metrics/tune.json."""

    storage = RunStorage.of(run, RUN_NAME, run)
    latest = storage.latest_checkpoint()  # Ray's record, read once per row
    history = trial_history(latest)
    best = max(history, key=lambda row: row[OBJECTIVE], default=None)  # first of equals
    checkpoint = Path(storage.checkpoint_path(latest[0] if latest else -1)) / BEST_FILE
    result = trial.last_result or {}
    return {
        "id": trial.trial_id,
        "config": {key: _plain(value) for key, value in trial.config.items()},
        "status": _status(trial.status, len(history), max_epochs),
        "error": trial_error(trial) if trial.status == "ERROR" else None,
        "student_ap": best[OBJECTIVE] if best else None,
        "teacher_ap": best["teacher_ap"] if best else None,
        "best_epoch": int(best["epoch"]) if best else None,
        "epochs_run": len(history),
        "params": cost.get("params"),
        "gflops": cost.get("gflops"),
        "time_s": result.get("time_total_s"),
        "train_time_s": sum(row["epoch_time_s"] + row.get("val_time_s", 0.0) for row in history),
        "checkpoint": str(checkpoint) if best and checkpoint.is_file() else None,
    }


def _status(tune_status: str, epochs_run: int, max_epochs: int) -> str:
    """completed: all epochs; stopped: ended early by ASHA or the time budget."""
    if tune_status == "ERROR":
        return "failed"
    if tune_status == "TERMINATED":
        return "completed" if epochs_run >= max_epochs else "stopped"
    return "not_run" if tune_status == "PENDING" and epochs_run == 0 else "interrupted"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Highest student AP among trials that did not fail; ties go to the cheaper model."""
    candidates = [
        row for row in rows if row["status"] != "failed" and row["checkpoint"] is not None
    ]
    return max(
        candidates,
        key=lambda row: (row[OBJECTIVE], -(row["gflops"] or 0.0)),
        default=None,
    )


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows no other row beats on both counts (more AP for no more GFLOPs), cheapest first;
    failed trials are not candidates (as in `best_row`)."""
    scored = [
        row
        for row in rows
        if row.get("status") != "failed"
        and row[OBJECTIVE] is not None
        and row["gflops"] is not None
    ]
    scored.sort(key=lambda row: (row["gflops"], -row[OBJECTIVE]))
    front: list[dict[str, Any]] = []
    for row in scored:
        if not front or row[OBJECTIVE] > front[-1][OBJECTIVE]:
            front.append(row)
    return front


def plot_pareto(rows: list[dict[str, Any]], best: dict[str, Any] | None, path: Path) -> None:
    """Student AP against GFLOPs, every scored trial labelled, the front as a staircase."""
    import matplotlib  # lazy: matplotlib costs 0.6 s and picks its backend at import

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt  # lazy: matplotlib costs 0.6 s and picks its backend at import

    front = pareto_front(rows)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for status, marker in (("completed", "o"), ("stopped", "s"), ("interrupted", "x")):
        chosen = [row for row in rows if row["status"] == status and row[OBJECTIVE] is not None]
        if not chosen:
            continue
        axis.scatter(
            [row["gflops"] for row in chosen],
            [row[OBJECTIVE] for row in chosen],
            marker=marker,
            label=f"{status} ({len(chosen)})",
        )
        for row in chosen:
            axis.annotate(_label(row["config"]), (row["gflops"], row[OBJECTIVE]), fontsize=7)
    if front:
        axis.step(
            [row["gflops"] for row in front],
            [row[OBJECTIVE] for row in front],
            where="post",
            color="black",
            linewidth=1,
            label="Pareto front",
        )
    if best is not None:
        axis.scatter([best["gflops"]], [best[OBJECTIVE]], s=160, facecolors="none",
                     edgecolors="red", label="best")  # fmt: skip
    failed = sum(row["status"] == "failed" for row in rows)
    axis.set(
        xlabel="GFLOPs (one-cycle student, at its input size)",
        ylabel="student AP (best epoch)",
        title=f"search: {len(rows)} trials, {failed} failed",
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _label(config: dict[str, Any]) -> str:
    parts = []
    for key, value in config.items():
        text = f"{value:.3g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.split('.')[-1]}={text}")
    return " ".join(parts)


def write_results(
    rows: list[dict[str, Any]], summary: dict[str, Any], metrics: Path, best_model: Path
) -> dict[str, Any] | None:
    """metrics/tune.json (summary, best, Pareto ids, rows) and the best student's best.pt."""
    best = best_row(rows)
    best_model.parent.mkdir(parents=True, exist_ok=True)
    if best is not None:
        shutil.copyfile(best["checkpoint"], best_model)
        write_text_atomic(best_model.parent / "config.json", json.dumps(best, indent=2) + "\n")
    else:  # never leave an older search's student (or its description) as this one's best
        best_model.unlink(missing_ok=True)
        (best_model.parent / "config.json").unlink(missing_ok=True)
    record = {
        **summary,
        "best": best,
        "pareto": [row["id"] for row in pareto_front(rows)],
        "trials": rows,
    }
    write_text_atomic(metrics, json.dumps(record, indent=2) + "\n")
    return best


SEARCH_RECORD = "search.json"
RECORDED_TRIAL_KEYS = ("id", "config", "status", "error", "student_ap", "epochs_run")


def write_search_record(tune: dict[str, Any], metrics: Path, best_model: Path) -> Path:
    """models/tune/search.json: the tune section searched with and each trial's outcome.

    DVC reruns evaluate and export only when models/tune's content changes; a new search
    whose best.pt came out byte-identical (or a search with no scored trial) must still
    count as new, so the folder records what produced it.
    """
    record = json.loads(metrics.read_text())
    best = record.get("best")
    search = {
        "tune": tune,
        "best": best["id"] if best else None,
        "trials": [{key: row.get(key) for key in RECORDED_TRIAL_KEYS} for row in record["trials"]],
    }
    path = best_model.parent / SEARCH_RECORD
    write_text_atomic(path, json.dumps(search, indent=2) + "\n")
    return path
