"""What a model input is: a person box of a fixed aspect, padded, as an ImageNet-normalised image.

A box read from a file passes `checked_box` (a detection's score `checked_score`) before
anything uses it: `prepare` files a bad one as a finding, `predict` stops on it, each naming
its file and record. `sdpose prepare` turns every box into (center, scale) with
`center_scale`, the validation feed and `sdpose predict` normalise crops with
`normalize_images`, a train worker normalises its uint8 batches with `normalize_tensor` (the
same arithmetic in torch), and the model card states the same mean and std; one definition
keeps training, evaluation and deployment in agreement.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported where it is used (`# lazy`): Ray Data's crop and feed processes import
# this module to encode targets, and torch would cost each of them 1.4 s and 190 MB more

# Width / height of every person box `sdpose prepare` writes, and so of every model input:
# a model of another aspect would see stretched people.
BOX_ASPECT = 3 / 4
BOX_PADDING = 1.25  # the box grown by a quarter: context around the person, as mmpose
# ImageNet statistics in RGB order, as the official NormalizeTensor.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
_STD = np.array(IMAGENET_STD, dtype=np.float32)


class BoxError(ValueError):
    """Why a record's person box or score cannot be used. The message starts at the field;
    the caller prefixes its file and record and raises (or files) its own error type."""

    def __init__(self, field: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.field = field  # "bbox" or "score"
        self.reason = reason  # "malformed", "non_finite" or "empty"


def is_number(value: Any) -> bool:
    """A JSON number. bool is not one: numpy would read true as 1.0 (and "0.9" as 0.9)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def checked_box(bbox: Any) -> list[float]:
    """A record's xywh person box as floats: 4 numbers, finite, of positive width and height;
    BoxError otherwise. Whether it lies in its image is the caller's rule."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise BoxError("bbox", "malformed", f"'bbox' must be 4 numbers x, y, w, h: {bbox!r}")
    for value in bbox:
        if not is_number(value):
            raise BoxError("bbox", "malformed", f"'bbox' must hold numbers, found {value!r}")
    values = _finite(bbox)
    if values is None:
        raise BoxError("bbox", "non_finite", f"'bbox' holds NaN or infinity: {bbox!r}")
    if values[2] <= 0 or values[3] <= 0:
        raise BoxError("bbox", "empty", f"'bbox' width and height must be positive: {bbox!r}")
    return values


def checked_score(score: Any) -> float:
    """A detection's score as a float: a finite number; BoxError otherwise."""
    if not is_number(score):
        raise BoxError("score", "malformed", f"'score' must hold numbers, found {score!r}")
    values = _finite([score])
    if values is None:
        raise BoxError("score", "non_finite", f"'score' holds NaN or infinity: {score!r}")
    return values[0]


def _finite(numbers: list[int | float]) -> list[float] | None:
    """The numbers as floats, or None when one is NaN, infinite or too large for a float."""
    try:
        values = [float(value) for value in numbers]
    except OverflowError:  # a JSON integer of 400 digits
        return None
    return values if all(math.isfinite(value) for value in values) else None


def center_scale(bbox: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """xywh box -> (center, scale) in original pixels.

    The box's aspect is fixed to the model input's by growing its short side, then padded by
    1.25; `scale` is that window's (w, h), so a crop of it maps back to the image exactly.
    """
    x, y, w, h = (float(value) for value in bbox)
    center = np.array([x + w / 2.0, y + h / 2.0])
    if w > BOX_ASPECT * h:
        h = w / BOX_ASPECT
    else:
        w = h * BOX_ASPECT
    return center, np.array([w, h]) * BOX_PADDING


def normalize_images(images_bgr: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 BGR -> (N, 3, H, W) float32 RGB, ImageNet-normalised."""
    rgb = images_bgr[..., ::-1].astype(np.float32) * (1.0 / 255.0)
    normalised = (rgb - _MEAN) / _STD
    return np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))


def normalize_tensor(images_bgr: torch.Tensor) -> torch.Tensor:
    """`normalize_images` for a torch (N, H, W, 3) uint8 BGR batch, on its own device.

    The train feed ships uint8 crops, a quarter of float32's bytes through Ray's object
    store, and the worker (or its GPU) normalises them here. The result is channels-last,
    as the (N, H, W, 3) source already lies: the CPU convolutions run 13% faster on it
    (sdpose-nano's step; docs/training.md, "Throughput of the train stage").
    """
    import torch  # lazy: see the module's note on torch

    if images_bgr.dtype != torch.uint8 or images_bgr.ndim != 4 or images_bgr.shape[-1] != 3:
        raise ValueError(
            f"images: expected (N, H, W, 3) uint8 BGR, got {tuple(images_bgr.shape)} "
            f"{images_bgr.dtype}"
        )
    mean = torch.from_numpy(_MEAN).to(images_bgr.device).view(1, 3, 1, 1)
    std = torch.from_numpy(_STD).to(images_bgr.device).view(1, 3, 1, 1)
    rgb = images_bgr.permute(0, 3, 1, 2).flip(1).float() * (1.0 / 255.0)
    return ((rgb - mean) / std).contiguous(memory_format=torch.channels_last)
