"""A short search keeps the full schedule's shape: lr decays at the same fractions."""

from __future__ import annotations

import pytest

from sdpose.config import Params
from sdpose.tuning.space import scaled_lr_steps, trial_params

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("steps", "epochs", "max_epochs", "expected"),
    [
        ([170, 200], 210, 20, [16, 19]),  # 170/210*20 = 16.2, 200/210*20 = 19.05
        ([9, 11], 12, 12, [9, 11]),  # the same length: unchanged
        ([9, 11], 12, 4, [3]),  # 3.0 and 3.67 -> both 3: merged
        ([170, 200], 210, 4, [3]),  # 200/210*4 = 3.8 -> 4 = the end: never reached, dropped
        ([1], 12, 4, []),  # 0.33 -> 0: a decay before any training is dropped
    ],
)
def test_lr_steps_scale_with_the_schedule(steps, epochs, max_epochs, expected) -> None:
    assert scaled_lr_steps(steps, epochs, max_epochs) == expected


def test_trial_schedule_is_scaled_unless_the_search_samples_it() -> None:
    base = Params.model_validate({"train": {"epochs": 20, "lr_steps": [10, 15]}}).to_dict()
    assert trial_params(base, {}, max_epochs=4).train.lr_steps == [2, 3]
    sampled = trial_params(base, {"train.lr_steps": [1]}, max_epochs=4)
    assert sampled.train.lr_steps == [1]
