"""Validation during training: COCO AP of the student (cycle 1) and the teacher (last cycle).

One eval-mode forward with `cycles=C` yields every cycle's heatmaps, so the student (what
ships: one cycle) and the teacher (all C cycles) cost a single pass. Decoding follows the
official test config: flip test with mmpose's one-pixel shift, DARK, box geometry back to
image pixels (`HeatmapCodec`), then MMPose's rescoring and OKS-NMS and pycocotools' AP
(`sdpose.evaluation`). Each worker predicts its share of the validation batches; rank 0
gathers the predictions and scores them.

Shapes: N persons, K keypoints, C cycles, H x W heatmap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdpose.codec import HeatmapCodec
from sdpose.config import EvaluateParams
from sdpose.evaluation import coco_keypoint_ap, topdown_results

ROLES = ("student", "teacher")


@torch.no_grad()
def cycle_heatmaps(
    model: nn.Module, images: torch.Tensor, cycles: int, codec: HeatmapCodec, flip_test: bool
) -> list[torch.Tensor]:
    """Heatmaps (N, K, H, W) of each of the first `cycles` cycles, flip-averaged if asked."""
    outputs = model(images, cycles=cycles)
    heatmaps = [output.heatmaps.float() for output in outputs]
    if not flip_test:
        return heatmaps
    mirrored = model(images.flip(-1), cycles=cycles)
    return [
        (plain + codec.flip_back(flipped.heatmaps.float())) * 0.5
        for plain, flipped in zip(heatmaps, mirrored, strict=True)
    ]


def decode_to_image(
    heatmaps: torch.Tensor,
    center: torch.Tensor,
    scale: torch.Tensor,
    codec: HeatmapCodec,
    method: str,
) -> np.ndarray:
    """Heatmaps (N, K, H, W) -> keypoints (N, K, 3): x, y in image pixels and the score."""
    points, scores = codec.decode(heatmaps, method)
    in_image = codec.to_image(points.double(), center.double(), scale.double())
    return torch.cat([in_image, scores.double()[..., None]], dim=-1).cpu().numpy()


@dataclass
class Predictions:
    """Per-person predictions of one role, accumulated batch by batch."""

    image_ids: list[np.ndarray] = field(default_factory=list)
    keypoints: list[np.ndarray] = field(default_factory=list)  # (N, K, 3) each
    box_scores: list[np.ndarray] = field(default_factory=list)
    areas: list[np.ndarray] = field(default_factory=list)

    def add(self, batch: Mapping[str, torch.Tensor], keypoints: np.ndarray) -> None:
        self.image_ids.append(_numpy(batch["image_id"]).astype(np.int64))
        self.keypoints.append(keypoints)
        self.box_scores.append(_numpy(batch["score"]).astype(np.float64))
        self.areas.append(_window_area(batch))

    def extend(self, other: Predictions) -> None:
        for name in ("image_ids", "keypoints", "box_scores", "areas"):
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return sum(len(ids) for ids in self.image_ids)


def _numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _window_area(batch: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The crop window's area (scale w x h): MMPose's OKS scale for NMS."""
    scale = _numpy(batch["scale"]).astype(np.float64)
    return scale[:, 0] * scale[:, 1]


def predict_batches(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    codec: HeatmapCodec,
    evaluate: EvaluateParams,
    teacher_cycles: int,
) -> dict[str, Predictions]:
    """Student and teacher predictions for the given validation batches.

    `model` is the bare module (not DDP): validation runs a different number of forwards
    on each rank, and DDP's forward would wait for the other ranks.
    """
    model.eval()
    found = {role: Predictions() for role in ROLES}
    for batch in batches:
        maps = cycle_heatmaps(model, batch["images"], teacher_cycles, codec, evaluate.flip_test)
        center, scale = batch["center"], batch["scale"]
        for role, heatmaps in zip(ROLES, (maps[0], maps[-1]), strict=True):
            keypoints = decode_to_image(heatmaps, center, scale, codec, evaluate.decode)
            found[role].add(batch, keypoints)
    return found


def coco_ap(
    predictions: Predictions, annotations: Path, evaluate: EvaluateParams
) -> dict[str, float]:
    """pycocotools' keypoint AP figures of the predictions (rescored, OKS-NMSed)."""
    if len(predictions) == 0:
        return coco_keypoint_ap(annotations, [])
    results = topdown_results(
        np.concatenate(predictions.image_ids),
        np.concatenate(predictions.keypoints),
        np.concatenate(predictions.box_scores),
        np.concatenate(predictions.areas),
        vis_thr=evaluate.vis_thr,
        oks_thr=evaluate.oks_thr,
    )
    return coco_keypoint_ap(annotations, results)
