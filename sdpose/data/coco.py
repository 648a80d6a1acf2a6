"""Read and validate COCO person-keypoint files, with errors a user can act on.

Two kinds of trouble, treated differently on purpose:
- a file that is not COCO at all (unreadable, bad JSON, missing sections, malformed image
  records) is a `DataError` naming the file and what is wrong: nothing sensible can be kept;
- a bad annotation or image inside a good file is a *finding* (`Issue`): `prepare` skips the
  record and reports it by reason, or raises in strict mode. Good records still come through.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from pycocotools.coco import COCO

from sdpose.core.errors import InputError
from sdpose.core.inputs import BoxError, checked_box, checked_score, is_number
from sdpose.core.keypoints import NUM_KEYPOINTS, PERSON_CATEGORY

KEYPOINT_VALUES = 3 * NUM_KEYPOINTS  # 51: x, y, v per keypoint


class DataError(InputError):
    """Input data that cannot be used; the message names the file, record and field."""


@dataclass(frozen=True)
class Issue:
    """Why one record is not kept: a report reason, the record's id and a readable detail."""

    reason: str
    record: int | str  # annotation id, or "record N" when the record has no usable id
    detail: str


# Reasons that mean the data is wrong (strict mode raises); the others are ordinary filters
# of the top-down protocol (crowd regions, people without labelled keypoints, ...).
DEFECT_REASONS = frozenset(
    {
        "malformed",
        "duplicate_id",
        "unknown_image",
        "bad_keypoints",
        "non_finite",
        "bad_box",
        "unsafe_file_name",
        "missing_image",
        "undecodable_image",
        "image_size_mismatch",
    }
)


def load_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the file ({error})") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(
            f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from error


def load_coco_keypoints(path: Path) -> dict:
    """Read a person_keypoints_*.json and check the file-level structure.

    Raises DataError for anything that makes the file unusable as a whole; per-annotation
    problems are left to `check_annotation`.
    """
    data = load_json(path)
    check_top_level(data, path)
    check_sections(data, path)
    person_category_id(data, path)
    seen: dict[int, int] = {}
    for index, image in enumerate(data["images"]):
        add_image_record(image, index, path, seen)
    return data


def check_top_level(data: Any, path: Path) -> None:
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: not a COCO annotation file: the top level is a "
            f"{type(data).__name__}, expected an object with images, annotations "
            "and categories"
        )


def check_sections(data: dict, path: Path) -> None:
    """images, annotations and categories are there, and lists."""
    for section in ("images", "annotations", "categories"):
        if section not in data:
            raise DataError(f"{path}: not a COCO annotation file: '{section}' is missing")
        if not isinstance(data[section], list):
            raise DataError(
                f"{path}: '{section}' must be a list, not {type(data[section]).__name__}"
            )


def add_image_record(image: Any, index: int, path: Path, seen: dict[int, int]) -> None:
    """Check `images[index]` and that its id is new; `seen` maps ids to their index."""
    _check_image_record(image, index, path)
    if image["id"] in seen:
        raise DataError(
            f"{path}: images[{index}]: id {image['id']} is already used by "
            f"images[{seen[image['id']]}]"
        )
    seen[image["id"]] = index


def person_category_id(data: dict, path: Path) -> int:
    """The id of the person category; it must carry COCO's 17 keypoints."""
    for index, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise DataError(f"{path}: categories[{index}]: expected an object with an integer 'id'")
    for index, category in enumerate(data["categories"]):
        if category.get("name") != PERSON_CATEGORY["name"]:
            continue
        names = category.get("keypoints")
        if names is not None and (not isinstance(names, list) or len(names) != NUM_KEYPOINTS):
            raise DataError(
                f"{path}: categories[{index}] (person): 'keypoints' must list COCO's "
                f"{NUM_KEYPOINTS} names, found {names!r:.80}"
            )
        return category["id"]
    raise DataError(f"{path}: no 'person' entry in 'categories'; not a COCO person-keypoint file")


def _check_image_record(image: Any, index: int, path: Path) -> None:
    where = f"{path}: images[{index}]"
    if not isinstance(image, dict):
        raise DataError(f"{where}: expected an object, found {type(image).__name__}")
    for field in ("id", "width", "height"):
        value = image.get(field)
        if not isinstance(value, int) or isinstance(value, bool):
            raise DataError(f"{where}: '{field}' must be an integer, found {value!r}")
    if image["width"] <= 0 or image["height"] <= 0:
        raise DataError(
            f"{where} (id {image['id']}): width and height must be positive, "
            f"found {image['width']}x{image['height']}"
        )
    if not isinstance(image.get("file_name"), str) or not image["file_name"]:
        raise DataError(f"{where} (id {image['id']}): 'file_name' must be a non-empty string")


def unsafe_file_name(file_name: str) -> str | None:
    """Why a file_name may not be joined to an image root, or None when it is safe.

    Checked lexically under both path flavours, so `C:\\x.jpg` or `..\\x.jpg` cannot reach
    outside the root on any system; symlinks inside the root stay allowed (COCO trees are
    often linked in).
    """
    for flavour in (PurePosixPath, PureWindowsPath):
        name = flavour(file_name)
        if name.is_absolute() or name.anchor:
            return f"file_name {file_name!r} is an absolute path"
        if ".." in name.parts:
            return f"file_name {file_name!r} climbs out of the image root with '..'"
    return None


