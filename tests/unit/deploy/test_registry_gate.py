"""The min_ap gate of the champion alias, without MLflow: the decision and its listing."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest
from shared import REPO

from sdpose import cli
from sdpose.config import ConfigError, Params, load_params
from sdpose.deploy import registry

pytestmark = pytest.mark.unit


def gated(min_ap: float) -> Params:
    return Params.model_validate({"registry": {"min_ap": min_ap}})


def champion(ap: float, val_set: str = "val-A") -> SimpleNamespace:
    return SimpleNamespace(version="1", tags={"student_ap": repr(ap), "val_set": val_set})


def decide(params: Params, current, ap: float, val_set: str = "val-A", score=None):
    return registry._should_promote(params, current, ap, val_set, score)


def test_min_ap_defaults_to_five_points_and_params_yaml_says_so():
    assert Params().registry.min_ap == 0.05
    assert load_params(REPO / "params.yaml").registry.min_ap == 0.05


@pytest.mark.parametrize("value", ["2", "-0.1", "1.01"])
def test_min_ap_outside_zero_one_is_a_config_error_naming_the_key(tmp_path, value):
    with pytest.raises(ConfigError, match=r"registry\.min_ap"):
        load_params(tmp_path / "absent.yaml", [f"registry.min_ap={value}"])


def test_below_min_ap_never_promotes_even_into_an_empty_slot():
    promote, reason, champion_ap = decide(Params(), None, 0.0)
    assert not promote and champion_ap is None
    assert reason == "student AP 0.0000 is below registry.min_ap 0.05: registered, not champion"


def test_at_min_ap_or_with_the_gate_off_the_empty_slot_is_taken():
    assert decide(Params(), None, 0.05)[0]
    assert decide(gated(0.0), None, 0.0)[0]


def test_below_min_ap_never_beats_a_champion_nor_re_measures_it(monkeypatch):
    def no_store(*_):
        raise AssertionError("no champion re-measurement for a version that cannot win")

    monkeypatch.setattr(registry, "current_champion", no_store)
    assert registry.champion_to_rescore(gated(0.6), Path("."), 0.5, "val-B") is None
    assert not decide(gated(0.6), champion(0.3), 0.5)[0]
    score = registry.ChampionScore(version=1, ap=0.1)  # re-measured lower, and still no
    assert not decide(gated(0.6), champion(0.3), 0.5, val_set="val-B", score=score)[0]
    promote, reason, champion_ap = decide(gated(0.6), champion(0.3), 0.65)
    assert promote and champion_ap == 0.3 and "beats" in reason  # above the gate: as before


def test_registry_list_shows_why_a_version_is_not_champion(monkeypatch, capsys, tmp_path):
    rows = [
        {"version": 2, "student_ap": 0.3, "champion": True, "preset": "sdpose-nano"},
        {
            "version": 1,
            "student_ap": 0.0,
            "champion": False,
            "preset": "sdpose-nano",
            "not_champion": "below registry.min_ap 0.05",
        },
    ]
    monkeypatch.setattr(cli, "list_versions", lambda params, workdir: rows)
    monkeypatch.chdir(tmp_path)  # no ./params.yaml: the defaults (an explicit one must exist)
    args = argparse.Namespace(command="registry", params=None, overrides=[], json=False)
    assert cli._registry_list(args) == 0
    v2, v1 = capsys.readouterr().out.splitlines()
    assert v2.startswith("v2") and v2.endswith("  <- champion")
    assert v1.startswith("v1") and v1.endswith("  (not champion: below registry.min_ap 0.05)")
