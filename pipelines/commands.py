"""`sdpose pipeline` and `sdpose serve`: the orchestration's own commands.

They reach the `sdpose` command line through the `sdpose.commands` entry point group
(pyproject.toml), so the library's CLI lists them without importing this package.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Literal, NamedTuple

from pipelines.local import configure_local_prefect
from pipelines.serve import serve
from sdpose.cli import params_from_args
from sdpose.config import Params, load_params, parse_override
from sdpose.core.paths import (
    CARD_NAME,
    EVAL_METRICS,
    EXPORT_DIR,
    ONNX_NAME,
    REPORTS_DIR,
    TRAIN_METRICS,
    TUNE_METRICS,
)
from sdpose.core.workspace import hold_workspace
from sdpose.deploy.registry import registered_line


def add_commands(
    commands: argparse._SubParsersAction,
    add_params_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `pipeline` and `serve` on the `sdpose` command line."""
    pipeline = commands.add_parser(
        "pipeline", help="run the whole Prefect flow locally (no server needed)"
    )
    add_params_options(pipeline)
    pipeline.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when another run holds the workspace, wait up to this long for it (default: "
        "stop at once and say who holds it)",
    )
    pipeline.set_defaults(handler=run_pipeline)
    serve = commands.add_parser("serve", help="serve the Prefect deployment sdpose/full-pipeline")
    serve.set_defaults(handler=serve_deployment)
    add_pretrained_commands(commands)


def add_pretrained_commands(commands: argparse._SubParsersAction) -> None:
    """`sdpose pretrained ship | list` (pipelines/pretrained.py, imported when run: it
    loads torch and the evaluation, which every other command would pay for at start-up)."""
    pretrained = commands.add_parser("pretrained", help="the pretrained weights the package ships")
    actions = pretrained.add_subparsers(dest="action", required=True)
    ship = actions.add_parser("ship", help="ship a training run's best student with its card")
    ship.add_argument("name", help="the name train.init will take")
    ship.add_argument("--workdir", type=Path, required=True, help="the training run's folder")
    ship.add_argument("--heldout-seed", type=int, default=2, help="seed of the other val set")
    ship.add_argument("--heldout-images", type=int, default=500)
    ship.add_argument(
        "--coco", type=Path, default=None, help="a COCO annotation file beside an images/ folder"
    )
    ship.add_argument("--note", default="", help="why this leg was trained, for the card")
    ship.add_argument("--plot", type=Path, default=None, help="draw the AP curve of every leg")
    ship.set_defaults(handler=_ship_pretrained)
    listing = actions.add_parser("list", help="the shipped weights and their measured AP")
    listing.set_defaults(handler=_list_pretrained)


def _ship_pretrained(args: argparse.Namespace) -> int:
    from pipelines.pretrained import plot_curves, ship  # lazy: torch, evaluation: 1.3 s

    card = ship(
        args.name, args.workdir, heldout_seed=args.heldout_seed,
        heldout_images=args.heldout_images, coco=args.coco, note=args.note,
    )  # fmt: skip
    print(json.dumps(card["ap"], indent=2))
    if args.plot:
        print(f"curve: {plot_curves(card, args.plot)}")
    print(f"shipped {args.name} (sdpose/models/weights/{args.name}.pt and .json)")
    return 0


def _list_pretrained(args: argparse.Namespace) -> int:
    from pipelines.pretrained import list_lines  # lazy: torch, evaluation: 1.3 s

    print("\n".join(list_lines()) or "no pretrained weights are shipped")
    return 0


