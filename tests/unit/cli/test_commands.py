"""`sdpose pipeline` and `sdpose serve` reach the CLI through the entry point pipelines/
registers, so the library lists them without importing the orchestration."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import pytest

from sdpose import cli

pytestmark = pytest.mark.unit


def test_the_orchestration_commands_come_from_the_entry_point() -> None:
    (entry,) = entry_points(group=cli.COMMANDS_GROUP, name="pipelines")
    assert entry.value == "pipelines.commands:add_commands"
    parser = cli.build_parser()
    for name in ("pipeline", "serve"):
        assert parser.parse_args([name]).handler.__module__ == "pipelines.commands"
    for name in cli.STAGES:  # the stage commands stay the library's
        assert parser.parse_args([name]).handler.__module__ == "sdpose.cli"


def test_parsing_the_pipeline_command_does_not_import_the_flow(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "pipelines.flow", raising=False)  # restored afterwards
    args = cli.build_parser().parse_args(["pipeline", "--set", "train.epochs=1"])
    assert args.handler.__module__ == "pipelines.commands"
    assert "pipelines.flow" not in sys.modules  # Prefect loads only when a run starts
