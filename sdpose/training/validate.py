"""Validation during training: COCO AP of the student (cycle 1) and the teacher (last cycle).

One eval-mode forward with `cycles=C` yields every cycle's outputs, so the student (what
ships: one cycle) and the teacher (all C cycles) cost a single pass. Decoding and scoring
are `sdpose.evaluation.inference`'s, the path the evaluate stage and `sdpose predict` use too. Each
worker predicts its share of the validation batches; the shares are gathered and scored.

Shapes: N persons, K keypoints, C cycles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from sdpose.config import EvaluateParams
from sdpose.core.codecs import Codec
from sdpose.evaluation import inference
from sdpose.evaluation.inference import Predictions

ROLES = ("student", "teacher")


def predict_batches(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    codec: Codec,
    evaluate: EvaluateParams,
    teacher_cycles: int,
) -> dict[str, Predictions]:
    """Student and teacher predictions for the given validation batches.

    `model` is the bare module (not DDP): validation runs a different number of forwards
    on each rank, and DDP's forward would wait for the other ranks.
    """
    model.eval()
    runner = inference.model_runner(model, teacher_cycles)
    found = {role: Predictions() for role in ROLES}
    for batch in batches:
        keypoints = inference.predict_crops(
            runner, batch["images"], batch["center"], batch["scale"], codec, evaluate
        )
        for role, cycle_keypoints in zip(ROLES, (keypoints[0], keypoints[-1]), strict=True):
            found[role].add(batch, cycle_keypoints)
    return found


def coco_ap(
    predictions: Predictions, annotations: Path, evaluate: EvaluateParams
) -> dict[str, float]:
    """pycocotools' keypoint AP figures of the predictions (rescored, OKS-NMSed)."""
    return inference.score(predictions, annotations, evaluate)[0]
