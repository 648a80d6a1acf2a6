"""`sdpose tune` on the tiny synthetic crops: real Ray Tune searches of real Ray Train runs.

The search test draws (seeded, without replacement) 4 of the 6 configurations of one valid
and one invalid embedding size and three learning rates, so that it holds a trial that must
fail (dim 36 with 8 heads), a good trial, a hopeless one (lr 1e-8) that ASHA must stop at
its first rung, and a good one after it, which can only train once the stopped trial's
workers gave their CPUs back; no configuration runs twice. The resume
test kills a search after its first trial finished and resumes it: the finished trial is
not run again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sdpose.config import ConfigError, RayParams, TuneParams, dump_params
from sdpose.core.presets import resolve_model_config
from sdpose.models.checkpoint import load_checkpoint
from sdpose.models.cost import model_info
from sdpose.tuning.space import (
    InvalidTrialConfigError,
    max_concurrent_trials,
    search_space,
    trial_params,
)
from sdpose.tuning.stage import run

pytestmark = pytest.mark.integration

TINY_TUNE = {
    "model.depth": 1,
    "model.heads": 8,
    "evaluate.flip_test": False,
    "tune.max_epochs": 2,
    "tune.grace_period": 1,
    "tune.reduction_factor": 2,
    "tune.scheduler": "asha",
    "tune.max_concurrent": 1,  # trials run in sampling order: ASHA's decisions are fixed
}
# In one warm-up epoch the loss falls about linearly in the lr, and ASHA's first-rung cutoff is
# the mean of the two trials before the last one (2e-3 and 1e-8): a last lr of 1e-3 sat on that
# cutoff and was stopped on noise once; 4e-3 clears it by three times the 2e-3 trial's drop.
GOOD_LR, HOPELESS_LR, OTHER_GOOD_LR = 4e-3, 1e-8, 2e-3
# Seed 19 draws [dim 36 lr 1e-8, dim 32 lr 2e-3, dim 32 lr 1e-8, dim 32 lr 1e-3]; asserted below.
SEARCH = {
    **TINY_TUNE,
    "train.seed": 19,
    "tune.num_samples": 4,
    "tune.space": {
        "model.dim": {"choice": [32, 36]},
        "train.lr": {"choice": [GOOD_LR, HOPELESS_LR, OTHER_GOOD_LR]},
    },
}


@pytest.mark.timeout(900)
def test_search_records_trials_stops_early_and_survives_a_bad_config(
    train_workdir, tiny_params
) -> None:
    params = tiny_params(train_workdir, SEARCH)
    summary = run(params, train_workdir)

    table = json.loads((train_workdir / "metrics" / "tune.json").read_text())
    rows = table["trials"]
    assert len(rows) == 4
    configs = [(row["config"]["model.dim"], row["config"]["train.lr"]) for row in rows]
    valid = [row for row in rows if row["config"]["model.dim"] == 32]
    assert len(set(configs)) == 4 and summary["distinct_configs"] == 4  # the budget is spent
    assert any(dim == 36 for dim, _ in configs), f"seed 19 no longer draws dim 36: {configs}"
    order = [row["config"]["train.lr"] for row in valid]
    expected_order = [OTHER_GOOD_LR, HOPELESS_LR, GOOD_LR]
    assert order == expected_order, f"seed 19 draws another order: {configs}"

    for row in rows:
        if row["config"]["model.dim"] == 36:  # 36 % 8 != 0: failed with the keyed reason
            assert row["status"] == "failed"
            assert row["error"] == "model.dim: 36 must be divisible by heads (8)"
            assert row["epochs_run"] == 0 and row["checkpoint"] is None
        else:
            assert row["status"] in ("completed", "stopped") and row["error"] is None
    good, hopeless, after = valid
    assert good["status"] == "completed" and good["epochs_run"] == 2
    # ASHA's first rung (1 epoch) cut the trial that ranked below the one before it
    assert hopeless["status"] == "stopped" and hopeless["epochs_run"] == 1
    # the stopped trial's driver was killed mid-run; its workers' CPUs came back
    assert after["status"] == "completed" and after["epochs_run"] == 2

    # cost of the sampled model, counted independently of the search
    expected = model_info(resolve_model_config("sdpose-nano", dim=32, depth=1, heads=8))
    for row in valid:
        assert row["params"] == expected["params"]
        assert row["gflops"] == pytest.approx(expected["gflops"], rel=1e-6)

    scored = [row for row in rows if row["status"] != "failed"]
    best = table["best"]
    assert best["student_ap"] == max(row["student_ap"] for row in scored)
    assert best["id"] in {row["id"] for row in scored}
    student, payload = load_checkpoint(train_workdir / "models" / "tune" / "best.pt")
    assert payload["student_ap"] == best["student_ap"]
    assert student.config.dim == best["config"]["model.dim"]
    assert (train_workdir / "reports" / "tune_pareto.png").stat().st_size > 1000

    assert summary["trial_count"] == 4
    assert summary["failed"] == sum(dim == 36 for dim, _ in configs)
    assert summary["stopped"] >= 1 and summary["max_concurrent"] == 1
    _check_mlflow(train_workdir, rows)


def _check_mlflow(workdir: Path, rows: list[dict]) -> None:
    """One MLflow run per trial: status, error, cost and per-epoch student AP."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("sdpose-tune")
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {row["id"] for row in rows}
    for row in rows:
        found = runs[row["id"]]
        if row["status"] == "failed":
            assert found.info.status == "FAILED"
            assert found.data.tags["error"] == row["error"]
            continue
        assert found.info.status == "FINISHED"
        assert found.data.params["gflops"] == str(row["gflops"])
        history = client.get_metric_history(found.info.run_id, "student_ap")
        assert [metric.step for metric in history] == list(range(1, row["epochs_run"] + 1))


