"""COCO keypoint AP, exactly as pycocotools computes it, plus MMPose's top-down protocol.

Predictions -> COCO results json -> `COCOeval(iouType="keypoints")` -> AP and AR figures.
The protocol on top (`topdown_results`) is the one behind the paper's table: each instance
is rescored by box score x mean confident keypoint score, then OKS-NMS per image removes
duplicate people found from overlapping boxes.

Shapes: N instances, K = 17 keypoints.
"""

from __future__ import annotations

import contextlib
import io
import json
import numbers
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sdpose.core.keypoints import NUM_KEYPOINTS, OKS_SIGMAS, PERSON_CATEGORY
from sdpose.core.paths import write_text_atomic
from sdpose.data.coco import DataError, index_with_pycocotools, load_coco_keypoints, load_json

# COCOeval.stats order for keypoints.
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def keypoint_results(
    image_ids: Sequence[int], keypoints: np.ndarray, scores: Sequence[float]
) -> list[dict]:
    """COCO keypoint results: one dict per instance.

    keypoints: (N, K, 3) x, y in original image pixels and a confidence per keypoint.
    scores: (N,) the instance score COCOeval ranks detections by.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(len(image_ids), NUM_KEYPOINTS, 3)
    return [
        {
            "image_id": int(image_id),
            "category_id": PERSON_CATEGORY["id"],
            "keypoints": [round(float(v), 3) for v in points.reshape(-1)],
            "score": float(score),
        }
        for image_id, points, score in zip(image_ids, keypoints, scores, strict=True)
    ]


def write_results(results: list[dict], path: Path) -> Path:
    """Write a results json atomically (a crash never leaves a truncated file)."""
    return write_text_atomic(path, json.dumps(results))


# What COCOeval reads from each ground-truth annotation.
GT_FIELDS = ("id", "image_id", "category_id", "keypoints", "num_keypoints", "bbox")
GT_FIELDS += ("area", "iscrowd")


def load_ground_truth(annotations: Path | str | COCO) -> COCO:
    """A pycocotools COCO of the ground truth, checked first so that a bad file is a
    DataError naming the record, not a KeyError deep inside COCOeval."""
    if isinstance(annotations, COCO):
        return annotations
    data = load_coco_keypoints(Path(annotations))
    for index, ann in enumerate(data["annotations"]):
        missing = [name for name in GT_FIELDS if not isinstance(ann, dict) or name not in ann]
        if missing:
            raise DataError(f"{annotations}: annotations[{index}] lacks {', '.join(missing)}")
        crowd = ann["iscrowd"]
        if not isinstance(crowd, int) or isinstance(crowd, bool) or crowd not in (0, 1):
            raise DataError(
                f"{annotations}: annotations[{index}] (id {ann['id']!r}): 'iscrowd' must be "
                f"0 or 1, found {crowd!r}"
            )
    return index_with_pycocotools(data)


def _load_results(results: list[dict] | Path | str, gt: COCO) -> tuple[list[dict], int]:
    """The checked person results, and how many results of another category were dropped
    (COCOeval would skip them without a word)."""
    source = "results"
    if not isinstance(results, list):
        source = str(results)
        results = load_json(Path(results))
        if not isinstance(results, list):
            raise DataError(f"{source}: a results file must be a JSON list of objects")
    image_ids = set(gt.getImgIds())
    person_ids = set(gt.getCatIds(catNms=[PERSON_CATEGORY["name"]])) or {PERSON_CATEGORY["id"]}
    found, ignored = [], 0
    for index, result in enumerate(results):
        where = f"{source}: record {index}"
        if not isinstance(result, dict):
            raise DataError(f"{where}: expected an object, found {type(result).__name__}")
        for name in ("image_id", "keypoints", "score"):
            if name not in result:
                raise DataError(f"{where}: '{name}' is missing")
        if result["image_id"] not in image_ids:
            raise DataError(f"{where}: image_id {result['image_id']!r} is not in the annotations")
        points = result["keypoints"]
        if not isinstance(points, list) or len(points) != 3 * NUM_KEYPOINTS:
            size = len(points) if isinstance(points, list) else type(points).__name__
            raise DataError(f"{where}: 'keypoints' has {size} values, expected 51")
        # numpy would take true/false and "1.5" as numbers; a results file must hold numbers.
        if not all(_is_number(value) for value in [*points, result["score"]]):
            raise DataError(f"{where}: keypoints and score must be numbers (not booleans or text)")
        values = np.asarray([*points, result["score"]], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise DataError(f"{where}: keypoints or score hold NaN or infinity")
        category = result.get("category_id", PERSON_CATEGORY["id"])
        if not _is_number(category) or category not in person_ids:
            ignored += 1
            continue
        # pycocotools' loadRes writes into the records; leave the caller's untouched.
        found.append({"category_id": PERSON_CATEGORY["id"], **result})
    return found, ignored


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def coco_keypoint_ap(
    annotations: Path | str | COCO, results: list[dict] | Path | str
) -> dict[str, float]:
    """COCO keypoint AP/AR of `results` (a results list or json file) against `annotations`.

    Returns SUMMARY_KEYS -> pycocotools' figure (-1 where COCO has no instance of that size,
    all 0 for an empty results list, which pycocotools itself cannot score).
    """
    return score_results(annotations, results)[0]


def score_results(
    annotations: Path | str | COCO, results: list[dict] | Path | str
) -> tuple[dict[str, float], int]:
    """`coco_keypoint_ap` and the number of non-person results it ignored, so that a
    caller (`sdpose coco-eval`) can say so instead of scoring fewer results silently."""
    gt = load_ground_truth(annotations)
    found, ignored = _load_results(results, gt)
    if not found:
        return dict.fromkeys(SUMMARY_KEYS, 0.0), ignored
    with contextlib.redirect_stdout(io.StringIO()):
        detections = gt.loadRes(found)
        evaluator = COCOeval(gt, detections, iouType="keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {key: float(value) for key, value in zip(SUMMARY_KEYS, evaluator.stats, strict=True)}
    return stats, ignored


def instance_scores(keypoint_scores: np.ndarray, box_scores: np.ndarray, vis_thr: float):
    """MMPose's rescoring: box score x mean of the keypoint scores above `vis_thr`.

    keypoint_scores: (N, K); box_scores: (N,). An instance with no confident keypoint
    scores 0, as in MMPose.
    """
    keypoint_scores = np.asarray(keypoint_scores, dtype=np.float64)
    confident = keypoint_scores > vis_thr
    count = confident.sum(axis=1)
    mean = np.where(confident, keypoint_scores, 0.0).sum(axis=1) / np.maximum(count, 1)
    return np.asarray(box_scores, dtype=np.float64) * np.where(count > 0, mean, 0.0)


def oks_iou(
    reference: np.ndarray,
    others: np.ndarray,
    reference_area: float,
    other_areas: np.ndarray,
    vis_thr: float | None = None,
    sigmas: np.ndarray = OKS_SIGMAS,
) -> np.ndarray:
    """Object keypoint similarity of one pose (K, 3) to M others (M, K, 3) -> (M,).

    The scale is the mean of the two areas, as in MMPose's OKS-NMS. With `vis_thr`, only
    keypoints confident in both poses count (MMPose's intent; its list `and` kept only the
    second pose's mask).
    """
    others = np.asarray(others, dtype=np.float64).reshape(-1, NUM_KEYPOINTS, 3)
    variances = (2 * sigmas) ** 2
    squared = ((others[:, :, :2] - reference[None, :, :2]) ** 2).sum(axis=2)  # (M, K)
    areas = (reference_area + np.asarray(other_areas, dtype=np.float64)) / 2 + np.spacing(1)
    exponent = squared / variances[None] / areas[:, None] / 2
    if vis_thr is None:
        return np.exp(-exponent).mean(axis=1)
    valid = (reference[None, :, 2] > vis_thr) & (others[:, :, 2] > vis_thr)
    count = valid.sum(axis=1)
    total = np.where(valid, np.exp(-exponent), 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    oks_thr: float,
    vis_thr: float | None = None,
) -> list[int]:
    """Greedy OKS non-maximum suppression within one image -> indices kept, best first.

    keypoints: (N, K, 3); scores, areas: (N,). A pose is dropped when its OKS with a
    better-scored kept pose exceeds `oks_thr`.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    kept = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(int(best))
        overlap = oks_iou(keypoints[best], keypoints[rest], areas[best], areas[rest], vis_thr)
        order = rest[overlap <= oks_thr]
    return kept


def topdown_results(
    image_ids: Sequence[int],
    keypoints: np.ndarray,
    box_scores: Sequence[float],
    areas: Sequence[float],
    vis_thr: float,
    oks_thr: float,
) -> list[dict]:
    """Top-down predictions -> COCO results after rescoring and per-image OKS-NMS.

    keypoints: (N, K, 3) in image pixels with keypoint scores; areas: (N,) the crop
    window's area (scale w x h), the OKS scale MMPose uses for NMS.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(-1, NUM_KEYPOINTS, 3)
    image_ids = np.asarray(image_ids)
    scores = instance_scores(keypoints[:, :, 2], np.asarray(box_scores), vis_thr)
    areas = np.asarray(areas, dtype=np.float64)
    by_image: dict[int, list[int]] = defaultdict(list)
    for index, image_id in enumerate(image_ids.tolist()):
        by_image[image_id].append(index)
    selected = []
    for image_id in sorted(by_image):
        members = np.asarray(by_image[image_id])
        # MMPose's evaluation runs OKS-NMS over all keypoints (no vis_thr), so do we.
        kept = oks_nms(keypoints[members], scores[members], areas[members], oks_thr)
        selected.extend(members[kept].tolist())
    return keypoint_results(image_ids[selected], keypoints[selected], scores[selected])
