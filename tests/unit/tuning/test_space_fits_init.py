"""A search whose trials start from pretrained weights may search the cycles (they share one
set of layers) but not the architecture, refused before any trial starts."""

from __future__ import annotations

import pytest

from sdpose.config import ConfigError, Params
from sdpose.models import build_model
from sdpose.models.checkpoint import save_checkpoint
from sdpose.tuning.search import check_space_fits_init

pytestmark = pytest.mark.unit


def params(space: dict, init: str) -> Params:
    return Params.model_validate({"train": {"init": init}, "tune": {"space": space}})


def test_an_architecture_search_from_pretrained_weights_is_refused(tmp_path):
    save_checkpoint(tmp_path / "weights.pt", build_model("sdpose-nano"))
    space = {"model.cycles": {"choice": [1, 2, 3]}, "model.dim": {"choice": [48, 64]}}
    with pytest.raises(
        ConfigError, match=r"tune\.space\.model\.dim: .*dim 64.*train\.init=scratch"
    ):
        check_space_fits_init(params(space, "weights.pt"), tmp_path)


def test_cycles_and_the_recipe_are_searched_from_pretrained_weights(tmp_path):
    save_checkpoint(tmp_path / "weights.pt", build_model("sdpose-nano"))
    space = {"model.cycles": {"choice": [1, 2, 3]}, "train.lr": {"choice": [1e-4, 5e-4]}}
    check_space_fits_init(params(space, "weights.pt"), tmp_path)
    check_space_fits_init(params({"model.dim": {"choice": [48]}}, "scratch"), tmp_path)
