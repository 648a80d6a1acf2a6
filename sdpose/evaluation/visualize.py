"""Skeleton overlays and image grids (OpenCV, BGR images), for data checks and predictions.

Left limbs are drawn orange, right limbs blue, the midline green (MMPose's convention),
so a left/right swap is visible at a glance. Ground truth: visible keypoints (v=2) are
filled dots, occluded ones (v=1) rings; predictions: keypoints scoring above a threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from sdpose.core.keypoints import KEYPOINT_NAMES, SKELETON
from sdpose.data.coco import load_coco_keypoints

LEFT, RIGHT, MIDDLE = (0, 128, 255), (255, 128, 0), (0, 200, 0)  # BGR
BOX_COLOR = (255, 255, 255)


def _side(index: int) -> tuple[int, int, int]:
    name = KEYPOINT_NAMES[index]
    return LEFT if name.startswith("left") else RIGHT if name.startswith("right") else MIDDLE


def _edge_color(a: int, b: int) -> tuple[int, int, int]:
    sides = {_side(a), _side(b)}
    return sides.pop() if len(sides) == 1 else MIDDLE


def draw_poses(
    image: np.ndarray,
    poses: np.ndarray,
    *,
    score_thr: float = 0.0,
    occluded: np.ndarray | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """Draw N skeletons (poses: (N, K, 3); occluded: (N, K) bool) on a copy of `image`."""
    canvas = image.copy()
    if canvas.ndim == 2:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
    line = thickness or max(1, round(max(canvas.shape[:2]) / 200))
    for box in boxes or []:
        x, y, w, h = (float(value) for value in box)
        cv2.rectangle(canvas, (round(x), round(y)), (round(x + w), round(y + h)), BOX_COLOR, 1)
    for n, pose in enumerate(np.asarray(poses, dtype=np.float64)):
        shown = pose[:, 2] > score_thr
        for a, b in SKELETON:
            if shown[a] and shown[b]:
                ends = (_point(pose[a]), _point(pose[b]))
                cv2.line(canvas, *ends, _edge_color(a, b), line, cv2.LINE_AA)
        for k in np.flatnonzero(shown):
            ring = occluded is not None and bool(occluded[n][k])
            fill = -1 if not ring else max(1, line // 2 + 1)
            cv2.circle(canvas, _point(pose[k]), line + 2, _side(k), fill, cv2.LINE_AA)
            if not ring:
                cv2.circle(canvas, _point(pose[k]), line + 2, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def draw_coco_annotations(image: np.ndarray, annotations: Sequence[dict]) -> np.ndarray:
    """Overlay COCO person annotations (flat 51-value keypoints, v flags) and their boxes."""
    if not annotations:
        return image.copy()
    poses = np.array([ann["keypoints"] for ann in annotations], dtype=np.float64)
    poses = poses.reshape(len(annotations), -1, 3)
    return draw_poses(
        image,
        poses,
        occluded=poses[:, :, 2] == 1,
        boxes=[ann["bbox"] for ann in annotations if "bbox" in ann],
    )


def _point(keypoint: np.ndarray) -> tuple[int, int]:
    return round(float(keypoint[0])), round(float(keypoint[1]))


def image_grid(
    images: Sequence[np.ndarray],
    columns: int,
    cell: tuple[int, int] | None = None,
    pad: int = 4,
    background: int = 255,
) -> np.ndarray:
    """Tile images row by row; each is fitted into a (w, h) cell keeping its aspect."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    cell = cell or (images[0].shape[1], images[0].shape[0])
    rows = -(-len(images) // columns)
    grid = np.full(
        (rows * (cell[1] + pad) + pad, columns * (cell[0] + pad) + pad, 3),
        background,
        dtype=np.uint8,
    )
    for index, image in enumerate(images):
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        factor = min(cell[0] / image.shape[1], cell[1] / image.shape[0])
        size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
        fitted = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        top = pad + (index // columns) * (cell[1] + pad)
        left = pad + (index % columns) * (cell[0] + pad)
        grid[top : top + size[1], left : left + size[0]] = fitted
    return grid


def coco_overlay_grid(
    annotations_path: Path, image_root: Path, count: int = 12, columns: int = 4
) -> np.ndarray:
    """The first `count` images of a COCO keypoint file with their labels drawn over them."""

    data = load_coco_keypoints(Path(annotations_path))
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    tiles = []
    for record in data["images"][:count]:
        image = cv2.imread(str(Path(image_root) / record["file_name"]), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{image_root / record['file_name']}: cannot read the image")
        tiles.append(draw_coco_annotations(image, by_image.get(record["id"], [])))
    return image_grid(tiles, columns)