def check_annotation(
    ann: Any, index: int, images: dict[int, dict], person_id: int | None
) -> Issue | None:
    """The first reason this annotation is not a training instance, or None to keep it.

    `person_id` None leaves the category out (a streamed file names it only at its end).
    """
    if not isinstance(ann, dict) or not _is_int(ann.get("id")):
        return Issue("malformed", f"record {index}", f"annotations[{index}]: no integer 'id'")
    ann_id = ann["id"]
    where = f"annotation {ann_id} (annotations[{index}])"
    if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:
        return Issue(
            "unknown_image", ann_id, f"{where}: image_id {ann.get('image_id')!r} is not in 'images'"
        )
    if person_id is not None and ann.get("category_id") != person_id:
        return Issue("not_person", ann_id, f"{where}: category_id {ann.get('category_id')!r}")
    issue = _check_keypoints(ann.get("keypoints"), ann_id, where)
    issue = issue or _check_box(ann.get("bbox"), ann_id, where)
    if issue:
        return issue
    crowd = ann.get("iscrowd", 0)
    if not _is_int(crowd) or crowd not in (0, 1):  # "no" is truthy: not a crowd region
        return Issue("malformed", ann_id, f"{where}: 'iscrowd' must be 0 or 1, found {crowd!r}")
    if crowd:
        return Issue("crowd", ann_id, f"{where}: a crowd region (iscrowd=1)")
    if labelled_count(ann["keypoints"]) == 0:
        return Issue("no_keypoints", ann_id, f"{where}: num_keypoints == 0 (no labelled keypoint)")
    image = images[ann["image_id"]]
    if clip_box(ann["bbox"], image["width"], image["height"]) is None:
        return Issue(
            "box_outside_image",
            ann_id,
            f"{where}: bbox {ann['bbox']} has no positive "
            f"area inside the {image['width']}x{image['height']} image",
        )
    return None


def _check_keypoints(keypoints: Any, ann_id: int, where: str) -> Issue | None:
    if not isinstance(keypoints, list) or len(keypoints) != KEYPOINT_VALUES:
        size = len(keypoints) if isinstance(keypoints, list) else type(keypoints).__name__
        return Issue(
            "bad_keypoints",
            ann_id,
            f"{where}: 'keypoints' has {size} values, expected {KEYPOINT_VALUES} (17 x, y, v)",
        )
    if not all(is_number(value) for value in keypoints):
        return Issue("bad_keypoints", ann_id, f"{where}: 'keypoints' holds a non-number")
    if not all(math.isfinite(value) for value in keypoints):
        return Issue("non_finite", ann_id, f"{where}: 'keypoints' holds NaN or infinity")
    if any(v not in (0, 1, 2) for v in keypoints[2::3]):
        return Issue("bad_keypoints", ann_id, f"{where}: visibility flags must be 0, 1 or 2")
    return None


def _check_box(bbox: Any, ann_id: int, where: str) -> Issue | None:
    try:
        checked_box(bbox)
    except BoxError as error:
        return _box_issue(error, ann_id, where)
    return None


def _box_issue(error: BoxError, record: int, where: str) -> Issue:
    """A box or score fault as a finding: NaN, infinity or a score that is no number is
    `non_finite`, any other box fault `bad_box`."""
    non_finite = error.reason == "non_finite" or error.field == "score"
    return Issue("non_finite" if non_finite else "bad_box", record, f"{where}: {error}")


def labelled_count(keypoints: list[float]) -> int:
    """COCO's num_keypoints recomputed from the flags: the file's own field is not trusted."""
    return sum(1 for v in keypoints[2::3] if v > 0)


def clip_box(bbox: list[float], width: int, height: int) -> list[float] | None:
    """Clip an xywh box to the image (inclusive pixel grid, as MMPose's COCO loader does).

    Returns None when nothing of positive size is left inside the image.
    """
    x, y, w, h = (float(value) for value in bbox)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y + max(0.0, h - 1.0))
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


def index_with_pycocotools(data: dict) -> COCO:
    """A pycocotools index over already-validated records (its loading chatter silenced)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_detections(path: Path) -> list[dict]:
    """A COCO detection-results file: a list of {image_id, category_id, bbox, score}."""
    data = load_json(path)
    if not isinstance(data, list):
        raise DataError(
            f"{path}: a detection-results file must be a JSON list of "
            f"{{image_id, bbox, score}} objects, found {type(data).__name__}"
        )
    for index, det in enumerate(data):
        if not isinstance(det, dict):
            raise DataError(f"{path}: record {index}: expected an object")
        for field in ("image_id", "bbox", "score"):
            if field not in det:
                raise DataError(f"{path}: record {index}: '{field}' is missing")
    return data


def check_detection(
    det: dict, index: int, images: dict[int, dict], person_id: int, score_thr: float
) -> Issue | None:
    """Why a detector box is not used for validation, or None to keep it."""
    where = f"detection {index}"
    if not _is_int(det["image_id"]) or det["image_id"] not in images:
        return Issue(
            "unknown_image",
            index,
            f"{where}: image_id {det['image_id']!r} is not in the annotation file's images",
        )
    if det.get("category_id", person_id) != person_id:
        return Issue("not_person", index, f"{where}: category_id {det.get('category_id')!r}")
    try:
        checked_score(det["score"])
        checked_box(det["bbox"])
    except BoxError as error:
        return _box_issue(error, index, where)
    if det["score"] < score_thr:
        return Issue("below_score_thr", index, f"{where}: score {det['score']:.3f} < {score_thr}")
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
