"""Train-time augmentation of one person crop, as the official SDPose config (mmpose 0.x).

The official train pipeline is TopDownRandomShiftBboxCenter(0.16, p=0.3) ->
TopDownRandomFlip(0.5) -> TopDownHalfBodyTransform(8 joints, p=0.3) ->
TopDownGetRandomScaleRotation(rot 45, scale 0.35, rot p=0.6) -> TopDownAffine ->
Normalize -> TopDownGenerateTarget(sigma 2, unbiased). Each step here keeps mmpose's draws
and clip ranges; the one geometric difference is that the "image" is the stored context
crop (`sdpose.data.crops`), so its pixels beyond the context are black, as mmpose's are
beyond the image border.

A sample is a dict. Fields:
  image      (H, W, 3) uint8 BGR, the crop (after `AffineToInput`: the network input)
  keypoints  (K, 2) float64 pixels of `image`
  visible    (K,) float64, 1 for a labelled joint (COCO v > 0), else 0
  center     (2,) and scale (2,): the box in pixels of `image`; scale is (w, h), not /200
  rotation   degrees (added by RandomScaleRotation)
  flipped    bool (added by RandomFlip)
  affine     (2, 3) crop -> input matrix (added by AffineToInput)
Every transform takes (sample, rng) and returns the sample; its docstring says which
fields it reads, changes and adds. Randomness comes only from `rng`, one per sample, seeded
by (seed, epoch, ann_id) so results do not depend on how Ray Data splits the work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from sdpose.config import AugmentParams
from sdpose.core.geometry import CropGeometry, apply_affine
from sdpose.core.inputs import BOX_ASPECT
from sdpose.core.keypoints import FLIP_INDEX, LOWER_BODY_IDS, UPPER_BODY_IDS

Sample = dict[str, Any]
Transform = Callable[[Sample, np.random.Generator], Sample]


def sample_rng(seed: int, epoch: int, ann_id: int) -> np.random.Generator:
    """The random stream of one sample in one epoch: a function of the three ids only."""
    words = [int(value) & 0xFFFF_FFFF_FFFF_FFFF for value in (seed, epoch, ann_id)]
    return np.random.default_rng(np.random.SeedSequence(words))


@dataclass(frozen=True)
class RandomShiftCenter:
    """mmpose TopDownRandomShiftBboxCenter. Reads center, scale; changes center.

    With probability `prob` the center moves by U(-1, 1) * shift_factor * scale per axis.
    """

    shift_factor: float = 0.16
    prob: float = 0.3

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() < self.prob:
            shift = rng.uniform(-1.0, 1.0, 2) * self.shift_factor * sample["scale"]
            sample["center"] = sample["center"] + shift
        return sample


@dataclass(frozen=True)
class RandomFlip:
    """mmpose TopDownRandomFlip. Reads image, keypoints, visible, center; changes them all;
    adds flipped.

    A horizontal flip maps x to W - 1 - x (pixel centres) and swaps left and right joints;
    unlabelled joints are zeroed as mmpose's fliplr_joints does.
    """

    prob: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        flipped = bool(rng.random() < self.prob)  # mmpose: rand() <= p, the same but at p=0
        if flipped:
            width = sample["image"].shape[1]
            sample["image"] = cv2.flip(sample["image"], 1)
            keypoints = sample["keypoints"][FLIP_INDEX].copy()
            visible = sample["visible"][FLIP_INDEX].copy()
            keypoints[:, 0] = width - 1 - keypoints[:, 0]
            sample["keypoints"] = keypoints * visible[:, None]
            sample["visible"] = visible
            sample["center"] = np.array([width - 1 - sample["center"][0], sample["center"][1]])
        sample["flipped"] = flipped
        return sample


@dataclass(frozen=True)
class HalfBody:
    """mmpose TopDownHalfBodyTransform. Reads keypoints, visible; changes center, scale.

    With more than `min_joints` labelled joints and probability `prob`, the box becomes the
    upper or the lower body's joints' box, fixed to the input aspect and enlarged 1.5x.
    """

    min_joints: int = 8
    prob: float = 0.3
    aspect_ratio: float = BOX_ASPECT  # input width / height
    upper_ids: Sequence[int] = UPPER_BODY_IDS
    lower_ids: Sequence[int] = LOWER_BODY_IDS

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        visible = sample["visible"] > 0
        if visible.sum() > self.min_joints and rng.random() < self.prob:
            box = self.half_body_box(sample["keypoints"], visible, rng)
            if box is not None:
                sample["center"], sample["scale"] = box
        return sample

    def half_body_box(
        self, keypoints: np.ndarray, visible: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        upper = keypoints[[i for i in self.upper_ids if visible[i]]]
        lower = keypoints[[i for i in self.lower_ids if visible[i]]]
        # mmpose draws randn here (not rand), so the upper body wins ~69% of the time
        if rng.standard_normal() < 0.5 and len(upper) > 2:
            chosen = upper
        elif len(lower) > 2:
            chosen = lower
        else:
            chosen = upper
        if len(chosen) < 2:
            return None
        width, height = chosen.max(axis=0) - chosen.min(axis=0)
        if width > self.aspect_ratio * height:
            height = width / self.aspect_ratio
        elif width < self.aspect_ratio * height:
            width = height * self.aspect_ratio
        if width <= 0 or height <= 0:  # all chosen joints on one point: no box to zoom into
            return None
        return chosen.mean(axis=0), np.array([width, height]) * 1.5


@dataclass(frozen=True)
class RandomScaleRotation:
    """mmpose TopDownGetRandomScaleRotation. Reads scale; changes scale; adds rotation.

    scale *= clip(N(1, scale_factor), 1 - f, 1 + f); rotation = clip(N(0, rotation_factor),
    -2 r, 2 r) degrees with probability `rotation_prob`, else 0.
    """

    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        factor = self.scale_factor
        zoom = np.clip(rng.standard_normal() * factor + 1, 1 - factor, 1 + factor)
        limit = 2 * self.rotation_factor
        angle = np.clip(rng.standard_normal() * self.rotation_factor, -limit, limit)
        sample["scale"] = sample["scale"] * zoom
        sample["rotation"] = float(angle) if rng.random() < self.rotation_prob else 0.0
        return sample


@dataclass(frozen=True)
class AffineToInput:
    """mmpose TopDownAffine. Reads image, keypoints, visible, center, scale, rotation;
    changes image (to the input size) and keypoints (to input pixels); adds affine.

    One matrix from the codec warps the pixels (bilinear, black outside) and the labelled
    keypoints, so the two cannot disagree.
    """

    codec: CropGeometry

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        matrix = self.codec.affine_matrix(
            sample["center"], sample["scale"], sample.get("rotation", 0.0)
        )
        height, width = self.codec.input_size
        sample["image"] = cv2.warpAffine(
            sample["image"], matrix, (width, height), flags=cv2.INTER_LINEAR
        )
        labelled = sample["visible"][:, None] > 0
        moved = apply_affine(sample["keypoints"], matrix)
        sample["keypoints"] = np.where(labelled, moved, sample["keypoints"])
        sample["affine"] = matrix
        return sample


def train_transforms(augment: AugmentParams, codec: CropGeometry) -> list[Transform]:
    """The official train pipeline's geometric steps, in its order, from params."""
    input_h, input_w = codec.input_size
    return [
        RandomShiftCenter(augment.shift_factor, augment.shift_prob),
        RandomFlip(augment.flip_prob),
        HalfBody(augment.half_body_min_joints, augment.half_body_prob, input_w / input_h),
        RandomScaleRotation(augment.scale_factor, augment.rotation_factor, augment.rotation_prob),
        AffineToInput(codec),
    ]


def apply_transforms(
    sample: Sample, transforms: Sequence[Transform], rng: np.random.Generator
) -> Sample:
    for transform in transforms:
        sample = transform(sample, rng)
    return sample
