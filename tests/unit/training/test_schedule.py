"""Warmup + step decay: the mmcv rule of the paper's config, checked against hand values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sdpose.training.schedule import WarmupStepSchedule, lr_multiplier

pytestmark = pytest.mark.unit

PAPER = {"warmup_iters": 500, "warmup_ratio": 0.001, "lr_steps": [9, 11], "lr_factor": 0.1}


@pytest.mark.parametrize(
    ("iteration", "expected"),
    [
        (0, 0.001),  # starts at warmup_ratio * lr
        (250, 1 - 0.5 * 0.999),  # halfway: 1 - (1 - 250/500) * (1 - 0.001)
        (499, 1 - (1 / 500) * 0.999),
        (500, 1.0),  # warmup over
        (10_000, 1.0),
    ],
)
def test_linear_warmup(iteration: int, expected: float) -> None:
    assert lr_multiplier(iteration, 0, **PAPER) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("epoch", "expected"), [(0, 1.0), (8, 1.0), (9, 0.1), (10, 0.1), (11, 0.01), (40, 0.01)]
)
def test_step_decay_at_zero_based_epochs(epoch: int, expected: float) -> None:
    assert lr_multiplier(10_000, epoch, **PAPER) == pytest.approx(expected, rel=1e-12)


def test_warmup_multiplies_the_decayed_rate() -> None:
    # mmcv applies the warmup factor to the regular (already decayed) lr
    assert lr_multiplier(250, 9, **PAPER) == pytest.approx(0.1 * (1 - 0.5 * 0.999))


def test_no_warmup() -> None:
    assert lr_multiplier(0, 0, 0, 0.001, [], 0.1) == 1.0


def _schedule(optimizer: torch.optim.Optimizer) -> WarmupStepSchedule:
    return WarmupStepSchedule(
        optimizer, base_lr=1e-3, warmup_iters=4, warmup_ratio=0.5, lr_steps=[1], lr_factor=0.1
    )


def test_schedule_sets_optimizer_lr_and_resumes_exactly() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.Adam([weight], lr=123.0)
    schedule = _schedule(optimizer)
    schedule.start_epoch(0)
    used = [schedule.before_iteration() for _ in range(3)]
    # warmup 4 iterations from ratio 0.5: 1 - (1 - i/4) * 0.5 for i = 0, 1, 2
    assert used == pytest.approx([1e-3 * 0.5, 1e-3 * 0.625, 1e-3 * 0.75])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.75)

    state = schedule.state_dict()
    restored_optimizer = torch.optim.Adam([weight], lr=123.0)
    restored = _schedule(restored_optimizer)
    restored.load_state_dict(state)
    restored.start_epoch(1)
    schedule.start_epoch(1)
    # iteration 3 of warmup (0.875) in the decayed epoch (x 0.1)
    assert restored.before_iteration() == pytest.approx(1e-3 * 0.1 * 0.875)
    assert schedule.before_iteration() == pytest.approx(1e-3 * 0.1 * 0.875)
    assert restored.before_iteration() == pytest.approx(1e-3 * 0.1)


def test_cosine_decays_from_the_base_rate_to_zero_over_the_run():
    common = {"warmup_iters": 0, "warmup_ratio": 0.001, "lr_steps": [1], "lr_factor": 0.1}
    factors = [
        lr_multiplier(i, epoch=5, policy="cosine", total_iters=100, **common) for i in range(101)
    ]
    assert factors[0] == 1.0 and factors[100] == pytest.approx(0.0, abs=1e-12)
    assert factors[50] == pytest.approx(0.5)
    assert all(a >= b for a, b in itertools.pairwise(factors))  # epochs and steps play no part
    # the warmup still ramps the cosine's rate up over the first iterations
    warm = lr_multiplier(10, 0, 20, 0.001, [], 0.1, policy="cosine", total_iters=100)
    assert warm == pytest.approx((1 - 0.5 * 0.999) * 0.5 * (1 + math.cos(math.pi * 0.1)))
    with pytest.raises(ValueError, match="policy"):
        lr_multiplier(0, 0, 0, 0.001, [], 0.1, policy="linear")
