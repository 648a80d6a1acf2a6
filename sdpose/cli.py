"""`sdpose` command line: one command per stage plus model and dataset utilities.

Each command is a thin call of a library function. What needs torch or Ray is imported
when its command runs (`# lazy`, with the measured cost beyond `sdpose.config`'s 0.4 s): the
stage modules through `sdpose.stages`, and model-info, convert-checkpoint and predict here,
so that `sdpose config show` and `--help` answer in half a second.
Exit status: 0 success, 2 bad input or parameters (`sdpose.core.errors.InputError`: the
message names file, record or key), 1 any other failure (one line; the traceback is in
logs/<command>.log), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from sdpose.config import (
    DEFAULT_PARAMS,
    ConfigError,
    Params,
    dump_params,
    load_params,
)
from sdpose.console import log_dir, result_line, stage_console
from sdpose.core.errors import InputError
from sdpose.core.workspace import WorkspaceBusyError, hold_workspace
from sdpose.deploy.registry import RegistryError, download_weights, list_versions
from sdpose.evaluation.coco_ap import score_results
from sdpose.stages import STAGES

BUSY = 75  # sysexits' EX_TEMPFAIL: another run holds the workspace, try again later
COMMANDS_GROUP = "sdpose.commands"  # entry points: fn(subparsers, add_params_options)


def with_local_init(params: Params, workdir: Path) -> Params:
    """`params` with a registry URI in `train.init` replaced by the downloaded checkpoint.

    The training library reads files only (it sits below the registry); the command that
    starts it fetches the registered version's weights. A version that is missing, or that
    was registered without weights, is a parameter error naming the key.
    """
    if not params.train.init.startswith("models:/"):
        return params
    try:
        path = download_weights(params, workdir, params.train.init)
    except RegistryError as error:
        raise ConfigError(f"train.init: {error}") from None
    return params.model_copy(update={"train": params.train.model_copy(update={"init": str(path)})})


def _add_params_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params", type=Path, default=None, help="parameter file (default: ./params.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, dotted key and YAML value (repeatable): --set model.dim=64",
    )


def params_from_args(args: argparse.Namespace) -> Params:
    """Only the implicit ./params.yaml may be missing (then say so); a given --params must exist."""
    if args.params is not None:
        return load_params(args.params, args.overrides, missing_ok=False)
    if not DEFAULT_PARAMS.exists():
        print(
            f"sdpose {args.command}: note: no ./{DEFAULT_PARAMS} here; using the built-in "
            "defaults (pass --params FILE to use another file)",
            file=sys.stderr,
        )
    return load_params(DEFAULT_PARAMS, args.overrides)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _run_stage(args: argparse.Namespace) -> int:
    """The stage with its detail in logs/<stage>.log and one result line (`--json`: the
    whole summary on stdout instead)."""
    params = params_from_args(args)  # a bad value fails before the log opens, on the terminal
    stage = STAGES[args.command]
    if stage.starts_from_init:
        params = with_local_init(params, Path.cwd())
    options = {option.name: getattr(args, option.name) for option in stage.options}
    options = {key: value for key, value in options.items() if value is not None}
    started = time.perf_counter()
    # one run at a time writes a workspace (a stage run by the pipeline passes through)
    with (
        hold_workspace(Path.cwd(), f"sdpose {args.command}"),
        stage_console(args.command, Path.cwd()) as console,
    ):
        summary = stage.run(params, Path.cwd(), **options)
        console.line(result_line(args.command, summary, time.perf_counter() - started))
    if args.json:
        _print_json(summary)
    return 0


def _config_show(args: argparse.Namespace) -> int:
    print(dump_params(params_from_args(args)), end="")
    return 0


def _model_info(args: argparse.Namespace) -> int:
    from sdpose.models.cost import model_info, model_info_table  # lazy: torch, 1.3 s

    if args.preset:
        info = model_info(args.preset)
        if args.json:
            print(json.dumps(info))
        else:
            _print_table([info])
        return 0
    rows = model_info_table()
    if args.json:
        print(json.dumps(rows))
    else:
        _print_table(rows)
    return 0


def _print_table(rows: list[dict[str, Any]]) -> None:
    columns = ["preset", "cycles", "input", "output", "params", "gflops",
               "gflops_with_attention", "gflops_train"]  # fmt: skip
    # gflops: one-cycle inference multiply-adds (paper convention); train: all cycles.
    print("  ".join(f"{name:>12}" if i else f"{name:<16}" for i, name in enumerate(columns)))
    for row in rows:
        cells = []
        for i, name in enumerate(columns):
            value = row.get(name, "")
            if isinstance(value, float):
                text = f"{value:,.3f}"
            elif isinstance(value, int):
                text = f"{value:,}"
            else:
                text = str(value)
            cells.append(f"{text:>12}" if i else f"{text:<16}")
        print("  ".join(cells))


def _convert_checkpoint(args: argparse.Namespace) -> int:
    from sdpose.models.checkpoint import convert_official_checkpoint  # lazy: torch, 1.3 s

    _print_json(convert_official_checkpoint(args.src, args.dst, args.preset))
    return 0


def _coco_eval(args: argparse.Namespace) -> int:
    stats, ignored = score_results(args.annotations, args.results)
    if ignored:
        print(
            f"sdpose coco-eval: note: {args.results}: ignored {ignored} result(s) whose "
            "category_id is not person",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(stats))
    else:
        for name, value in stats.items():
            print(f"{name:>5}  {value:.4f}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from sdpose.deploy.predict import predict  # lazy: torch and onnx, 2.2 s

    params = params_from_args(args)
    summary = predict(
        args.images, args.boxes, args.model, args.out, params, Path.cwd(), args.runtime, args.int8
    )
    _print_json(summary)
    return 0


def _registry_list(args: argparse.Namespace) -> int:
    rows = list_versions(params_from_args(args), Path.cwd())
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no registered versions yet: run `sdpose export`")
    for row in rows:
        ap = "-" if row["student_ap"] is None else f"{row['student_ap']:.4f}"
        flag = "  <- champion" if row["champion"] else ""
        if row.get("not_champion"):  # refused by the min_ap gate: say so, not just no flag
            flag = f"  (not champion: {row['not_champion']})"
        int8 = "+int8" if row.get("int8") == "registered" else ""  # its int8 file passed
        print(f"v{row['version']:<4} student AP {ap:>7}  {row.get('preset') or '':<16}{int8}{flag}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdpose", description="SDPose self-distilled pose estimation pipeline"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = commands.add_parser("config", help="show the resolved parameters")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the validated parameters as YAML")
    _add_params_options(show)
    show.set_defaults(handler=_config_show)

    for name, stage in STAGES.items():
        command = commands.add_parser(name, help=stage.help)
        _add_params_options(command)
        command.add_argument(
            "--json", action="store_true", help="print the stage's whole summary as JSON"
        )
        for option in stage.options:
            command.add_argument(
                f"--{option.name}", action="store_true", default=None, help=option.help
            )
        command.set_defaults(handler=_run_stage)

    info = commands.add_parser("model-info", help="parameters and GFLOPs of the presets")
    info.add_argument("--preset", help="one preset (default: a table of all)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=_model_info)

    convert = commands.add_parser(
        "convert-checkpoint", help="official MMPose SDPose/TokenPose checkpoint to sdpose"
    )
    convert.add_argument("src", type=Path)
    convert.add_argument("dst", type=Path)
    convert.add_argument("--preset", required=True)
    convert.set_defaults(handler=_convert_checkpoint)

    predict = commands.add_parser("predict", help="keypoints and overlays for images")
    _add_params_options(predict)
    predict.add_argument("images", type=Path, nargs="+")
    predict.add_argument(
        "--boxes", type=Path, help="COCO detection-results json (default: whole image)"
    )
    predict.add_argument("--model", help="ONNX path or models:/sdpose-student@champion")
    predict.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")
    predict.add_argument(
        "--runtime",
        help="onnxruntime, openvino (extra `openvino`) or auto: the faster one measured at "
        "export, from the model card (default: export.runtime)",
    )
    predict.add_argument(
        "--int8",
        action="store_true",
        help="the model's int8 form (the .int8.onnx file beside it, or the version's)",
    )
    predict.set_defaults(handler=_predict)

    registry = commands.add_parser("registry", help="the MLflow model registry")
    registry_commands = registry.add_subparsers(dest="registry_command", required=True)
    listing = registry_commands.add_parser("list", help="registered students and the champion")
    _add_params_options(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_registry_list)

    coco_eval = commands.add_parser("coco-eval", help="COCO keypoint AP of a results file")
    coco_eval.add_argument("annotations", type=Path)
    coco_eval.add_argument("results", type=Path)
    coco_eval.add_argument("--json", action="store_true")
    coco_eval.set_defaults(handler=_coco_eval)
    _add_plugin_commands(commands)
    return parser


def _add_plugin_commands(commands: argparse._SubParsersAction) -> None:
    """Commands other packages register under the `sdpose.commands` entry point group.

    The orchestration (`sdpose pipeline`, `sdpose serve`: pipelines/commands.py) adds its
    commands this way, so the library never imports the orchestrator that runs it.
    """
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda entry: entry.name):
        entry.load()(commands, _add_params_options)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 done, 2 bad input (`InputError`: one line naming the file, record or key), 75
    another run holds the workspace (one line naming it), 1 anything else (one line; the
    traceback goes to logs/<command>.log), 130 interrupted."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except InputError as error:
        print(f"sdpose {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sdpose {args.command}: interrupted", file=sys.stderr)
        return 130
    except WorkspaceBusyError as error:
        print(f"sdpose {args.command}: {error}", file=sys.stderr)
        return BUSY
    except Exception as error:  # a bug or the environment, not the user's input
        log = log_traceback(args.command, error)
        print(
            f"sdpose {args.command}: internal error: {type(error).__name__}: {error}; "
            f"the traceback is in {log}",
            file=sys.stderr,
        )
        return 1


def log_traceback(command: str, error: BaseException) -> str:
    """Append the error's traceback to logs/<command>.log (unless the stage's console
    already wrote it there); returns the log's path as shown to the user."""
    path = log_dir(Path.cwd()) / f"{command}.log"
    if not getattr(error, "_sdpose_logged", False):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as log:
            log.write(f"\n===== sdpose {command}: {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n")
            traceback.print_exception(error, file=log)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
