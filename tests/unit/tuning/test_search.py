"""The tune stage's frame: where it reads and writes (TunePaths), what it refuses before a
Ray cluster starts, and the stage entry (`sdpose.tuning.stage.run`) recording the search.

Ray is never started: `ray.init` is replaced by a function that fails the test.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import ray

from sdpose.config import ConfigError, Params
from sdpose.core.errors import MissingInputError
from sdpose.models import build_model
from sdpose.models.checkpoint import save_checkpoint
from sdpose.tuning.results import SEARCH_RECORD, write_results
from sdpose.tuning.search import EXPERIMENT_NAME, TunePaths
from sdpose.tuning.search import run as search

pytestmark = pytest.mark.unit

REGISTRY_ROOT_ENV = "SDPOSE_REGISTRY_ROOT"  # a DVC experiment's project folder


@pytest.fixture
def no_ray(monkeypatch) -> None:
    """Any attempt to start or join Ray fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started: the checks must come first")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv(REGISTRY_ROOT_ENV, raising=False)


def stage_entry():
    """The tune stage's entry: sdpose.tuning.stage.run (sdpose.tuning.run before stage.py)."""
    try:
        return importlib.import_module("sdpose.tuning.stage").run
    except ModuleNotFoundError:
        return importlib.import_module("sdpose.tuning").run


def params(**sections) -> Params:
    return Params.model_validate(sections)


# ------------------------------------------------------------------ TunePaths
def test_every_output_is_under_the_working_folder(tmp_path, monkeypatch) -> None:
    """A relative workdir and storage path are anchored; the outputs are the documented
    metrics/tune.json, models/tune/best.pt, reports/tune_pareto.png; Tune's experiment is
    `sdpose-tune` in the Ray storage; MLflow artifacts sit beside the tracking store."""
    monkeypatch.delenv(REGISTRY_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    paths = TunePaths.under(Path("work"), params(ray={"storage_path": "store/ray"}))
    work = (tmp_path / "work").resolve()
    assert paths.storage == work / "store" / "ray"
    assert paths.experiment == work / "store" / "ray" / EXPERIMENT_NAME
    assert paths.metrics == work / "metrics" / "tune.json"
    assert paths.best_model == work / "models" / "tune" / "best.pt"
    assert paths.pareto == work / "reports" / "tune_pareto.png"
    assert paths.artifacts == work / "mlartifacts"


def test_an_absolute_storage_and_a_project_registry_stay_where_they_are(
    tmp_path, monkeypatch
) -> None:
    """An absolute ray.storage_path is used as given; a DVC experiment's stages keep their
    MLflow artifacts in the project folder, their outputs in the workdir."""
    project, work, store = tmp_path / "project", tmp_path / "work", tmp_path / "nfs" / "ray"
    monkeypatch.setenv(REGISTRY_ROOT_ENV, str(project))
    paths = TunePaths.under(work, params(ray={"storage_path": str(store)}))
    assert paths.experiment == store / EXPERIMENT_NAME
    assert paths.artifacts == project.resolve() / "mlartifacts"
    assert paths.metrics == work.resolve() / "metrics" / "tune.json"


# ------------------------------------------------------------------ refused before Ray
def earlier_search(workdir: Path) -> Path:
    """An earlier search's Tune state, which a refused search must leave alone."""
    experiment = TunePaths.under(workdir, Params()).experiment
    experiment.mkdir(parents=True)
    (experiment / "experiment_state-earlier.json").write_text("{}")
    return experiment


def write_crops(workdir: Path) -> None:
    """data/crops as `sdpose crops` leaves it: the summary (written last) names the splits."""
    crops = workdir / "data" / "crops"
    (crops / "train").mkdir(parents=True)
    (crops / "summary.json").write_text(json.dumps({"splits": {"train": {}, "val": {}}}))


def write_annotations(workdir: Path, source: Params) -> None:
    """The validation annotations that every trial scores against (synth layout)."""
    path = workdir / source.data.root / "annotations" / "person_keypoints_val.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))


def test_without_crops_the_search_is_refused_and_the_earlier_one_kept(tmp_path, no_ray) -> None:
    """No crops: MissingInputError naming `sdpose crops`; the earlier search is untouched
    and no output is written."""
    experiment = earlier_search(tmp_path)
    with pytest.raises(MissingInputError, match="sdpose crops"):
        search(params(train={"init": "scratch"}), tmp_path)
    assert (experiment / "experiment_state-earlier.json").is_file()
    assert not (tmp_path / "metrics").exists() and not (tmp_path / "models" / "tune").exists()


def test_without_validation_annotations_the_search_is_refused(tmp_path, no_ray) -> None:
    """Crops but no annotations: refused with the missing file named."""
    experiment = earlier_search(tmp_path)
    write_crops(tmp_path)
    chosen = params(train={"init": "scratch"})
    with pytest.raises(MissingInputError, match=r"person_keypoints_val\.json.*annotations"):
        search(chosen, tmp_path)
    assert (experiment / "experiment_state-earlier.json").is_file()


def test_an_architecture_search_from_pretrained_weights_is_refused_before_ray(
    tmp_path, no_ray
) -> None:
    """All inputs present, but the space changes model.dim of train.init's weights: a
    ConfigError before any trial (or Ray) starts."""
    experiment = earlier_search(tmp_path)
    write_crops(tmp_path)
    save_checkpoint(tmp_path / "weights.pt", build_model("sdpose-nano"))
    chosen = params(
        train={"init": "weights.pt"}, tune={"space": {"model.dim": {"choice": [32, 48]}}}
    )
    write_annotations(tmp_path, chosen)
    with pytest.raises(ConfigError, match=r"tune\.space\.model\.dim"):
        search(chosen, tmp_path)
    assert (experiment / "experiment_state-earlier.json").is_file()


# ------------------------------------------------------------------ the stage entry
def test_the_stage_records_the_search_that_made_models_tune(tmp_path, swap, no_ray) -> None:
    """The stage entry returns the search's summary and writes models/tune/search.json
    with the tune section it searched with and the trials' outcomes."""
    chosen = params(tune={"num_samples": 3, "space": {"model.cycles": {"choice": [1, 2]}}})
    checkpoint = tmp_path / "runs" / "b" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"student b")
    rows = [
        {"id": trial, "config": {"model.cycles": cycles}, "status": status, "error": None,
         "student_ap": ap, "epochs_run": 2, "gflops": 1.0, "checkpoint": path}
        for trial, cycles, status, ap, path in [
            ("a", 1, "stopped", 0.1, None), ("b", 2, "completed", 0.3, str(checkpoint)),
        ]
    ]  # fmt: skip
    calls = []

    def fake_search(given, workdir, resume=False):
        calls.append((given, Path(workdir), resume))
        paths = TunePaths.under(workdir, given)
        write_results(rows, {"trial_count": 2}, paths.metrics, paths.best_model)
        return {"trial_count": 2}

    entry = stage_entry()  # imported before the swap, so the swap reaches its search
    swap(importlib.import_module("sdpose.tuning.search").run, fake_search)
    summary = entry(chosen, tmp_path, resume=True)

    assert calls == [(chosen, tmp_path, True)] and summary == {"trial_count": 2}
    best_model = tmp_path / "models" / "tune" / "best.pt"
    assert best_model.read_bytes() == b"student b"
    record = json.loads((best_model.parent / SEARCH_RECORD).read_text())
    assert record["tune"] == chosen.to_dict()["tune"] and record["best"] == "b"
    assert [(item["id"], item["status"]) for item in record["trials"]] == [
        ("a", "stopped"),
        ("b", "completed"),
    ]
