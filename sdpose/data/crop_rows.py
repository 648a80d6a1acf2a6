"""A crop row: one person cut from its image, stored, and read back (the crop contract).

Crop row (CROP_SCHEMA): ids; the crop (`encoding` jpeg or raw BGR bytes) and its size; the
affine `crop_to_image` (2x3, crop pixels -> original pixels); keypoints in crop pixels
(x, y, v; unlabelled joints stay 0, 0, 0); the box `center` and `scale` in original pixels
(evaluation maps predictions back with them); area, score, num_keypoints. The crops stage
writes these rows (`crop_rows`), the feed and the int8 calibration read them
(`decode_crop`, `fixed_list_column`), so this module imports no Ray.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from sdpose.config import CropsParams
from sdpose.core.images import ImageError, read_image

# A stored crop keeps the original resolution unless the box is taller than twice the
# network input's height (`max_box_height`), so even the smallest train-time scale (0.65)
# sees no upsampling of lost detail, while a 900-pixel person does not cost 5 MB per crop
# and a 128x96 model does not decode pixels it never sees.
INPUT_HEIGHTS_PER_BOX = 2
MAX_BOX_HEIGHT = 512.0  # for the paper's 256x192 input


def max_box_height(input_size: tuple[int, int]) -> float:
    """The tallest box stored at full resolution, for a model input (h, w)."""
    return float(INPUT_HEIGHTS_PER_BOX * input_size[0])


MANIFEST_COLUMNS = ["image_id", "ann_id", "file_name", "width", "height", "center", "scale",
                    "keypoints", "num_keypoints", "area", "score"]  # fmt: skip

CROP_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("ann_id", pa.int64(), nullable=False),
        pa.field("crop", pa.binary(), nullable=False),
        pa.field("encoding", pa.string(), nullable=False),  # jpeg | raw (H x W x 3 BGR)
        pa.field("crop_height", pa.int32(), nullable=False),
        pa.field("crop_width", pa.int32(), nullable=False),
        pa.field("crop_to_image", pa.list_(pa.float64(), 6), nullable=False),  # 2x3 row-major
        pa.field("keypoints", pa.list_(pa.float32(), 51), nullable=False),  # crop px, x y v
        pa.field("center", pa.list_(pa.float32(), 2), nullable=False),  # original px
        pa.field("scale", pa.list_(pa.float32(), 2), nullable=False),  # original px
        pa.field("num_keypoints", pa.int32(), nullable=False),
        pa.field("area", pa.float32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]
)


# --------------------------------------------------------------------------- geometry
def cut_crop(
    image: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    context: float,
    max_height: float = MAX_BOX_HEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """The context window around a box, zero outside the image; and its crop -> image affine.

    image (H, W, C) uint8; center, scale (2,) original pixels. Returns the crop (h, w, C)
    and the (2, 3) affine taking crop pixel coordinates to original ones. At full
    resolution the window starts on a whole pixel, so the crop is an exact copy (no
    resampling blur before the train-time warp). A box taller than `max_height` is
    resampled bilinearly, as mmpose samples every box
    from the full image.
    """
    win_w = max(1, math.ceil(context * float(scale[0])))
    win_h = max(1, math.ceil(context * float(scale[1])))
    x0 = round(float(center[0]) - win_w / 2)
    y0 = round(float(center[1]) - win_h / 2)
    ratio = min(1.0, max_height / float(scale[1]))
    if ratio < 1.0:
        out_w, out_h = max(1, round(win_w * ratio)), max(1, round(win_h * ratio))
        step_x, step_y = win_w / out_w, win_h / out_h
        to_image = np.array([[step_x, 0.0, x0], [0.0, step_y, y0]])
        crop = cv2.warpAffine(
            image, cv2.invertAffineTransform(to_image), (out_w, out_h), flags=cv2.INTER_LINEAR
        )
        return crop, to_image
    window = np.zeros((win_h, win_w, image.shape[2]), dtype=image.dtype)
    src_x, src_y = max(x0, 0), max(y0, 0)
    end_x, end_y = min(x0 + win_w, image.shape[1]), min(y0 + win_h, image.shape[0])
    if end_x > src_x and end_y > src_y:
        window[src_y - y0 : end_y - y0, src_x - x0 : end_x - x0] = image[src_y:end_y, src_x:end_x]
    return window, np.array([[1.0, 0.0, x0], [0.0, 1.0, y0]])


def keypoints_to_crop(keypoints: np.ndarray, crop_to_image: np.ndarray) -> np.ndarray:
    """COCO keypoints (K, 3) in original pixels -> crop pixels; unlabelled joints stay 0."""
    labelled = keypoints[:, 2] > 0
    out = keypoints.astype(np.float64).copy()
    scale = np.diag(crop_to_image[:, :2])  # crops are axis-aligned: a diagonal linear part
    out[:, :2] = (keypoints[:, :2] - crop_to_image[:, 2]) / scale
    out[~labelled] = 0.0
    return out


# --------------------------------------------------------------------------- encoding
def encode_crop(crop: np.ndarray, params: CropsParams) -> bytes:
    """BGR crop (OpenCV's order) -> bytes per `crops.encoding`: jpeg, or raw BGR pixels."""
    if params.encoding == "raw":
        return np.ascontiguousarray(crop).tobytes()
    ok, buffer = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, params.jpeg_quality])
    if not ok:
        raise ValueError(f"cv2 could not JPEG-encode a crop of shape {crop.shape}")
    return buffer.tobytes()