@pytest.mark.timeout(900)
def test_resume_keeps_finished_trials_and_runs_the_rest(train_workdir, tiny_params) -> None:
    overrides = {
        **TINY_TUNE,
        "tune.scheduler": "fifo",
        "tune.max_epochs": 1,
        "tune.num_samples": 2,
        "tune.space": {"model.dim": {"choice": [32]}},
    }
    params = tiny_params(train_workdir, overrides)
    (train_workdir / "params.yaml").write_text(dump_params(params))
    experiment = train_workdir / "models" / "ray" / "sdpose-tune"

    search = _start_search(train_workdir)
    try:
        finished = _wait_for_finished_trial(experiment, search)
    finally:
        os.killpg(search.pid, signal.SIGKILL)  # the search and the Ray it started, at once
        search.wait()
    assert len(finished) == 1  # the other trial was running or waiting
    before = {trial_id: _trial_files(experiment, trial_id) for trial_id in finished}

    summary = run(params, train_workdir, resume=True)

    table = json.loads((train_workdir / "metrics" / "tune.json").read_text())
    assert summary["resumed"] is True
    assert len(table["trials"]) == 2
    assert all(row["status"] == "completed" for row in table["trials"])
    for trial_id, files in before.items():
        assert _trial_files(experiment, trial_id) == files  # not run again


def _start_search(workdir: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        from pathlib import Path
        from sdpose.config import load_params
        from sdpose.tuning.stage import run
        workdir = Path({str(workdir)!r})
        run(load_params(workdir / "params.yaml"), workdir)
    """)
    log = (workdir / "search.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: one signal stops it all
    )


def _wait_for_finished_trial(experiment: Path, search: subprocess.Popen) -> list[str]:
    """Ids of the trials Tune's saved state records as finished, once there is one."""
    from ray.tune import ExperimentAnalysis

    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        assert search.poll() is None, "the search ended before it could be interrupted"
        if list(experiment.glob("experiment_state-*.json")):
            trials = ExperimentAnalysis(str(experiment)).trials
            finished = [trial.trial_id for trial in trials if trial.status == "TERMINATED"]
            if finished:
                return finished
        time.sleep(2)
    raise TimeoutError("no trial finished in time")


def _trial_files(experiment: Path, trial_id: str) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file a trial wrote: its Tune results and its Train run."""
    folders = [*experiment.glob(f"*_{trial_id}_*"), experiment / "runs" / trial_id]
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# ------------------------------------------------------------------ pure helpers (fast)
def test_search_space_kinds_and_bad_bounds() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    domains = search_space(
        {
            "model.dim": {"choice": [48, 64]},
            "train.lr": {"loguniform": [1e-4, 1e-2]},
            "train.weight_decay": {"uniform": [0.0, 0.1]},
            "model.depth": {"randint": [1, 4]},
        }
    )
    assert isinstance(domains["model.dim"], Categorical)
    assert domains["model.dim"].categories == [48, 64]
    assert isinstance(domains["train.lr"], Float) and domains["train.lr"].lower == 1e-4
    assert isinstance(domains["model.depth"], Integer) and domains["model.depth"].upper == 4
    with pytest.raises(ConfigError, match=r"tune.space.train.lr: loguniform needs \[low, high\]"):
        search_space({"train.lr": {"loguniform": [1e-2, 1e-4]}})
    with pytest.raises(ConfigError, match="tune.space.model.dim: choice needs a non-empty"):
        search_space({"model.dim": {"choice": []}})


def test_trial_params_apply_the_sample_and_name_the_broken_key() -> None:
    base = tiny_base()
    params = trial_params(base, {"model.dim": 64, "train.lr": 0.01}, max_epochs=3)
    assert (params.model.dim, params.train.lr, params.train.epochs) == (64, 0.01, 3)
    with pytest.raises(InvalidTrialConfigError) as caught:
        trial_params(base, {"model.dim": 100, "model.heads": 8}, max_epochs=3)
    assert str(caught.value) == "model.dim: 100 must be divisible by heads (8)"


def tiny_base() -> dict:
    from sdpose.config import Params

    return Params().to_dict()


def test_concurrency_leaves_a_cpu_for_ray_data() -> None:
    tune = TuneParams(num_samples=8)
    two_workers = RayParams(num_workers=2, cpus_per_worker=0.5)
    assert max_concurrent_trials(tune, two_workers, {"CPU": 2.0}) == 1  # (2 - 1) / 1
    assert max_concurrent_trials(tune, two_workers, {"CPU": 16.0}) == 8  # capped by samples
    one_worker = RayParams(num_workers=1, cpus_per_worker=0.5)
    assert max_concurrent_trials(tune, one_worker, {"CPU": 2.0}) == 2  # (2 - 1) / 0.5
    gpus = RayParams(num_workers=2, cpus_per_worker=1, use_gpu=True)
    assert max_concurrent_trials(tune, gpus, {"CPU": 64.0, "GPU": 4.0}) == 2
    assert max_concurrent_trials(TuneParams(max_concurrent=3), two_workers, {"CPU": 2.0}) == 3
