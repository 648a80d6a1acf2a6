"""What a training run steps: the model (DDP-wrapped in Ray Train), its optimizer, the
learning-rate schedule and the AMP scaler, built from params.

Its own module because both the per-worker loop (loop.py) and the training checkpoints
(checkpoints.py, which save and restore it) need the type, and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray.train.torch
import torch

from sdpose.config import Params
from sdpose.models import build_model
from sdpose.training.init import initial_state
from sdpose.training.schedule import WarmupStepSchedule


@dataclass
class Trainee:
    """The model and what steps it; `model` may be DDP-wrapped, `unwrap` gives the SDPose."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupStepSchedule
    scaler: torch.amp.GradScaler
    device: torch.device

    @property
    def amp(self) -> bool:
        return self.scaler.is_enabled()


def build_trainee(
    params: Params,
    device: torch.device,
    total_iters: int = 0,
    in_ray_train: bool = True,
    init_path: str | None = None,
) -> Trainee:
    """Model on the device (DDP when world > 1), Adam, warmup + decay schedule, AMP scaler.

    `total_iters` is the run's length in steps, which the cosine schedule decays over.
    `in_ray_train=False`: the same trainee for a plain single-process loop (bench/train.py).
    `init_path`: the checkpoint `train.init` resolved to (`sdpose.training.init`), loaded
    before the model is wrapped and moved.
    """
    model = build_model(params.model.preset, **params.model.overrides())
    if init_path:
        model.load_state_dict(initial_state(init_path))
    # prepare_model: DDP across the workers, parameters on the worker's device
    model = ray.train.torch.prepare_model(model) if in_ray_train else model.to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=params.train.lr, weight_decay=params.train.weight_decay
    )
    schedule = WarmupStepSchedule(
        optimizer,
        base_lr=params.train.lr,
        warmup_iters=params.train.warmup_iters,
        warmup_ratio=params.train.warmup_ratio,
        lr_steps=params.train.lr_steps,
        lr_factor=params.train.lr_factor,
        policy=params.train.lr_schedule,
        total_iters=total_iters,
    )
    amp = params.train.amp and device.type == "cuda"  # AMP on GPU only, as params.yaml says
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    return Trainee(model, optimizer, schedule, scaler, device)
