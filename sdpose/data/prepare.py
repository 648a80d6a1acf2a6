"""The `prepare` stage: COCO annotations + images -> Parquet manifests of person instances.

Everything downstream trusts these manifests, so every record is checked here once: the
file structure (`coco.load_coco_keypoints`), each annotation (`coco.check_annotation`) and
each image file that a kept instance needs (exists, decodes, has the recorded size). A bad
record is skipped and reported by reason in `report.json`, or raised in strict mode.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sdpose import console
from sdpose.config import Params
from sdpose.core.inputs import center_scale
from sdpose.core.paths import (
    PREPARED_DIR,
    remove_abandoned_staging,
    resolve,
    split_paths,
    staged_directory,
)
from sdpose.data.coco import (
    DEFECT_REASONS,
    DataError,
    Issue,
    check_annotation,
    check_detection,
    clip_box,
    index_with_pycocotools,
    labelled_count,
    load_coco_keypoints,
    load_detections,
    person_category_id,
    unsafe_file_name,
)
from sdpose.data.manifest import SCHEMA_VERSION, write_manifest

SPLITS = ("train", "val")


@dataclass
class PreparedSplit:
    """Manifest rows of one split, its detector-box rows (val only) and its report."""

    rows: list[dict]
    report: dict
    det_rows: list[dict] = field(default_factory=list)


def prepare_split(
    annotations: Path,
    image_root: Path,
    split: str,
    *,
    strict: bool = False,
    detections: Path | None = None,
    det_score_thr: float = 0.0,
    workers: int = 8,
) -> PreparedSplit:
    """Validate one COCO split and turn its usable instances into manifest rows.

    `image_root` is where the image files are read from; `detections` (a COCO
    detection-results json) adds detector-box rows for top-down validation.
    """
    annotations, image_root = Path(annotations), Path(image_root)
    data = load_coco_keypoints(annotations)
    person_id = person_category_id(data, annotations)
    images = {image["id"]: image for image in data["images"]}
    issues, candidates = _screen_annotations(data["annotations"], images, person_id)
    det_issues, dets = _screen_detections(detections, images, person_id, det_score_thr)
    needed = {ann["image_id"] for ann in candidates} | {det["image_id"] for _, det in dets}
    bad_images = check_images([images[i] for i in sorted(needed)], image_root, workers)

    rows, det_rows = [], []
    coco = index_with_pycocotools({**data, "annotations": candidates})
    for image_id in sorted(coco.getImgIds()):
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            if image_id in bad_images:
                reason, detail = bad_images[image_id]
                issues.append(Issue(reason, ann["id"], f"annotation {ann['id']}: {detail}"))
            else:
                rows.append(_instance_row(ann, coco.imgs[image_id], split))
    for index, det in dets:
        if det["image_id"] in bad_images:
            reason, detail = bad_images[det["image_id"]]
            det_issues.append(Issue(reason, index, f"detection {index}: {detail}"))
        else:
            det_rows.append(_detection_row(index, det, images[det["image_id"]], split))
    if strict:
        _raise_defects(annotations, issues)
        _raise_defects(Path(detections) if detections else annotations, det_issues)

    report = {
        "annotations": str(annotations),
        "image_root": str(image_root),
        "images": len(images),
        "records": len(data["annotations"]),
        "kept": len(rows),
        "kept_images": len({row["image_id"] for row in rows}),
        "skipped": summarize_issues(issues, bad_images),
    }
    if detections is not None:
        report["detections"] = {
            "file": str(detections),
            "score_thr": det_score_thr,
            "kept": len(det_rows),
            "skipped": summarize_issues(det_issues, bad_images),
        }
    return PreparedSplit(rows=rows, report=report, det_rows=det_rows)


def _screen_detections(
    path: Path | None, images: dict[int, dict], person_id: int, score_thr: float
) -> tuple[list[Issue], list[tuple[int, dict]]]:
    """Detector boxes -> issues and usable (index, detection) pairs; none without a file."""
    issues, usable = [], []
    if path is not None:
        for index, det in enumerate(load_detections(Path(path))):
            issue = check_detection(det, index, images, person_id, score_thr)
            if issue:
                issues.append(issue)
            else:
                usable.append((index, det))
    return issues, usable


def _screen_annotations(
    records: list, images: dict[int, dict], person_id: int
) -> tuple[list[Issue], list[dict]]:
    """Split annotation records into issues and candidates (kept unless the image is bad)."""
    issues, candidates, seen = [], [], set()
    for index, ann in enumerate(records):
        issue = check_annotation(ann, index, images, person_id)
        if issue is None and ann["id"] in seen:
            issue = Issue(
                "duplicate_id",
                ann["id"],
                f"annotations[{index}]: id {ann['id']} appears more than once",
            )
        if issue is None:
            seen.add(ann["id"])
            candidates.append(ann)
        else:
            issues.append(issue)
    return issues, candidates


def check_images(
    records: list[dict], image_root: Path, workers: int = 8
) -> dict[int, tuple[str, str]]:
    """image id -> (reason, detail) for each image that cannot be used.

    Decoding runs on threads (OpenCV releases the GIL) at 1/8 resolution: enough to prove
    the file decodes and has the recorded size, at a fraction of a full decode's cost.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        found = pool.map(lambda image: _image_problem(image, image_root), records)
        return {
            image["id"]: problem
            for image, problem in zip(records, found, strict=True)
            if problem is not None
        }