def run_pipeline(args: argparse.Namespace) -> int:
    """The whole flow in this process (ephemeral Prefect), then where to look."""
    # lazy: Prefect reads its settings when imported, so after configure_local_prefect;
    # and Prefect costs every other command 2.2 s at start-up
    from pipelines.flow import sdpose_flow

    workdir = Path.cwd()
    params_from_args(args)  # fail before Prefect starts on a bad value
    overrides = dict(parse_override(text) for text in args.overrides)
    # a workspace run checks for another before any service starts (an experiment, any
    # override, runs in its own copy of the workspace and needs no lock)
    holding = nullcontext() if overrides else hold_workspace(workdir, "sdpose pipeline", args.wait)
    with holding:
        configure_local_prefect(workdir)
        results = sdpose_flow(overrides=overrides, workdir=str(workdir))
    for result in results:
        print(f"{result['stage']:>10}: {'ran' if result['ran'] else 'up to date, skipped'}")
    experiment = next((result["experiment"] for result in results if "experiment" in result), None)
    if experiment:  # the workspace holds none of its outputs (docs/experiments.md)
        print(f"\nDVC experiment {experiment}: params.yaml and the workspace are unchanged.")
        print("  dvc exp show                    # its params and metrics next to the others")
        print(f"  dvc exp apply {experiment}   # bring its params, metrics and outputs in")
        return 0
    print_where_to_look(workdir, load_params(workdir / "params.yaml"))
    return 0


def serve_deployment(args: argparse.Namespace) -> int:
    serve(Path.cwd())
    return 0


def started_from(workdir: Path) -> str | None:
    """What the trained student started from (train.json), when it was not scratch."""
    train_path = workdir / TRAIN_METRICS
    if not train_path.exists():
        return None
    train = json.loads(train_path.read_text())
    if train.get("init", "scratch") == "scratch" or train.get("initial_student_ap") is None:
        return None
    return (
        f"  started from {train['init']}: student AP {train['initial_student_ap']:.4f} on "
        f"this val set before fine-tuning, {train['best_student_ap']:.4f} after "
        f"{train['epochs']} epochs"
    )


class Look(NamedTuple):
    """One thing to look at after a run: a file of the workspace (`where` relative to it), a
    command to run, or a note; `what` says what it shows."""

    where: str
    what: str
    kind: Literal["file", "command", "note"] = "file"


# A workspace run's outputs worth opening, in the order a user reads them.
RUN_OUTPUTS: tuple[tuple[Path, str], ...] = (
    (TRAIN_METRICS, "training summary (student and teacher AP)"),
    (TUNE_METRICS, "every trial of the search"),
    (EVAL_METRICS, "evaluation metrics"),
    (REPORTS_DIR / "eval.md", "evaluation report with plots"),
    (EXPORT_DIR / ONNX_NAME, "the exported one-cycle student"),
    (EXPORT_DIR / CARD_NAME, "its model card"),
)


def where_to_look(workdir: Path, params: Params) -> list[Look]:
    """What a workspace run left to look at: the outputs it made, the registered model,
    MLflow's UI and the stage logs. The one list: `sdpose pipeline` prints it and the flow's
    summary artifact shows it."""
    looks = [Look(path.as_posix(), what) for path, what in RUN_OUTPUTS if (workdir / path).exists()]
    if registered := registered_line(params, workdir):
        looks.append(Look(registered.removeprefix("- "), "", "note"))
    uri = params.registry.tracking_uri
    looks.append(Look(f"mlflow ui --backend-store-uri {uri}", "runs and registry", "command"))
    looks.append(Look("logs/<stage>.log", "every stage's full output"))
    return looks


def print_where_to_look(workdir: Path, params: Params) -> None:
    """What the run made and how to open it: the first thing a user needs after `make run`."""
    eval_path = workdir / EVAL_METRICS
    if eval_path.exists():
        evaluation = json.loads(eval_path.read_text())
        print(f"\nStudent AP (val, {evaluation['boxes']} boxes): {evaluation['student_ap']:.4f}")
        start = started_from(workdir)
        if start:
            print(start)
    print("\nWhere to look:")
    for look in where_to_look(workdir, params):
        if look.kind == "file":
            print(f"  {look.where:<36} {look.what}")
        elif look.kind == "command":
            print(f"  {look.where}   # {look.what}")
        else:
            print(f"  {look.where}")
    print(
        "  Ray dashboard: the run's Ray served it while the run lasted (the URL is printed "
        "above); for one that stays, `ray start --head` and run with ray.address=auto"
    )
