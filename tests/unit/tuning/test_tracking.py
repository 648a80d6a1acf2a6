"""The search's MLflow record: one run per trial, tagged with the trial and the search, its
sampled values and cost as params, per epoch the compared metrics, its end and any error.

The MLflow client is a recorder (no store, no server); the filter that finds a restored
trial's run is checked with MLflow's own parser.
"""

from __future__ import annotations

import importlib
import pickle
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.entities import Metric, Param  # noqa: F401  (mlflow's import, at collection)
from mlflow.utils.search_utils import SearchUtils

from sdpose.tuning.tracking import LOGGED_METRICS, SEARCH_TAG, TRIAL_TAG, MlflowTrials
from sdpose.tuning.trial import EPOCHS_DONE

pytestmark = pytest.mark.unit

SEARCH = "/work/models/ray/sdpose-tune"
URI = "sqlite:////work/mlruns.db"


def describe(config: dict[str, Any]) -> dict[str, Any]:
    """The trial's cost, as the search's describe gives it."""
    return {"params": 1000 * config.get("model.dim", 1), "gflops": 0.25}


@dataclass
class FakeClient:
    """Records what MlflowTrials asks of MLflow; `previous` are runs found by search_runs."""

    experiments: dict[str, str] = field(default_factory=dict)  # name -> id
    previous: list[Any] = field(default_factory=list)
    calls: list[tuple] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)  # the URIs open_client was given
    lock: Any = field(default_factory=threading.Lock)  # a live connection: not picklable

    def get_experiment_by_name(self, name):
        found = self.experiments.get(name)
        return SimpleNamespace(experiment_id=found) if found else None

    def create_experiment(self, name, artifact_location=None):
        self.calls.append(("create_experiment", name, artifact_location))
        self.experiments[name] = "exp-new"
        return "exp-new"

    def search_runs(self, experiment_ids, filter_string="", max_results=None):
        self.calls.append(("search_runs", experiment_ids, filter_string))
        return self.previous

    def create_run(self, experiment_id, run_name=None, tags=None):
        run_id = f"run-{run_name}"
        self.calls.append(("create_run", experiment_id, run_name, tags))
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    def update_run(self, run_id, status=None):
        self.calls.append(("update_run", run_id, status))

    def log_batch(self, run_id, metrics=(), params=()):
        metrics = [(m.key, m.value, m.step) for m in metrics]
        params = {p.key: p.value for p in params}
        self.calls.append(("log_batch", run_id, metrics, params))

    def set_tag(self, run_id, key, value):
        self.calls.append(("set_tag", run_id, key, value))

    def set_terminated(self, run_id, status=None):
        self.calls.append(("set_terminated", run_id, status))

    def of(self, kind: str) -> list[tuple]:
        return [call for call in self.calls if call[0] == kind]


def _open_client():
    """open_client wherever the code takes it from (the tracking module or the store's)."""
    for name in ("sdpose.tuning.tracking", "sdpose.mlflow_store", "sdpose.deploy.registry"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "open_client"):
            return module.open_client
    raise AssertionError("no open_client found")


@pytest.fixture
def client(swap) -> FakeClient:
    """A recording client, returned by every open_client the tracking may call."""
    fake = FakeClient()

    def open_client(uri):
        fake.opened.append(uri)
        return fake

    swap(_open_client(), open_client)
    return fake


def tracker(tmp_path: Path) -> MlflowTrials:
    return MlflowTrials(URI, "sdpose-tune", tmp_path / "mlartifacts", SEARCH, describe)


@dataclass
class FakeTrial:
    trial_id: str
    config: dict[str, Any] = field(default_factory=dict)
    last_result: dict[str, Any] | None = None
    error: BaseException | None = None
    pickled_error_file: str | None = None

    def get_pickled_error(self):
        return self.error

    def get_error(self):
        return None


def started(tmp_path: Path, client: FakeClient, *trials: FakeTrial) -> MlflowTrials:
    callback = tracker(tmp_path)
    callback.setup()
    for trial in trials:
        callback.on_trial_start(0, [], trial)
    return callback


# ------------------------------------------------------------------ experiment and runs
def test_setup_makes_the_experiment_with_artifacts_beside_the_store(tmp_path, client) -> None:
    """A new experiment gets the artifact folder as a file URI; an existing one is reused."""
    tracker(tmp_path).setup()
    assert client.opened == [URI]
    expected = (tmp_path / "mlartifacts").resolve().as_uri()
    assert client.of("create_experiment") == [("create_experiment", "sdpose-tune", expected)]
    client.calls.clear()
    started(tmp_path, client, FakeTrial("t"))  # a second setup finds it
    assert client.of("create_experiment") == []
    assert client.of("create_run")[0][1] == "exp-new"


def test_a_trial_starts_a_tagged_run_with_its_values_and_cost(tmp_path, client) -> None:
    """One run per trial, named by its id, tagged with trial and search; params are the
    sampled values and describe()'s cost, as strings; a second start adds no run."""
    trial = FakeTrial("a_00001", {"model.dim": 48, "train.lr": 0.001})
    callback = started(tmp_path, client, trial)
    callback.on_trial_start(1, [], trial)
    [create] = client.of("create_run")
    assert create[2:] == ("a_00001", {TRIAL_TAG: "a_00001", SEARCH_TAG: SEARCH})
    [batch] = client.of("log_batch")
    assert batch[1] == "run-a_00001" and batch[2] == []
    assert batch[3] == {"model.dim": "48", "train.lr": "0.001", "params": "48000", "gflops": "0.25"}
    assert len(client.of("search_runs")) == 1


