"""Parameters: loading, overrides, and validation messages that name the key."""

from __future__ import annotations

import pytest
import yaml
from shared import REPO

from sdpose.config import (
    ConfigError,
    Params,
    apply_overrides,
    dump_params,
    load_params,
    parse_override,
)

pytestmark = pytest.mark.unit


def test_repo_params_file_is_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # Every section of the model appears in the file, so DVC can track each one.
    assert set(raw) == set(Params.model_fields)
    assert params.model.preset == raw["model"]["preset"]


def test_missing_file_gives_defaults(tmp_path):
    assert load_params(tmp_path / "absent.yaml") == Params()


def test_override_parses_yaml_values():
    assert parse_override("model.dim=64") == ("model.dim", 64)
    assert parse_override("train.lr_steps=[3, 5]") == ("train.lr_steps", [3, 5])
    assert parse_override("data.root=/data/coco") == ("data.root", "/data/coco")
    assert parse_override("evaluate.boxes=") == ("evaluate.boxes", None)


@pytest.mark.parametrize("text", ["model.dim", "=3", ""])
def test_malformed_override_is_rejected(text):
    with pytest.raises(ConfigError, match="key=value"):
        parse_override(text)


def test_overrides_apply_to_nested_keys_without_touching_the_source():
    raw = {"train": {"augment": {"flip_prob": 0.5}}}
    merged = apply_overrides(raw, {"train.augment.flip_prob": 0.0, "model.dim": 32})
    assert merged == {"train": {"augment": {"flip_prob": 0.0}}, "model": {"dim": 32}}
    assert raw["train"]["augment"]["flip_prob"] == 0.5


def test_override_through_a_value_is_an_error():
    with pytest.raises(ConfigError, match="train.epochs is a value"):
        apply_overrides({"train": {"epochs": 3}}, {"train.epochs.x": 1})


def test_dim_not_divisible_by_heads_names_key_and_rule():
    with pytest.raises(ConfigError) as error:
        load_params(REPO / "params.yaml", ["model.preset=sdpose-t", "model.dim=100"])
    message = str(error.value)
    assert "model.dim" in message
    assert "divisible" in message and "8" in message


def test_unknown_key_and_bad_type_are_both_reported(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochz: 3\n  lr: fast\n")
    with pytest.raises(ConfigError) as error:
        load_params(path)
    message = str(error.value)
    assert str(path) in message
    assert "train.epochz: unknown parameter" in message
    assert "train.lr:" in message


def test_a_moved_key_says_where_it_went(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  retries: 2\n")
    with pytest.raises(ConfigError, match=r"train\.retries: moved to pipeline\.retries"):
        load_params(path)
    assert load_params(tmp_path / "none.yaml", {"pipeline.retries": 2}).pipeline.retries == 2


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="sdpose-t") as error:
        load_params(REPO / "params.yaml", ["model.preset=sdpose-xxl"])
    assert "model.preset" in str(error.value)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


def test_lr_steps_must_increase():
    with pytest.raises(ConfigError, match="train.lr_steps"):
        load_params(REPO / "params.yaml", ["train.lr_steps=[5, 2]"])


def test_tune_space_rejects_unknown_distribution():
    with pytest.raises(ConfigError, match="tune.space"):
        load_params(REPO / "params.yaml", ["tune.space={model.dim: {normal: [1, 2]}}"])


def test_dump_round_trips():
    params = load_params(REPO / "params.yaml", ["model.cycles=3", "ray.num_workers=1"])
    reloaded = Params.model_validate(yaml.safe_load(dump_params(params)))
    assert reloaded == params
    assert reloaded.model.cycles == 3
