"""The `prepare` stage: COCO annotations + images -> Parquet manifests of person instances.

Everything downstream trusts these manifests, so every record is checked here once: the
file structure (`coco.load_coco_keypoints`), each annotation (`coco.check_annotation`) and
each image file that a kept instance needs (exists, decodes, has the recorded size). A bad
record is skipped and reported by reason in `report.json`, or raised in strict mode.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

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
    add_image_record,
    check_detection,
    check_sections,
    check_top_level,
    clip_box,
    labelled_count,
    load_detections,
    person_category_id,
)
from sdpose.data.coco_stream import iter_sections
from sdpose.data.image_check import check_images
from sdpose.data.manifest import SCHEMA_VERSION, write_manifest
from sdpose.data.screening import AnnotationScreen, Findings, RowSpool

SPLITS = ("train", "val")
IMAGE_FIELDS = ("id", "file_name", "width", "height")  # all a manifest row needs of an image


@dataclass
class PreparedSplit:
    """The kept manifest rows of one split, its detector-box rows (val only), its report."""

    kept: RowSpool
    report: dict
    det_rows: list[dict] = field(default_factory=list)

    @property
    def rows(self) -> list[dict]:
        """The kept rows as dicts (small splits; the stage streams `kept.batches()`)."""
        return [row for batch in self.kept.batches() for row in batch.to_pylist()]


@dataclass
class _StreamedFile:
    """What one pass over an annotation file leaves: the images, the screened records."""

    images: dict[int, dict]
    records: int
    person_id: int
    screen: AnnotationScreen


def prepare_split(
    annotations: Path,
    image_root: Path,
    split: str,
    *,
    strict: bool = False,
    detections: Path | None = None,
    det_score_thr: float = 0.0,
    workers: int = 8,
    scratch: Path | None = None,
) -> PreparedSplit:
    """Validate one COCO split and turn its usable instances into manifest rows.

    `image_root` is where the image files are read from; `detections` (a COCO
    detection-results json) adds detector-box rows for top-down validation. The file is
    read once, as a stream (`coco_stream`); with a `scratch` folder the rows wait there in
    Parquet instead of in memory, so a COCO-size split costs a few hundred bytes per record
    (module `screening`), not the whole file's object graph.
    """
    annotations, image_root = Path(annotations), Path(image_root)
    spill = (lambda name: Path(scratch) / f"{split}-{name}.parquet") if scratch else None
    candidates = RowSpool(spill("candidates") if spill else None)
    streamed = _read_annotations(annotations, split, candidates)
    images, person_id = streamed.images, streamed.person_id
    findings = Findings()
    keep = streamed.screen.finish(person_id, findings)
    det_findings, dets = _screen_detections(detections, images, person_id, det_score_thr)
    needed = _kept_image_ids(candidates, keep) | {det["image_id"] for _, det in dets}
    bad_images = check_images([images[i] for i in sorted(needed)], image_root, workers)

    kept = RowSpool(spill("kept") if spill else None)
    kept_images = _drop_bad_images(candidates, keep, bad_images, kept, findings,
                                   first_order=len(streamed.screen.reasons))  # fmt: skip
    det_rows = []
    for index, det in dets:
        if det["image_id"] in bad_images:
            reason, detail = bad_images[det["image_id"]]
            det_findings.add(Issue(reason, index, f"detection {index}: {detail}"), index)
        else:
            det_rows.append(_detection_row(index, det, images[det["image_id"]], split))
    if strict:
        findings.raise_first_defect(annotations)
        det_findings.raise_first_defect(Path(detections) if detections else annotations)

    report = {
        "annotations": str(annotations),
        "image_root": str(image_root),
        "images": len(images),
        "records": streamed.records,
        "kept": kept.count,
        "kept_images": kept_images,
        "skipped": findings.summary(bad_images),
    }
    if detections is not None:
        report["detections"] = {
            "file": str(detections),
            "score_thr": det_score_thr,
            "kept": len(det_rows),
            "skipped": det_findings.summary(bad_images),
        }
    return PreparedSplit(kept=kept, report=report, det_rows=det_rows)


def _read_annotations(path: Path, split: str, rows: RowSpool) -> _StreamedFile:
    """One pass over the file: check its structure and images, screen its annotations.

    COCO lists images before annotations; a file that lists them after has its
    annotations held until the images are known (memory then follows that file).
    """
    sections: dict[str, Any] = {}
    images: dict[int, dict] = {}
    seen: dict[int, int] = {}
    screen = AnnotationScreen(images, lambda ann, image: _instance_row(ann, image, split), rows)
    early: list[tuple[int, Any]] = []
    records = 0
    for key, index, value in iter_sections(path):
        if key == "":
            check_top_level(value, path)
        if index is None:
            sections[key] = value
            continue
        sections.setdefault(key, [])  # there, and a list
        if key == "images":
            add_image_record(value, index, path, seen)
            images[value["id"]] = {name: value[name] for name in IMAGE_FIELDS}
        else:
            records += 1
            if "images" in sections:
                screen.add(index, value)
            else:
                early.append((index, value))
    check_sections(sections, path)
    person_id = person_category_id(sections, path)
    for index, value in early:
        screen.add(index, value)
    return _StreamedFile(images, records, person_id, screen)


def _kept_image_ids(rows: RowSpool, keep: np.ndarray) -> set[int]:
    needed: set[int] = set()
    for batch, mask in _with_masks(rows, keep):
        needed.update(np.unique(batch.column("image_id").to_numpy()[mask]).tolist())
    return needed


def _drop_bad_images(
    rows: RowSpool,
    keep: np.ndarray,
    bad_images: dict[int, tuple[str, str]],
    kept: RowSpool,
    findings: Findings,
    first_order: int,
) -> int:
    """Kept candidates on good images go to `kept`, the others to `findings`; returns
    the number of images that keep a row."""
    bad_ids = np.array(sorted(bad_images), dtype=np.int64)
    images: set[int] = set()
    for batch, mask in _with_masks(rows, keep):
        batch = batch.filter(pa.array(mask))
        image_ids = batch.column("image_id").to_numpy()
        bad = np.isin(image_ids, bad_ids)
        for image_id, ann_id in zip(image_ids[bad], batch.column("ann_id").to_numpy()[bad],
                                    strict=True):  # fmt: skip
            reason, detail = bad_images[int(image_id)]
            issue = Issue(reason, int(ann_id), f"annotation {ann_id}: {detail}")
            findings.add(issue, first_order)
        good = batch.filter(pa.array(~bad))
        images.update(np.unique(good.column("image_id").to_numpy()).tolist())
        kept.add_batch(good)
    return len(images)


def _with_masks(rows: RowSpool, keep: np.ndarray) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    offset = 0
    for batch in rows.batches():
        yield batch, keep[offset : offset + batch.num_rows]
        offset += batch.num_rows


def _screen_detections(
    path: Path | None, images: dict[int, dict], person_id: int, score_thr: float
) -> tuple[Findings, list[tuple[int, dict]]]:
    """Detector boxes -> findings and usable (index, detection) pairs; none without a file."""
    findings, usable = Findings(), []
    if path is not None:
        for index, det in enumerate(load_detections(Path(path))):
            issue = check_detection(det, index, images, person_id, score_thr)
            if issue:
                findings.add(issue, index)
            else:
                usable.append((index, det))
    return findings, usable


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


def run(params: Params, workdir: Path, strict: bool | None = None) -> dict:
    """The prepare stage: writes data/prepared/{train,val}.parquet (+ val_det.parquet with
    `evaluate.boxes`) and report.json under `workdir`; returns the kept and skipped counts.

    Every split is validated before anything is written, and the folder is swapped in whole.
    """
    workdir = Path(workdir)
    strict = params.data.strict if strict is None else strict
    remove_abandoned_staging(workdir / PREPARED_DIR)
    with staged_directory(workdir / PREPARED_DIR) as out_dir:
        scratch = out_dir / ".scratch"  # rows wait here between the checks and the manifest
        scratch.mkdir()
        prepared = _prepare_splits(params, workdir, strict, scratch)
        summary = _write_prepared(params, strict, prepared, out_dir)
        shutil.rmtree(scratch)
    return summary


def _prepare_splits(
    params: Params, workdir: Path, strict: bool, scratch: Path
) -> dict[str, tuple[PreparedSplit, Path]]:
    """Every split validated (rows waiting in `scratch`), before anything is written."""
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
            scratch=scratch,
        )
        result.report.update(annotations=str(annotations), image_root=str(image_root))
        if use_boxes:  # paths as the user gave them, so the report does not depend on workdir
            result.report["detections"]["file"] = str(boxes)
        _check_survivors(split, annotations, image_root, result.report)
        prepared[split] = (result, image_root)
    return prepared


def _write_prepared(
    params: Params, strict: bool, prepared: dict[str, tuple[PreparedSplit, Path]], out_dir: Path
) -> dict:
    """The manifests and report.json, in the staging folder."""
    boxes = params.evaluate.boxes
    report = {
        "schema_version": SCHEMA_VERSION,
        "source": params.data.source,
        "root": str(params.data.root),
        "strict": strict,
        "splits": {split: result.report for split, (result, _) in prepared.items()},
    }
    summary: dict = {}
    for split, (result, image_root) in prepared.items():
        # in image order: a crop task then reads one or two row groups (crops.py)
        rows = result.kept.batches_by("image_id")
        write_manifest(rows, out_dir / f"{split}.parquet", image_root)
        summary[split] = result.kept.count
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
