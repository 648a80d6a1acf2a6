"""Learning rate: linear warmup over the first iterations, then step or cosine decay.

The paper's config (mmcv `lr_config`: policy='step', warmup='linear', warmup_iters=500,
warmup_ratio=0.001) in plain code: the epoch decides the decayed rate, the global
iteration decides the warmup factor on top of it. `cosine` (mmcv's CosineAnnealing by
iteration, min_lr_ratio 0) decays smoothly to 0 over the run's `total_iters`: a short CPU
run has no late epochs for the paper's steps to fall in. mmcv's conventions are kept: epochs are
0-based (step 9 means "from the tenth epoch on"), the warmup starts at
`warmup_ratio * lr` and reaches the full rate at iteration `warmup_iters`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

POLICIES = ("step", "cosine")


def lr_multiplier(
    iteration: int,
    epoch: int,
    warmup_iters: int,
    warmup_ratio: float,
    lr_steps: Sequence[int],
    lr_factor: float,
    policy: str = "step",
    total_iters: int = 0,
) -> float:
    """The factor on the base lr at a global iteration (0-based) in an epoch (0-based)."""
    if policy == "cosine":
        progress = min(1.0, iteration / total_iters) if total_iters > 0 else 0.0
        decay = 0.5 * (1 + math.cos(math.pi * progress))
    elif policy == "step":
        decay = lr_factor ** sum(epoch >= step for step in lr_steps)
    else:
        raise ValueError(f"policy: {policy!r} is not one of {', '.join(POLICIES)}")
    if iteration >= warmup_iters:
        return decay
    # mmcv: k = (1 - i / warmup_iters) * (1 - ratio); lr = regular_lr * (1 - k)
    remaining = (1 - iteration / warmup_iters) * (1 - warmup_ratio)
    return decay * (1 - remaining)


@dataclass
class WarmupStepSchedule:
    """Sets the optimiser's lr before every iteration; its state is two counters.

    Call `start_epoch(epoch)` at the top of each epoch and `before_iteration()` before each
    optimiser step. The state dict (iteration, epoch) goes into checkpoints so a resumed
    run continues the warmup and the decay exactly where it stopped.
    """

    optimizer: torch.optim.Optimizer
    base_lr: float
    warmup_iters: int
    warmup_ratio: float
    lr_steps: Sequence[int]
    lr_factor: float
    policy: str = "step"
    total_iters: int = 0  # cosine: the run's length in iterations
    iteration: int = 0
    epoch: int = 0

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._apply()

    def before_iteration(self) -> float:
        """Set the lr of the coming step, count the step; returns the lr used."""
        lr = self._apply()
        self.iteration += 1
        return lr

    @property
    def current_lr(self) -> float:
        multiplier = lr_multiplier(
            self.iteration,
            self.epoch,
            self.warmup_iters,
            self.warmup_ratio,
            self.lr_steps,
            self.lr_factor,
            self.policy,
            self.total_iters,
        )
        return self.base_lr * multiplier

    def _apply(self) -> float:
        lr = self.current_lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.iteration, self.epoch = int(state["iteration"]), int(state["epoch"])
        self._apply()
