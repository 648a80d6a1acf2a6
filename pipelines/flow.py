"""The Prefect flow `sdpose`: every DVC stage, in order, each as a task.

Without overrides, stages run through DVC in the workspace
(`Repo.reproduce(stage, single_item=True)`), so the flow skips exactly what `dvc repro`
would skip and `dvc.lock` records what the flow ran. With overrides (validated before
anything starts), the run is a DVC experiment named after the flow run, in a temporary
workspace (`pipelines.experiment`): params.yaml and the workspace's outputs stay untouched,
and concurrent runs cannot collide. docs/experiments.md says where to find its outputs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import yaml
from dvc.repo import Repo
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from pipelines.commands import where_to_look
from pipelines.experiment import experiment_json, experiment_name, run_experiment, set_param_args
from sdpose.config import Params, load_params
from sdpose.console import LOG_DIR_ENV
from sdpose.core.paths import EVAL_METRICS
from sdpose.core.workspace import hold_workspace
from sdpose.deploy.registry import registered_line
from sdpose.ray_runtime import run_ray

RETRIED_STAGES = ("train", "tune")


def pipeline_stages(workdir: Path) -> list[str]:
    """Stage names of dvc.yaml in file order (DVC's dependency order for this pipeline)."""
    return list(yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"])


@task(task_run_name="stage-{stage}")
def run_stage(stage: str, workdir: str) -> dict[str, Any]:
    """Reproduce one DVC stage if it is out of date; report whether it ran."""
    logger = get_run_logger()
    # the stage command prints its own start and result lines; DVC's "Running stage" and
    # git hints would repeat them (dvc.lock is staged by core.autostage in .dvc/config)
    logging.getLogger("dvc").setLevel(logging.WARNING)
    with Repo(workdir) as repo:
        ran = repo.reproduce(stage, single_item=True)
    status = "ran" if ran else "skipped (up to date)"
    logger.info("stage %s: %s", stage, status)
    return {"stage": stage, "ran": bool(ran)}


@task(task_run_name="experiment-{name}")
def run_experiment_task(name: str, set_args: list[str], workdir: str) -> dict[str, Any]:
    """The whole pipeline as DVC experiment `name` (all stages, DVC's skips included)."""
    logger = get_run_logger()
    commit = run_experiment(Path(workdir), name, set_args, log=logger.info)
    logger.info("experiment %s saved as %s; `dvc exp apply %s` brings it in", name, commit, name)
    return {"stage": f"experiment {name}", "ran": True, "experiment": name, "commit": commit}


EVAL_COLUMNS = ("AP", "AP50", "AP75", "APm", "APl", "AR")


def evaluation_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics/eval.json -> one row per evaluated model (train, tune): cost, student AP
    columns and the teacher's AP, the numbers a user compares first."""
    rows = []
    for name, model in metrics.get("models", {}).items():
        student, teacher = model.get("student", {}), model.get("teacher", {})
        rows.append(
            {
                "model": name + (" (best)" if name == metrics.get("best") else ""),
                "preset": model.get("preset"),
                "cycles": model.get("cycles"),
                "params": model.get("params"),
                "GFLOPs": model.get("gflops"),
                **{f"student {column}": student.get(column) for column in EVAL_COLUMNS},
                "teacher AP": teacher.get("AP"),
            }
        )
    return rows


def _summary_lines(params: Params, workdir: Path) -> list[str]:
    """The flow run's summary: the workspace, then `where_to_look` as markdown."""
    lines = ["# sdpose pipeline", ""]
    lines.append(f"- outputs and params: the workspace `{workdir}` (dvc.lock records the run)")
    for look in where_to_look(workdir, params):
        if look.kind == "file":
            lines.append(f"- `{(workdir / look.where).resolve()}`: {look.what}")
        elif look.kind == "command":
            lines.append(f"- `{look.where}`: {look.what}")
        else:
            lines.append(f"- {look.where}")
    return lines


def _experiment_lines(params: Params, workdir: Path, result: dict[str, Any]) -> list[str]:
    name, commit = result["experiment"], result["commit"]
    lines = ["# sdpose pipeline (DVC experiment)", ""]
    if registered := registered_line(params, workdir, exported=True):
        lines.append(registered)
    lines += [
        f"- DVC experiment: `{name}` (commit `{commit[:7]}`) of `{workdir}`; params.yaml and"
        " the workspace's outputs were not touched",
        f"- see it: `dvc exp show`; bring its params, metrics and outputs into the workspace:"
        f" `dvc exp apply {name}`",
    ]
    return lines


def _publish_artifacts(lines: list[str], metrics: dict[str, Any] | None) -> None:
    """A table of the evaluation and a markdown summary, attached to the flow run."""
    if metrics:
        create_table_artifact(
            evaluation_rows(metrics),
            key="sdpose-eval",
            description=f"COCO keypoint AP on {metrics.get('instances')} val instances "
            f"({metrics.get('boxes')} boxes); the student is what ships",
        )
    create_markdown_artifact("\n".join(lines), key="sdpose-summary")


def _workspace_metrics(workdir: Path) -> dict[str, Any] | None:
    eval_path = workdir / EVAL_METRICS
    return json.loads(eval_path.read_text()) if eval_path.exists() else None


@flow(name="sdpose", log_prints=True)
def sdpose_flow(overrides: dict[str, Any] | None = None, workdir: str = ".") -> list[dict]:
    """Run the whole pipeline; a bad override fails the run before any stage starts."""
    root = Path(workdir).resolve()
    params = load_params(root / "params.yaml", overrides or {})
    # a value DVC's -S cannot carry fails here, before anything starts
    current = yaml.safe_load((root / "params.yaml").read_text()) or {}
    set_args = set_param_args(overrides or {}, current)
    # DVC runs stage commands through a shell: make this interpreter's `sdpose` the one found.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    run_name = flow_run.get_name() or "run"
    name = experiment_name(run_name)
    logs = root / "logs" / name if overrides else root / "logs"
    os.environ[LOG_DIR_ENV] = str(logs)  # an experiment's temporary copy logs here too
    # a workspace run holds the workspace (an experiment runs in its own copy): a second one
    # stops at once, before Ray starts, instead of failing on DVC's lock later
    holding = nullcontext() if overrides else hold_workspace(root, f"sdpose pipeline {run_name}")
    with holding, run_ray(params.ray, record=logs / "ray.json") as ray_info:
        if ray_info["started"]:
            url, address = ray_info["dashboard_url"], ray_info["address"]
            print(f"Ray dashboard of this run: {url} (Ray at {address})")
        if overrides:
            # A retry reruns the experiment; DVC's run-cache restores the stages that finished.
            result = run_experiment_task.with_options(retries=params.pipeline.retries)(
                name, set_args, str(root)
            )
            metrics = experiment_json(root, result["commit"], EVAL_METRICS.as_posix())
            _publish_artifacts(_experiment_lines(params, root, result), metrics)
            return [result]
        results = []
        for stage in pipeline_stages(root):
            retries = params.pipeline.retries if stage in RETRIED_STAGES else 0
            results.append(run_stage.with_options(retries=retries)(stage, str(root)))
    _publish_artifacts(_summary_lines(params, root), _workspace_metrics(root))
    return results
