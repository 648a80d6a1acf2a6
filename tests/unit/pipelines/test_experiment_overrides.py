"""Flow overrides travel to `dvc exp run -S` in Hydra's grammar: every value must come back
exactly as given (checked with the parser DVC itself uses), and a name must be a git ref."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from shared import REPO

from pipelines.experiment import experiment_name, set_param_args
from sdpose.config import apply_overrides

pytestmark = pytest.mark.unit
PARAMS = REPO / "params.yaml"

VALUES = [
    0,
    -3,
    1e-3,
    2.5,
    True,
    False,
    None,
    "cosine",
    "",
    "null",
    "1e-3",
    "it's",
    "a\\path",
    "ends in \\",
    "q\\'x",
    "a b: {c}, [d]",
    [1, 2.5, True],
    [[128, 96], None],
    {"model.dim": {"choice": [32, 48]}, "train.lr": {"loguniform": [1e-4, 1e-2]}},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_every_value_survives_dvcs_override_parser(value):
    flag, override = set_param_args({"tune.space": value}, {})
    assert flag == "-S" and override.startswith("++tune.space=")
    parsed = OverridesParser.create().parse_overrides([override])[0]
    assert parsed.key_or_group == "tune.space"
    assert parsed.value() == value
    assert type(parsed.value()) is type(value)


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"train lr": 1}, "train lr"),
        ({"tune.space": {"bad key!": 1}}, "bad key!"),
        ({"train.lr": float("nan")}, "nan"),
        ({"train.lr": object()}, "object"),
    ],
)
def test_values_dvc_cannot_carry_are_refused_naming_them(overrides, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        set_param_args(overrides, {})


@pytest.mark.parametrize(
    "flow_run, expected",
    [
        ("amber-fox", "prefect-amber-fox"),
        ("Big Run #2", "prefect-big-run-2"),
        ("...", "prefect-run"),
    ],
)
def test_experiment_names_are_git_ref_safe(flow_run, expected):
    name = experiment_name(flow_run)
    assert name == expected
    assert re.fullmatch(r"[a-z0-9-]+", name)


def test_dvc_applies_overrides_as_the_project_does(tmp_path):
    """DVC's own apply_overrides on params.yaml gives exactly sdpose's overridden params:
    a mapping replaces the one there (the whole search space), not merges into it."""
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    overrides = {
        "tune.space": {"model.dim": {"choice": [32, 48]}},
        "train.lr_steps": [1],
        "model.dim": 32,
        "model.input_size": [64, 48],
        "train.lr_schedule": "step",
        "synth.clutter": False,
    }
    path = tmp_path / "params.yaml"
    shutil.copy(PARAMS, path)
    current = yaml.safe_load(path.read_text())
    args = set_param_args(overrides, current)
    assert "~tune.space" in args  # the one mapping params.yaml already holds
    dvc_apply_overrides(path, [arg for arg in args if arg != "-S"])
    assert yaml.safe_load(path.read_text()) == apply_overrides(current, overrides)