def _image_problem(image: dict, image_root: Path) -> tuple[str, str] | None:
    where = f"image {image['id']} ({image['file_name']!r})"
    unsafe = unsafe_file_name(image["file_name"])
    if unsafe:
        return "unsafe_file_name", f"{where}: rejected: {unsafe}"
    path = image_root / image["file_name"]
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return "missing_image", f"{where}: no readable file at {path}"
    reduce = 8 if min(image["width"], image["height"]) >= 64 else 1
    flag = cv2.IMREAD_REDUCED_GRAYSCALE_8 if reduce == 8 else cv2.IMREAD_GRAYSCALE
    decoded = cv2.imdecode(encoded, flag) if encoded.size else None
    if decoded is None:
        return "undecodable_image", f"{where}: {path} is not a decodable image"
    height, width = decoded.shape[0] * reduce, decoded.shape[1] * reduce
    if abs(width - image["width"]) >= 2 * reduce or abs(height - image["height"]) >= 2 * reduce:
        return "image_size_mismatch", (
            f"{where}: {path} is about {width}x{height} pixels, the record says "
            f"{image['width']}x{image['height']}"
        )
    return None


def _instance_row(ann: dict, image: dict, split: str) -> dict:
    box = clip_box(ann["bbox"], image["width"], image["height"])
    area = ann.get("area")
    if not isinstance(area, (int, float)) or not np.isfinite(area) or area <= 0:
        area = box[2] * box[3]  # COCO's area is the mask's; the box is the best stand-in
    keypoints = [float(value) for value in ann["keypoints"]]
    return _manifest_row(
        image, ann["id"], box, keypoints, labelled_count(ann["keypoints"]), area, 1.0, split
    )


def _detection_row(index: int, det: dict, image: dict, split: str) -> dict:
    # The paper's protocol crops the detector's box as given (not clipped).
    box = [float(value) for value in det["bbox"]]
    return _manifest_row(
        image, -(1 + index), box, [0.0] * 51, 0, box[2] * box[3], float(det["score"]), split
    )


def _manifest_row(
    image: dict,
    ann_id: int,
    box: list[float],
    keypoints: list[float],
    num_keypoints: int,
    area: float,
    score: float,
    split: str,
) -> dict:
    """One row of the manifest schema; center and scale come from the box."""
    center, scale = center_scale(box)
    return {
        "image_id": image["id"],
        "ann_id": ann_id,
        "file_name": image["file_name"],
        "width": image["width"],
        "height": image["height"],
        "bbox": box,
        "center": center.tolist(),
        "scale": scale.tolist(),
        "keypoints": keypoints,
        "num_keypoints": num_keypoints,
        "area": float(area),
        "score": score,
        "split": split,
    }


def summarize_issues(issues: list[Issue], bad_images: dict[int, tuple[str, str]]) -> dict:
    """reason -> {count, ids, example}; image-level reasons also list the image ids."""
    by_reason: dict[str, list[Issue]] = defaultdict(list)
    for issue in issues:
        by_reason[issue.reason].append(issue)
    summary = {}
    for reason, found in sorted(by_reason.items()):
        entry = {"count": len(found), "ids": [i.record for i in found], "example": found[0].detail}
        image_ids = sorted(i for i, (why, _) in bad_images.items() if why == reason)
        if image_ids:
            entry["image_ids"] = image_ids
        summary[reason] = entry
    return summary


