"""Crop geometry shared by every codec: a person box (center, scale) <-> the network input.

A box is `center` (2,) and `scale` (2,) = box (w, h) in original image pixels (already fixed
to the input aspect and padded; not mmpose's /200 units). The crop maps the image rectangle
[center - scale/2, center + scale/2] linearly onto the input [0, input_w] x [0, input_h].
Points are (x, y). The heatmap and the SimCC codec differ in what the network predicts, not
in where a crop comes from, so this one definition serves both (and the augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported where it is used (`# lazy`): Ray Data's crop and feed processes import
# this module to encode targets, and torch would cost each of them 1.4 s and 190 MB more
ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")


@dataclass(frozen=True)
class CropGeometry:
    """The input size of a model, (height, width), and the box <-> input mappings."""

    input_size: tuple[int, int] = (256, 192)

    def to_image(self, keypoints: ArrayT, center: ArrayT, scale: ArrayT) -> ArrayT:
        """Input-crop pixels (..., K, 2) -> original-image pixels; center/scale (..., 2)."""
        center, scale = _like(center, keypoints), _like(scale, keypoints)
        in_wh = _like(self._input_wh, keypoints)
        return keypoints * (scale / in_wh)[..., None, :] + (center - scale / 2)[..., None, :]

    def to_input(self, keypoints: ArrayT, center: ArrayT, scale: ArrayT) -> ArrayT:
        """Original-image pixels (..., K, 2) -> input-crop pixels; inverse of `to_image`."""
        center, scale = _like(center, keypoints), _like(scale, keypoints)
        in_wh = _like(self._input_wh, keypoints)
        return (keypoints - (center - scale / 2)[..., None, :]) * (in_wh / scale)[..., None, :]

    def affine_matrix(
        self,
        center: np.ndarray,
        scale: np.ndarray,
        rotation: float | np.ndarray = 0.0,
        output_size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """The (2, 3) image -> crop affine for cv2.warpAffine; (N, 2, 3) for (N, 2) boxes.

        The box rectangle, rotated by `rotation` degrees about `center`, lands on
        [0, out_w] x [0, out_h] with `center` at the crop's middle. `output_size` is
        (height, width), the input size by default. Sign: a positive rotation turns the
        image content counter-clockwise on screen in the crop, as cv2.getRotationMatrix2D
        and mmpose's get_affine_transform (the sampled box is turned clockwise in the
        image). With scale aspect equal to the output aspect this is mmpose's similarity;
        without rotation it equals `to_input`. Warp pixels and keypoints (`apply_affine`)
        with the same matrix.
        """
        out_h, out_w = self.input_size if output_size is None else output_size
        center = np.asarray(center, dtype=np.float64)
        scale = np.asarray(scale, dtype=np.float64)
        angle = np.deg2rad(np.asarray(rotation, dtype=np.float64))
        batch = np.broadcast_shapes(center.shape[:-1], scale.shape[:-1], angle.shape)
        cos, sin = np.broadcast_to(np.cos(angle), batch), np.broadcast_to(np.sin(angle), batch)
        zoom_x = np.broadcast_to(out_w / scale[..., 0], batch)
        zoom_y = np.broadcast_to(out_h / scale[..., 1], batch)
        # linear part: scale per axis after undoing the box's rotation, R(-angle)
        linear = np.stack(
            [
                np.stack([zoom_x * cos, zoom_x * sin], -1),
                np.stack([-zoom_y * sin, zoom_y * cos], -1),
            ],
            axis=-2,
        )
        offset = np.array([out_w / 2, out_h / 2]) - np.einsum("...ij,...j->...i", linear, center)
        return np.concatenate([linear, offset[..., None]], axis=-1)

    @property
    def _input_wh(self) -> np.ndarray:
        return np.array([self.input_size[1], self.input_size[0]], dtype=np.float64)


# --------------------------------------------------------------------- helpers
def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points (..., 2) through an affine (2, 3); a batch (N, 2, 3) takes points (N, ..., 2)."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape[-2:] != (2, 3):
        raise ValueError(f"apply_affine: matrix must be (..., 2, 3), got {matrix.shape}")
    linear, offset = matrix[..., :2], matrix[..., 2]
    if matrix.ndim == 2:
        return points @ linear.T + offset
    # one matrix per leading index: broadcast it over the point axes in between
    extra = points.ndim - matrix.ndim + 1
    linear = linear.reshape(linear.shape[:-2] + (1,) * extra + (2, 2))
    offset = offset.reshape(offset.shape[:-1] + (1,) * extra + (2,))
    return np.einsum("...ij,...j->...i", linear, points) + offset


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of affine(s) (..., 2, 3): crop -> image for an image -> crop matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    inverse_linear = np.linalg.inv(matrix[..., :2])
    offset = -np.einsum("...ij,...j->...i", inverse_linear, matrix[..., 2])
    return np.concatenate([inverse_linear, offset[..., None]], axis=-1)


def _like(value: np.ndarray | torch.Tensor, reference: ArrayT) -> ArrayT:
    """`value` as the array type (and torch device/dtype) of `reference`."""
    if isinstance(reference, np.ndarray):
        return np.asarray(value, dtype=np.float64)  # image coordinates need the precision
    import torch  # lazy: see the module's note on torch

    return torch.as_tensor(value, dtype=reference.dtype, device=reference.device)


def batched_keypoints(
    keypoints: np.ndarray, visible: np.ndarray
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(N, K, 2) float64 keypoints and (N, K) visibility from a batch or one person (K, 2),
    and whether it was one person: every codec's `encode` takes both forms."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    visible = np.asarray(visible)
    single = keypoints.ndim == 2
    if single:
        keypoints, visible = keypoints[None], visible[None]
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"encode: keypoints must be (N, K, 2), got {keypoints.shape}")
    if visible.shape != keypoints.shape[:2]:
        raise ValueError(
            f"encode: visible must be (N, K) = {keypoints.shape[:2]}, got {visible.shape}"
        )
    return keypoints, visible, single
