"""`where_to_look`: the one list of what a run left to look at, which `sdpose pipeline`
prints and the flow's summary artifact shows."""

from __future__ import annotations

import pytest

from pipelines import commands
from pipelines.commands import RUN_OUTPUTS, print_where_to_look, where_to_look
from sdpose.config import Params
from sdpose.core.paths import EVAL_METRICS, TRAIN_METRICS, TUNE_METRICS

pytestmark = pytest.mark.unit
REGISTERED = "- registered model: `sdpose-student` version 3 (champion)"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A workspace with the train and eval metrics only, and a registered version."""
    for path in (TRAIN_METRICS, EVAL_METRICS):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text('{"boxes": "gt", "student_ap": 0.25}')
    monkeypatch.setattr(commands, "registered_line", lambda params, workdir: REGISTERED)
    return tmp_path


def test_only_the_outputs_that_exist_are_listed_in_order(workdir) -> None:
    params = Params()
    looks = where_to_look(workdir, params)
    files = [look.where for look in looks if look.kind == "file"]
    assert files == [TRAIN_METRICS.as_posix(), EVAL_METRICS.as_posix(), "logs/<stage>.log"]
    assert TUNE_METRICS.as_posix() not in files and len(RUN_OUTPUTS) == 6
    assert [look.where for look in looks if look.kind == "note"] == [REGISTERED[2:]]
    (command,) = [look for look in looks if look.kind == "command"]
    assert command.where == f"mlflow ui --backend-store-uri {params.registry.tracking_uri}"


def test_the_console_prints_every_look(workdir, capsys) -> None:
    params = Params()
    print_where_to_look(workdir, params)
    out = capsys.readouterr().out
    assert "Student AP (val, gt boxes): 0.2500" in out
    assert f"  {TRAIN_METRICS.as_posix():<36} training summary (student and teacher AP)\n" in out
    assert "  registered model: `sdpose-student` version 3 (champion)\n" in out
    assert f"{params.registry.tracking_uri}   # runs and registry\n" in out
    assert TUNE_METRICS.as_posix() not in out
    for look in where_to_look(workdir, params):
        assert look.where in out


def test_the_flow_summary_shows_the_same_list(workdir) -> None:
    from pipelines.flow import _summary_lines  # lazy: Prefect, 2.2 s, for this test only

    params = Params()
    summary = "\n".join(_summary_lines(params, workdir))
    for look in where_to_look(workdir, params):
        shown = (workdir / look.where).resolve() if look.kind == "file" else look.where
        assert str(shown) in summary and look.what in summary
    assert TUNE_METRICS.as_posix() not in summary
