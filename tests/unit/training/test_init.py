"""`train.init`: scratch, shipped weights (checksummed), checkpoint paths; what fits and
what is refused, by name, before any work."""

from __future__ import annotations

import json

import pytest
import torch

from sdpose.config import ConfigError, Params
from sdpose.models import build_model
from sdpose.models.checkpoint import save_checkpoint
from sdpose.models.pretrained import add_to_index, shipped
from sdpose.training import init as init_module
from sdpose.training.init import InitError, resolve_init
from sdpose.training.trainee import build_trainee

pytestmark = pytest.mark.unit


def params_with(**values) -> Params:
    model = {k: v for k, v in values.items() if k in ("preset", "head", "dim", "cycles")}
    train = {k: v for k, v in values.items() if k == "init"}
    return Params.model_validate({"model": model, "train": train})


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    """A package weights folder in tmp_path holding one SimCC nano, as shipped ones are."""
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.manual_seed(3)
    model = build_model("sdpose-nano", head="simcc")
    checkpoint = save_checkpoint(folder / "nano-simcc.pt", model)
    card = folder / "nano-simcc.json"
    card.write_text(json.dumps({"architecture": model.config.to_dict()}))
    add_to_index(folder, "nano-simcc", checkpoint, card)
    monkeypatch.setattr(init_module, "shipped", lambda: shipped(folder))
    return folder


def test_scratch_means_no_weights(tmp_path):
    assert resolve_init(params_with(init="scratch"), tmp_path) is None


def test_shipped_weights_resolve_and_start_any_cycle_count(weights_dir, tmp_path):
    for cycles in (1, 2, 3):
        params = params_with(init="nano-simcc", head="simcc", cycles=cycles)
        weights = resolve_init(params, tmp_path)
        assert weights.shipped and weights.path == weights_dir / "nano-simcc.pt"
    trainee = build_trainee(params, torch.device("cpu"), in_ray_train=False, init_path=weights.path)
    expected = torch.load(weights.path, weights_only=True)["model"]
    for key, tensor in trainee.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[key])


def test_a_tampered_shipped_file_is_refused_by_name(weights_dir, tmp_path):
    path = weights_dir / "nano-simcc.pt"
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(InitError, match=r"nano-simcc\.pt: shipped weights 'nano-simcc' fail"):
        resolve_init(params_with(init="nano-simcc", head="simcc"), tmp_path)


def test_weights_of_another_head_or_size_name_both_sides(weights_dir, tmp_path):
    with pytest.raises(InitError) as error:
        resolve_init(params_with(init="nano-simcc", head="heatmap", dim=48), tmp_path)
    message = str(error.value)
    assert message.startswith("train.init: shipped weights nano-simcc")
    assert "head: the weights have 'simcc', the model 'heatmap'" in message
    assert "dim: the weights have 64, the model 48" in message
    assert isinstance(error.value, ConfigError)  # the CLI's exit 2


def test_a_checkpoint_path_works_relative_to_the_workdir(tmp_path):
    save_checkpoint(tmp_path / "models" / "best.pt", build_model("sdpose-nano", cycles=3))
    weights = resolve_init(params_with(init="models/best.pt"), tmp_path)
    assert not weights.shipped and weights.path == tmp_path / "models" / "best.pt"
    assert weights.config["cycles"] == 3  # the run's own cycles (2) are free to differ


@pytest.mark.parametrize(
    "spec, content, message",
    [
        ("nowhere.pt", None, r"neither 'scratch', a shipped name .* nor an existing checkpoint"),
        ("notes.txt", b"not a checkpoint", r"notes\.txt: .*not a PyTorch checkpoint"),
        ("models:/sdpose-student@champion", None, r"registry URI; the sdpose commands"),
    ],
)
def test_unusable_init_values_are_parameter_errors(tmp_path, spec, content, message):
    if content is not None:
        (tmp_path / spec).write_bytes(content)
    with pytest.raises(InitError, match=f"^train.init: .*{message}"):
        resolve_init(params_with(init=spec), tmp_path)