def decode_crop(data: bytes, height: int, width: int, encoding: str) -> np.ndarray:
    """Bytes of a crop row -> (height, width, 3) uint8 BGR."""
    if encoding == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    crop = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if crop is None or crop.shape[:2] != (height, width):
        raise ValueError(f"a {encoding} crop of {height}x{width} pixels does not decode")
    return crop


# --------------------------------------------------------------------------- rows
def crop_rows(
    rows: pa.Table, image_root: Path, params: CropsParams, max_height: float = MAX_BOX_HEIGHT
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Manifest rows -> crop rows (CROP_SCHEMA) and skipped rows with reasons.

    Rows are grouped by image_id so each image is decoded once for all its people.
    """
    people = rows.select(["image_id", "ann_id", "file_name", "width", "height",
                          "num_keypoints", "area", "score"]).to_pylist()  # fmt: skip
    centers, scales = fixed_list_column(rows, "center", 2), fixed_list_column(rows, "scale", 2)
    keypoints = fixed_list_column(rows, "keypoints", 51).reshape(-1, 17, 3)
    out: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for members in _rows_by_image(rows.column("image_id").to_numpy()):
        first = people[members[0]]
        path = image_root / first["file_name"]
        try:
            image = read_sized_image(path, first["width"], first["height"])
        except ImageError as error:
            skipped += [_skip_record(people[i], path, error) for i in members]
            continue
        for i in members:
            if not (scales[i] > 0).all():
                empty = ImageError("empty_box", f"box scale {scales[i].tolist()} has no area")
                skipped.append(_skip_record(people[i], path, empty))
                continue
            crop, to_image = cut_crop(image, centers[i], scales[i], params.context, max_height)
            out.append({**people[i], "crop": encode_crop(crop, params),
                        "encoding": params.encoding, "crop_height": crop.shape[0],
                        "crop_width": crop.shape[1], "crop_to_image": to_image.ravel(),
                        "keypoints": keypoints_to_crop(keypoints[i], to_image).ravel(),
                        "center": centers[i], "scale": scales[i]})  # fmt: skip
    return pa.Table.from_pylist(out, schema=CROP_SCHEMA), skipped


def read_sized_image(path: Path, width: int, height: int) -> np.ndarray:
    """The image (BGR) of the size the manifest says, or raise ImageError."""
    image = read_image(path)
    if image.shape[:2] != (height, width):
        raise ImageError(
            "size_mismatch",
            f"{path} is {image.shape[1]}x{image.shape[0]} pixels but the manifest says "
            f"{width}x{height}",
        )
    return image


def _rows_by_image(image_ids: np.ndarray) -> list[np.ndarray]:
    """Row indices grouped by image id, in order of first appearance of each image."""
    if len(image_ids) == 0:
        return []
    order = np.argsort(image_ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, image_ids[order][1:] != image_ids[order][:-1]])
    groups = np.split(order, starts[1:])
    return sorted(groups, key=lambda members: members[0])


def fixed_list_column(rows: pa.Table, name: str, size: int) -> np.ndarray:
    """A fixed-size-list column (center, keypoints, ...) as an (N, size) float64 array."""
    column = rows.column(name).combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, size)


def _skip_record(person: dict[str, Any], path: Path, error: ImageError) -> dict[str, Any]:
    return {"image_id": person["image_id"], "ann_id": person["ann_id"],
            "file_name": str(path), "kind": error.kind, "reason": str(error)}  # fmt: skip
