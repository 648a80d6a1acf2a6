"""Exit codes tell the truth: 2 is the user's bad input (an `InputError`), 1 anything else,
with one line on the terminal and the traceback in the command's log."""

from __future__ import annotations

import dataclasses

import pytest

from sdpose import cli
from sdpose.core.errors import InputError, MissingInputError

pytestmark = pytest.mark.unit


class Broken:
    """A stage module whose run fails the way `error` says."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def run(self, params, workdir, **options):
        raise self.error


def run_stage_failing(monkeypatch, tmp_path, error: BaseException) -> int:
    monkeypatch.chdir(tmp_path)
    broken = dataclasses.replace(cli.STAGES["evaluate"], entry=lambda: Broken(error).run)
    monkeypatch.setitem(cli.STAGES, "evaluate", broken)
    return cli.main(["evaluate"])


def test_a_value_error_deep_in_a_stage_is_an_internal_error(monkeypatch, tmp_path, capsys):
    code = run_stage_failing(monkeypatch, tmp_path, ValueError("operands could not broadcast"))
    err = capsys.readouterr().err
    assert code == 1
    line = next(text for text in err.splitlines() if "internal error" in text)
    assert "ValueError: operands could not broadcast" in line
    assert "logs/evaluate.log" in line and "Traceback" not in err
    log = (tmp_path / "logs" / "evaluate.log").read_text()
    assert "Traceback" in log and "operands could not broadcast" in log
    assert log.count("Traceback") == 1  # the stage's console wrote it; main did not again


def test_input_errors_are_exit_2_with_their_message_and_no_traceback(monkeypatch, tmp_path, capsys):
    error = MissingInputError("data/crops/summary.json missing: run `sdpose crops`")
    assert run_stage_failing(monkeypatch, tmp_path, error) == 2
    err = capsys.readouterr().err
    assert "sdpose evaluate: error: data/crops/summary.json missing" in err
    assert "Traceback" not in err and "internal error" not in err


def test_an_error_outside_any_stage_log_gets_its_own(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)

    def explode(args):
        raise KeyError("model_card")

    monkeypatch.setattr(cli, "_config_show", explode)  # the parser is built inside main
    assert cli.main(["config", "show"]) == 1
    assert "logs/config.log" in capsys.readouterr().err
    assert "KeyError" in (tmp_path / "logs" / "config.log").read_text()


def test_every_bad_input_class_is_an_input_error():
    from sdpose.config import ConfigError
    from sdpose.data.coco import DataError
    from sdpose.data.crop_rows import ImageError
    from sdpose.data.feed import CropResolutionError
    from sdpose.data.manifest import ManifestError
    from sdpose.deploy.predict import PredictError
    from sdpose.deploy.registry import RegistryError
    from sdpose.deploy.runtimes import RuntimeUnavailableError
    from sdpose.evaluation.inference import InferenceError
    from sdpose.models.checkpoint import CheckpointError
    from sdpose.models.pretrained import PretrainedError
    from sdpose.training.init import InitError
    from sdpose.tuning.space import InvalidTrialConfigError

    for kind in (ConfigError, DataError, ImageError, CropResolutionError, ManifestError,
                 PredictError, RegistryError, RuntimeUnavailableError, InferenceError,
                 CheckpointError, PretrainedError, InitError, InvalidTrialConfigError):  # fmt: skip
        assert issubclass(kind, InputError), kind