def _raise_defects(path: Path, issues: list[Issue]) -> None:
    defects = [issue for issue in issues if issue.reason in DEFECT_REASONS]
    if defects:
        more = f" ({len(defects) - 1} more problems)" if len(defects) > 1 else ""
        raise DataError(f"{path}: {defects[0].detail} [{defects[0].reason}; strict mode]{more}")


def run(params: Params, workdir: Path, strict: bool | None = None) -> dict:
    """The prepare stage: writes data/prepared/{train,val}.parquet (+ val_det.parquet with
    `evaluate.boxes`) and report.json under `workdir`; returns the kept and skipped counts.

    Every split is validated before anything is written, and the folder is swapped in whole.
    """
    workdir = Path(workdir)
    strict = params.data.strict if strict is None else strict
    boxes = params.evaluate.boxes
    prepared: dict[str, tuple[PreparedSplit, Path]] = {}
    for split in SPLITS:
        annotations, image_root = split_paths(params.data.source, params.data.root, split)
        if not resolve(workdir, annotations).is_file():
            raise DataError(
                f"{annotations}: annotation file not found (data.source={params.data.source}, "
                f"data.root={params.data.root}); run `sdpose synth` or point data.root at a "
                "COCO 2017 tree"
            )
        if not resolve(workdir, image_root).is_dir():
            raise DataError(
                f"{image_root}: image folder of split {split} not found (data.root="
                f"{params.data.root}); the {split} images must be there"
            )
        use_boxes = split == "val" and boxes is not None
        result = prepare_split(
            resolve(workdir, annotations),
            resolve(workdir, image_root),
            split,
            strict=strict,
            detections=resolve(workdir, boxes) if use_boxes else None,
            det_score_thr=params.evaluate.det_score_thr,
            workers=min(16, 4 * (os.cpu_count() or 1)),
        )
        result.report.update(annotations=str(annotations), image_root=str(image_root))
        if use_boxes:  # paths as the user gave them, so the report does not depend on workdir
            result.report["detections"]["file"] = str(boxes)
        _check_survivors(split, annotations, image_root, result.report)
        prepared[split] = (result, image_root)
    report = {
        "schema_version": SCHEMA_VERSION,
        "source": params.data.source,
        "root": str(params.data.root),
        "strict": strict,
        "splits": {split: result.report for split, (result, _) in prepared.items()},
    }
    summary: dict = {}
    remove_abandoned_staging(workdir / PREPARED_DIR)
    with staged_directory(workdir / PREPARED_DIR) as out_dir:
        for split, (result, image_root) in prepared.items():
            write_manifest(result.rows, out_dir / f"{split}.parquet", image_root=image_root)
            summary[split] = len(result.rows)
            summary[f"{split}_skipped"] = sum(e["count"] for e in result.report["skipped"].values())
        if boxes is not None:
            result, image_root = prepared["val"]
            write_manifest(result.det_rows, out_dir / "val_det.parquet", image_root=image_root)
            summary["val_det"] = len(result.det_rows)
        (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return summary


def _check_survivors(split: str, annotations: Path, image_root: Path, report: dict) -> None:
    """A split that kept nothing is an error; one that lost most records to defects warns.

    Ordinary filters (crowd regions, people without keypoints) do not count as lost: COCO
    itself has many of them. The warning goes to stderr and into the report.
    """
    skipped = report["skipped"]
    reasons = ", ".join(f"{reason} {entry['count']}" for reason, entry in skipped.items())
    if report["kept"] == 0:
        raise DataError(
            f"{annotations}: split {split} keeps no instance of its {report['records']} "
            f"records (skipped: {reasons or 'none'}); images are read from {image_root}"
        )
    lost = sum(entry["count"] for reason, entry in skipped.items() if reason in DEFECT_REASONS)
    if lost > report["kept"]:
        warning = (
            f"split {split} lost {lost} of {lost + report['kept']} instances to bad records "
            f"or images ({reasons}); see data/prepared/report.json (images from {image_root})"
        )
        report["warnings"] = [warning]
        console.warn(f"sdpose prepare: {warning}")
