"""The Prefect flow `sdpose`: every DVC stage, in order, each as a task.

Stages run through DVC (`Repo.reproduce(stage, single_item=True)`), so the flow skips
exactly what `dvc repro` would skip and `dvc.lock` records what the flow ran. Flow
parameters are params.yaml overrides; they are validated before any stage starts and then
written into params.yaml, as `dvc exp run -S` does, so DVC sees the same values.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from sdpose.config import Params, load_params

RETRIED_STAGES = ("train", "tune")


def pipeline_stages(workdir: Path) -> list[str]:
    """Stage names of dvc.yaml in file order (DVC's dependency order for this pipeline)."""
    return list(yaml.safe_load((workdir / "dvc.yaml").read_text())["stages"])


def write_overrides(workdir: Path, overrides: dict[str, Any]) -> None:
    """Set dotted keys in params.yaml in place, keeping its comments and order."""
    from ruamel.yaml import YAML

    handler = YAML()
    path = workdir / "params.yaml"
    document = handler.load(path.read_text())
    for dotted, value in overrides.items():
        node = document
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    with path.open("w") as stream:
        handler.dump(document, stream)


@task(task_run_name="stage-{stage}")
def run_stage(stage: str, workdir: str) -> dict[str, Any]:
    """Reproduce one DVC stage if it is out of date; report whether it ran."""
    from dvc.repo import Repo

    logger = get_run_logger()
    with Repo(workdir) as repo:
        ran = repo.reproduce(stage, single_item=True)
    status = "ran" if ran else "skipped (up to date)"
    logger.info("stage %s: %s", stage, status)
    return {"stage": stage, "ran": bool(ran)}


def registered_line(params: Params, workdir: Path) -> str | None:
    """The newest registered student; the model card cannot say, it is written before the
    export stage registers it."""
    from sdpose.registry import list_versions

    if not (workdir / "models" / "export" / "model_card.json").exists():  # export has not run
        return None
    versions = list_versions(params, workdir)
    if not versions:
        return None
    newest = versions[0]
    champion = " (champion)" if newest["champion"] else ""
    if newest.get("not_champion"):
        champion = f" (not champion: {newest['not_champion']})"
    name = params.registry.model_name
    return f"- registered model: `{name}` version {newest['version']}{champion}"


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
    lines = ["# sdpose pipeline", ""]
    if registered := registered_line(params, workdir):
        lines.append(registered)
    for name in ("reports/eval.md", "metrics/train.json", "metrics/tune.json"):
        if (workdir / name).exists():
            lines.append(f"- `{(workdir / name).resolve()}`")
    train_path = workdir / "metrics" / "train.json"
    dashboard = (
        json.loads(train_path.read_text()).get("dashboard_url") if train_path.exists() else ""
    )
    if dashboard:  # a local Ray lives as long as its stage; a cluster's dashboard stays
        lines.append(f"- Ray dashboard of the training run: {dashboard}")
    return lines


def _publish_artifacts(workdir: Path, params: Params) -> None:
    """A table of the evaluation and a markdown summary, attached to the flow run."""
    eval_path = workdir / "metrics" / "eval.json"
    if eval_path.exists():
        metrics = json.loads(eval_path.read_text())
        create_table_artifact(
            evaluation_rows(metrics),
            key="sdpose-eval",
            description=f"COCO keypoint AP on {metrics.get('instances')} val instances "
            f"({metrics.get('boxes')} boxes); the student is what ships",
        )
    create_markdown_artifact("\n".join(_summary_lines(params, workdir)), key="sdpose-summary")


@flow(name="sdpose", log_prints=True)
def sdpose_flow(overrides: dict[str, Any] | None = None, workdir: str = ".") -> list[dict]:
    """Run the whole pipeline; a bad override fails the run before any stage starts."""
    root = Path(workdir).resolve()
    params = load_params(root / "params.yaml", overrides or {})
    if overrides:
        write_overrides(root, overrides)
    # DVC runs stage commands through a shell: make this interpreter's `sdpose` the one found.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    results = []
    for stage in pipeline_stages(root):
        retries = params.train.retries if stage in RETRIED_STAGES else 0
        results.append(run_stage.with_options(retries=retries)(stage, str(root)))
    _publish_artifacts(root, params)
    return results