def test_a_restored_search_continues_each_trial_in_its_own_run(tmp_path, client) -> None:
    """The trial's earlier run (same trial id, same search) is found, set running again and
    written to; no second run, its params are not logged again."""
    client.experiments["sdpose-tune"] = "exp-1"
    client.previous = [SimpleNamespace(info=SimpleNamespace(run_id="old-run"))]
    callback = started(tmp_path, client, FakeTrial("b_2", {"model.dim": 32}))
    [(_, experiments, text)] = client.of("search_runs")
    assert experiments == ["exp-1"]
    parsed = {(item["type"], item["key"], item["comparator"], item["value"])
              for item in SearchUtils.parse_search_filter(text)}  # fmt: skip
    assert parsed == {("tag", TRIAL_TAG, "=", "b_2"), ("tag", SEARCH_TAG, "=", SEARCH)}
    assert client.of("create_run") == [] and client.of("log_batch") == []
    assert client.of("update_run") == [("update_run", "old-run", "RUNNING")]
    callback.on_trial_result(1, [], FakeTrial("b_2"), {"student_ap": 0.2, EPOCHS_DONE: 3})
    assert client.of("log_batch")[0][1] == "old-run"


# ------------------------------------------------------------------ per-epoch metrics
def test_each_result_logs_the_compared_numbers_at_the_epoch_step(tmp_path, client) -> None:
    """Of a result, only LOGGED_METRICS that are numbers, as floats, at step epochs_done,
    in one write; a result with none of them, or of an unknown trial, writes nothing."""
    callback = started(tmp_path, client, FakeTrial("t"))
    client.calls.clear()
    result = {"student_ap": 0.5, "teacher_ap": 1, "loss": "nan?", "best_student_ap": None,
              "lr": 0.1, "time_total_s": 9.0, EPOCHS_DONE: 2}  # fmt: skip
    callback.on_trial_result(2, [], FakeTrial("t"), result)
    [(_, run_id, metrics, params)] = client.calls
    assert run_id == "run-t" and params == {}
    assert metrics == [("student_ap", 0.5, 2), ("teacher_ap", 1.0, 2)]
    assert all(type(value) is float for _, value, _ in metrics)
    assert {name for name, _, _ in metrics} <= set(LOGGED_METRICS)
    callback.on_trial_result(3, [], FakeTrial("t"), {"lr": 0.1, EPOCHS_DONE: 3})
    callback.on_trial_result(3, [], FakeTrial("other"), {"student_ap": 0.1, EPOCHS_DONE: 1})
    assert len(client.calls) == 1


# ------------------------------------------------------------------ the end
def test_a_finished_trial_closes_its_run_with_its_epochs(tmp_path, client) -> None:
    """FINISHED with the epochs it ran as a tag; the run is then let go of."""
    callback = started(tmp_path, client, FakeTrial("t"))
    client.calls.clear()
    callback.on_trial_complete(1, [], FakeTrial("t", last_result={EPOCHS_DONE: 4}))
    assert client.calls == [
        ("set_tag", "run-t", "epochs_run", "4"),
        ("set_terminated", "run-t", "FINISHED"),
    ]
    callback.on_trial_result(2, [], FakeTrial("t"), {"student_ap": 0.1, EPOCHS_DONE: 5})
    callback.on_trial_complete(2, [], FakeTrial("t", last_result={EPOCHS_DONE: 5}))
    assert len(client.calls) == 2


def test_a_failed_trial_records_its_root_error_and_fails_its_run(tmp_path, client) -> None:
    """FAILED with the root error's type and message as a tag (cut to 4000 characters);
    a trial that never reported ran 0 epochs."""
    callback = started(tmp_path, client, FakeTrial("t"), FakeTrial("u"))
    client.calls.clear()
    callback.on_trial_error(1, [], FakeTrial("t", error=ValueError("bad lr")))
    callback.on_trial_error(1, [], FakeTrial("u", error=RuntimeError("x" * 5000)))
    tags = {(call[1], call[2]): call[3] for call in client.of("set_tag")}
    assert tags[("run-t", "error")] == "ValueError: bad lr"
    long = tags[("run-u", "error")]
    assert len(long) == 4000 and long.startswith("RuntimeError: xxx")
    assert tags[("run-t", "epochs_run")] == "0"
    assert client.of("set_terminated") == [
        ("set_terminated", "run-t", "FAILED"),
        ("set_terminated", "run-u", "FAILED"),
    ]


def test_the_callback_pickles_without_its_client_or_open_runs(tmp_path, client) -> None:
    """Tune pickles its callbacks into the experiment state: the live client and the run
    ids stay behind (a restored search reconnects and finds its runs), the settings travel."""
    callback = started(tmp_path, client, FakeTrial("t"))
    with pytest.raises(TypeError):
        pickle.dumps(client)  # the live client itself cannot travel
    copy = pickle.loads(pickle.dumps(callback))
    assert (copy.tracking_uri, copy.experiment, copy.search) == (URI, "sdpose-tune", SEARCH)
    assert copy.artifact_root == tmp_path / "mlartifacts" and copy.describe is describe
    client.calls.clear()
    copy.on_trial_result(1, [], FakeTrial("t"), {"student_ap": 0.1, EPOCHS_DONE: 1})
    assert client.calls == []  # no run known before setup and the trial's restart
    callback.on_trial_result(1, [], FakeTrial("t"), {"student_ap": 0.1, EPOCHS_DONE: 1})
    assert len(client.of("log_batch")) == 1  # the original still writes
