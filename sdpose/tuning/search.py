"""The `tune` stage: Ray Tune over the model and train parameters of `tune.space`.

Each trial is a full Ray Train run of the train stage's trainer (trial.py); the objective
is the one-cycle student's AP, ASHA stops weak trials at its rungs (epochs 1, 2, 4, ...
times the grace period), and as many trials run at once as the cluster holds beside one
CPU for Ray Data. The experiment folder, `<ray.storage_path>/sdpose-tune`, holds Tune's
state and every trial's run (`runs/<trial id>`), so `resume=True` picks an interrupted
search up: finished and failed trials are kept as they are, unfinished ones continue from
their last checkpoint, unstarted ones start.

Outputs: metrics/tune.json (one row per trial, the best, the Pareto front), models/tune/
best.pt (the best trial's best student) with its row in config.json, reports/tune_pareto.png,
and one MLflow run per trial under the experiment `<registry.experiment>-tune`.
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import ExperimentAnalysis, Tuner
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from sdpose.config import ConfigError, Params
from sdpose.core.errors import MissingInputError
from sdpose.core.paths import CANDIDATES, REPORTS_DIR, TUNE_METRICS, resolve
from sdpose.data.feed import crop_shards
from sdpose.mlflow_store import registry_root, tracking_uri
from sdpose.ray_runtime import ray_session
from sdpose.training.init import resolve_init
from sdpose.training.launcher import TrainPaths
from sdpose.tuning.cleanup import PlacementGroupJanitor
from sdpose.tuning.results import STATUSES, plot_pareto, trial_cost, trial_row, write_results
from sdpose.tuning.space import check_fits, distinct_points, max_concurrent_trials, search_space
from sdpose.tuning.tracking import MlflowTrials
from sdpose.tuning.trial import EPOCHS_DONE, SCORE, drive_trial, run_dir
from sdpose.tuning.trial_lines import TrialLines

EXPERIMENT_NAME = "sdpose-tune"
# The trial's driver only waits on its Train run: no CPU (a fraction would leave Ray Data
# less than the whole CPU its tasks ask for), but a real request, as Tune needs one.
DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}


@dataclass(frozen=True)
class TunePaths:
    """Every file the stage reads or writes, resolved against the working directory."""

    storage: Path
    experiment: Path
    metrics: Path
    best_model: Path
    pareto: Path
    artifacts: Path

    @classmethod
    def under(cls, workdir: Path, params: Params) -> TunePaths:
        workdir = Path(workdir).resolve()
        storage = resolve(workdir, params.ray.storage_path)
        return cls(
            storage=storage,
            experiment=storage / EXPERIMENT_NAME,
            metrics=workdir / TUNE_METRICS,
            best_model=workdir / CANDIDATES["tune"],
            pareto=workdir / REPORTS_DIR / "tune_pareto.png",
            artifacts=registry_root(workdir) / "mlartifacts",  # next to the tracking store
        )


def run(params: Params, workdir: Path, resume: bool = False) -> dict[str, Any]:
    """Search (or resume the interrupted search), write the outputs, return the summary."""

    workdir = Path(workdir).resolve()
    paths = TunePaths.under(workdir, params)
    _check_inputs(params, workdir)
    resumed = resume and Tuner.can_restore(paths.experiment)
    if not resumed:  # a fresh search never mixes with an older one's trials
        shutil.rmtree(paths.experiment, ignore_errors=True)
    with ray_session(params.ray) as ray_info:
        if ray_info.get("dashboard_url"):
            print(f"Ray dashboard: {ray_info['dashboard_url']}", file=sys.stderr, flush=True)
        tuner, concurrency = _tuner(params, workdir, paths, resumed)
        started = time.perf_counter()
        tuner.fit()
        wall_time_s = time.perf_counter() - started
    trials = ExperimentAnalysis(str(paths.experiment)).trials
    rows = _rows(trials, params, paths)
    summary = _summary(params, paths, rows, concurrency, wall_time_s, resumed)
    summary["ray_address"] = ray_info.get("address", "")
    best = write_results(rows, summary, paths.metrics, paths.best_model)
    plot_pareto(rows, best, paths.pareto)
    return {**summary, "best": _brief(best)}


def _check_inputs(params: Params, workdir: Path) -> None:
    """Fail before Ray starts when the crops or the validation annotations are missing."""

    crop_shards(workdir, "train")
    annotations = TrainPaths.under(workdir, params).annotations
    if not annotations.is_file():
        raise MissingInputError(
            f"{annotations}: validation annotations not found (data.root); "
            "every trial scores COCO AP against them"
        )
    check_space_fits_init(params, workdir)


def check_space_fits_init(params: Params, workdir: Path) -> None:
    """Every trial starts from `train.init`'s weights: a space that changes the architecture
    (anything in model.* but the cycles, which share one set of layers) cannot."""

    init = resolve_init(params, workdir)
    if init is None:
        return
    for key in params.tune.space:
        if key.startswith("model.") and key != "model.cycles":
            field = key.removeprefix("model.")
            raise ConfigError(
                f"tune.space.{key}: every trial starts from train.init ({params.train.init}), "
                f"weights of one architecture ({field} {init.config.get(field)!r}); search "
                f"{key} from scratch (--set train.init=scratch) or search other keys"
            )


def _tuner(params: Params, workdir: Path, paths: TunePaths, resumed: bool):
    """A new Tuner, or the interrupted one restored; and how many trials run at once."""

    resources = ray.cluster_resources()
    check_fits(params.ray, resources)
    concurrency = max_concurrent_trials(params.tune, params.ray, resources)
    trainable = tune.with_resources(
        tune.with_parameters(
            drive_trial,
            base_params=params.to_dict(),
            workdir=str(workdir),
            experiment_dir=str(paths.experiment),
        ),
        DRIVER_RESOURCES,
    )
    if resumed:
        # Failed trials stay failed (an invalid config would only fail again).
        tuner = tune.Tuner.restore(
            str(paths.experiment), trainable, resume_unfinished=True, resume_errored=False
        )
        return tuner, concurrency
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(params.tune.space),
        tune_config=tune.TuneConfig(
            metric=SCORE,
            mode="max",
            scheduler=_scheduler(params),
            search_alg=_searcher(params, concurrency),
            num_samples=params.tune.num_samples,
            time_budget_s=params.tune.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_NAME,
            storage_path=str(paths.storage),
            # A crash is the trial's result: recorded as failed, never retried by Tune (Ray
            # Train already retries worker failures train.max_failures times).
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=_callbacks(params, workdir, paths),
            verbose=1,
        ),
    )
    return tuner, concurrency


def _scheduler(params: Params):

    if params.tune.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr=EPOCHS_DONE,
        max_t=params.tune.max_epochs,
        grace_period=params.tune.grace_period,
        reduction_factor=params.tune.reduction_factor,
        # A trial at max_t ends by itself (train.epochs = max_t) and so shuts its workers
        # down in order; a stop would kill it mid-way through that.
        stop_last_trials=False,
    )


def _searcher(params: Params, concurrency: int):
    """Random search seeded by train.seed: the same params.yaml samples the same trials.

    Over a finite space the trials are distinct configurations, drawn without replacement
    (`distinct_points`, handed to the generator as the points it evaluates); a space with a
    continuous domain is sampled by Tune. The generator limits concurrency itself
    (TuneConfig's max_concurrent_trials is ignored with it); without a limit every trial
    starts at once, each driver waits for worker CPUs another holds, and Ray Data gets
    none: the search hangs.
    """

    tune = params.tune
    points, _ = distinct_points(tune.space, tune.num_samples, params.train.seed)
    return BasicVariantGenerator(
        points_to_evaluate=points, max_concurrent=concurrency, random_state=params.train.seed
    )


def _callbacks(params: Params, workdir: Path, paths: TunePaths) -> list:

    describe = functools.partial(
        trial_cost, base_params=params.to_dict(), max_epochs=params.tune.max_epochs
    )
    mlflow = MlflowTrials(
        tracking_uri=tracking_uri(params, workdir),
        experiment=f"{params.registry.experiment}-tune",
        artifact_root=paths.artifacts,
        search=str(paths.experiment),
        describe=describe,
    )
    return [
        PlacementGroupJanitor(),
        mlflow,
        TrialLines(params.tune.num_samples, params.tune.max_epochs),
    ]


def _rows(trials: list, params: Params, paths: TunePaths) -> list[dict[str, Any]]:

    base, max_epochs = params.to_dict(), params.tune.max_epochs
    rows = []
    for trial in sorted(trials, key=lambda trial: trial.trial_id):
        cost = trial_cost(trial.config, base_params=base, max_epochs=max_epochs)
        rows.append(trial_row(trial, run_dir(paths.experiment, trial.trial_id), cost, max_epochs))
    return rows


def _summary(
    params: Params,
    paths: TunePaths,
    rows: list[dict[str, Any]],
    concurrency: int,
    wall_time_s: float,
    resumed: bool,
) -> dict[str, Any]:

    trial_time = sum(row["time_s"] or 0.0 for row in rows)
    _, repeats = distinct_points(params.tune.space, params.tune.num_samples, params.train.seed)
    scored = [row["student_ap"] for row in rows if row.get("student_ap") is not None]
    learned = bool(scored) and max(scored) >= params.registry.min_ap
    return {
        "distinct_configs": len({repr(sorted(row["config"].items())) for row in rows}),
        "repeats": repeats,  # None, or why some trials repeat a configuration
        # below registry.min_ap no trial learned anything worth naming: the summary says so
        "learned": learned,
        "min_ap": params.registry.min_ap,
        "metric": "student_ap",
        "scheduler": params.tune.scheduler,
        "scheduler_metric": "score (student_ap, ties broken by the student's heatmap loss)",
        "max_epochs": params.tune.max_epochs,
        "num_samples": params.tune.num_samples,
        "max_concurrent": concurrency,
        "trial_count": len(rows),
        **{status: sum(row["status"] == status for row in rows) for status in STATUSES},
        # trials never sampled: the time budget ran out first
        "not_sampled": max(params.tune.num_samples - len(rows), 0),
        "time_budget_s": params.tune.time_budget_s,
        "time_budget_reached": wall_time_s >= params.tune.time_budget_s,
        "wall_time_s": wall_time_s,
        "trials_time_s": trial_time,
        "train_time_s": sum(row["train_time_s"] for row in rows),
        "resumed": resumed,
        "experiment": str(paths.experiment),
        "best_model": str(paths.best_model),
        "pareto_plot": str(paths.pareto),
    }


def _brief(best: dict[str, Any] | None) -> dict[str, Any] | None:
    if best is None:
        return None
    keys = ("id", "config", "student_ap", "teacher_ap", "params", "gflops", "epochs_run")
    return {key: best[key] for key in keys}
