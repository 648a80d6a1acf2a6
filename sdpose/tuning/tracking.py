"""MLflow record of a search: one run per trial under the experiment `<registry>-tune`.

A Tune callback in the main process rather than Ray's MLflowLoggerCallback: it keeps the
tracking URI local to its own client (MLflowLoggerCallback sets it process-wide), writes
from one process only (SQLite takes one writer at a time; trial drivers writing at once
would lock), records a failed trial's error message (Ray's records the status alone), and
logs what a comparison needs, not every reported key: the sampled values, params, GFLOPs,
and per epoch the student and teacher AP. A restored search reopens its trials' runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from ray.tune import Callback

from sdpose.mlflow_store import open_client
from sdpose.tuning.results import trial_error
from sdpose.tuning.trial import EPOCHS_DONE

TRIAL_TAG = "sdpose.trial_id"
SEARCH_TAG = "sdpose.search"
LOGGED_METRICS = ("student_ap", "teacher_ap", "best_student_ap", "loss", "epoch_time_s")


class MlflowTrials(Callback):
    """Logs each trial as an MLflow run; `describe(trial)` gives its params and cost."""

    def __init__(
        self, tracking_uri: str, experiment: str, artifact_root: Path, search: str, describe
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.artifact_root = Path(artifact_root)
        self.search = search  # the Tune experiment folder: tells searches apart
        self.describe = describe  # trial config -> {"params": ..., "gflops": ...} or error
        self._client = None
        self._experiment_id = ""
        self._runs: dict[str, str] = {}  # trial id -> MLflow run id

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment state; the client reconnects.
        return {**self.__dict__, "_client": None, "_runs": {}}

    def setup(self, **info) -> None:
        self._client = open_client(self.tracking_uri)
        found = self._client.get_experiment_by_name(self.experiment)
        self._experiment_id = (
            found.experiment_id
            if found
            else self._client.create_experiment(
                self.experiment, artifact_location=self.artifact_root.resolve().as_uri()
            )
        )

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:

        if trial.trial_id in self._runs:
            return
        previous = self._client.search_runs(
            [self._experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial.trial_id}' "
            f"and tags.`{SEARCH_TAG}` = '{self.search}'",
            max_results=1,
        )
        if previous:  # a restored search: the trial goes on in its own run
            self._runs[trial.trial_id] = previous[0].info.run_id
            self._client.update_run(previous[0].info.run_id, status="RUNNING")
            return
        run = self._client.create_run(
            self._experiment_id,
            run_name=trial.trial_id,
            tags={TRIAL_TAG: trial.trial_id, SEARCH_TAG: self.search},
        )
        self._runs[trial.trial_id] = run.info.run_id
        values = {**trial.config, **self.describe(trial.config)}
        self._client.log_batch(
            run.info.run_id, params=[Param(key, str(value)) for key, value in values.items()]
        )

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:

        run_id = self._runs.get(trial.trial_id)
        step, now = int(result.get(EPOCHS_DONE, 0)), int(time.time() * 1000)
        metrics = [
            Metric(name, float(result[name]), now, step)
            for name in LOGGED_METRICS
            if isinstance(result.get(name), int | float)
        ]
        if run_id and metrics:  # one write: SQLite commits cost the Tune loop time
            self._client.log_batch(run_id, metrics=metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:

        run_id = self._runs.get(trial.trial_id)
        if run_id:
            self._client.set_tag(run_id, "error", trial_error(trial)[:4000])
        self._end(trial, "FAILED")

    def _end(self, trial, status: str) -> None:
        run_id = self._runs.pop(trial.trial_id, None)
        if run_id:
            epochs = (trial.last_result or {}).get(EPOCHS_DONE, 0)
            self._client.set_tag(run_id, "epochs_run", str(epochs))
            self._client.set_terminated(run_id, status=status)
