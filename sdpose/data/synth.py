"""The `synth` stage: a COCO-format person-keypoint dataset drawn procedurally.

Writes `data/raw/synth/images/*.jpg` and `annotations/person_keypoints_{train,val}.json`
with COCO's schema and person category. Each image is seeded from (seed, split, index)
alone, so the output is the same for any number of worker processes; generation runs on a
process pool over chunks of image indices, and the annotation files are streamed to disk
as chunks come back (`coco_writer`), so memory does not grow with the count. The whole
tree is built under a temporary name and swapped in at the end
(`sdpose.core.paths.staged_directory`), so an interrupted run never leaves a
complete-looking dataset.

Labelling choices (documented because COCO's guide leaves room): v=2 visible, v=1 inside
the image but hidden by another person, an object or the person's own trunk, v=0 at (0, 0)
outside [0, W-1] x [0, H-1]; nose and eyes are labelled only when they face the camera and
ears unless turned away, so a back view has no face labels (as COCO annotators do); people
showing fewer than 24 x 24 pixels get no keypoints (COCO skipped small people too), so
training and AP ignore them. `area` is the visible silhouette's pixel count and
`segmentation` its RLE; `bbox` is the silhouette's box grown to hold every labelled
keypoint. Coordinates follow OpenCV's pixel centres (pixel i covers [i - 0.5, i + 0.5)).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sdpose.config import Params
from sdpose.core.keypoints import PERSON_CATEGORY
from sdpose.core.paths import SYNTH_DIR, staged_directory
from sdpose.data.coco_writer import CocoJsonWriter
from sdpose.data.synth_scene import render_scene

SPLIT_CODES = {"train": 0, "val": 1}
# Image ids of val start here so both splits can share one images/ folder, as COCO's do.
VAL_ID_BASE = 1_000_000_000
ANNOTATIONS_PER_IMAGE = 10  # ann id = image id * 10 + person index (max_people <= 8)
CHUNK = 16  # images per pool task: enough to amortise the task overhead


def image_id(split: str, index: int) -> int:
    return (VAL_ID_BASE if split == "val" else 0) + index + 1


@dataclass(frozen=True)
class SceneOptions:
    """What goes into a scene besides its people (`synth.occluders`, `synth.clutter`)."""

    max_people: int = 4
    occluders: bool = True
    clutter: bool = True


def generate_image(
    seed: int, split: str, index: int, size: tuple[int, int], options: SceneOptions,
    images_dir: Path,
) -> tuple[dict, list[dict]]:  # fmt: skip
    """Draw, encode and write one image; return its COCO image record and annotations."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    width, height = size
    scene = render_scene(
        rng, width, height, options.max_people, occluders=options.occluders,
        clutter=options.clutter,
    )  # fmt: skip
    ident = image_id(split, index)
    file_name = f"{ident:012d}.jpg"
    quality = int(rng.integers(82, 96))
    ok, encoded = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for synthetic image {file_name}")
    encoded.tofile(images_dir / file_name)
    record = {"license": 0, "file_name": file_name, "height": height, "width": width, "id": ident}
    annotations = [
        {**annotation, "image_id": ident, "id": ident * ANNOTATIONS_PER_IMAGE + person}
        for person, annotation in enumerate(scene.annotations)
    ]
    return record, annotations


def _generate_chunk(args: tuple) -> list[tuple[dict, list[dict]]]:
    seed, split, indices, size, scene, images_dir = args
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe
    return [generate_image(seed, split, i, size, scene, images_dir) for i in indices]


def generated_images(
    counts: dict[str, int],
    *,
    seed: int,
    size: tuple[int, int],
    max_people: int,
    images_dir: Path,
    workers: int = 1,
    occluders: bool = True,
    clutter: bool = True,
) -> Iterator[tuple[str, dict, list[dict]]]:
    """(split, image record, annotations) of every image, in split and index order.

    The images are drawn and written by a pool of `workers` processes (one pool for every
    split, so workers start once); records come back chunk by chunk as the pool finishes
    them, so a caller that writes them out holds a few chunks, not the dataset.
    """
    images_dir.mkdir(parents=True, exist_ok=True)
    scene = SceneOptions(max_people, occluders, clutter)
    chunks = [
        (seed, split, range(start, min(start + CHUNK, count)), size, scene, images_dir)
        for split, count in counts.items()
        for start in range(0, count, CHUNK)
    ]
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield from ((chunk[1], record, anns) for record, anns in _generate_chunk(chunk))
        return
    # spawn: safe inside threaded callers (Prefect, Ray drivers), unlike fork
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for chunk, items in zip(chunks, pool.map(_generate_chunk, chunks), strict=True):
            yield from ((chunk[1], record, anns) for record, anns in items)


def generate_splits(counts: dict[str, int], **settings) -> dict[str, dict]:
    """All images of the given splits -> split -> COCO annotation dict, held in memory
    (small sets; the stage streams them to disk with `write_splits`). Settings as for
    `generated_images`."""
    records: dict[str, tuple[list[dict], list[dict]]] = {split: ([], []) for split in counts}
    for split, record, people in generated_images(counts, **settings):
        records[split][0].append(record)
        records[split][1].extend(people)
    return {split: coco_document(split, *found) for split, found in records.items()}


def generate_split(split: str, count: int, **settings) -> dict:
    """One split's COCO annotation dict; settings as for `generated_images`."""
    return generate_splits({split: count}, **settings)[split]


def write_splits(
    counts: dict[str, int], annotations_dir: Path, **settings
) -> dict[str, tuple[int, int]]:
    """Draw the splits and stream each into `person_keypoints_<split>.json` there.

    Returns split -> (images, annotations). Memory stays that of a few chunks of records
    at any size (COCO train2017's count included); settings as for `generated_images`.
    """
    annotations_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        writers = {
            split: stack.enter_context(
                CocoJsonWriter(
                    annotations_dir / f"person_keypoints_{split}.json",
                    **_document_parts(split),
                )
            )
            for split in counts
        }
        for split, record, people in generated_images(counts, **settings):
            writers[split].add(record, people)
    return {split: (writer.images, writer.annotations) for split, writer in writers.items()}


def coco_document(split: str, images: list[dict], annotations: list[dict]) -> dict:
    """The top-level structure of COCO's person_keypoints_*.json."""
    parts = _document_parts(split)
    return {
        "info": parts["info"],
        "licenses": parts["licenses"],
        "images": images,
        "annotations": annotations,
        "categories": parts["categories"],
    }


def _document_parts(split: str) -> dict[str, Any]:
    """Everything of the document but its images and annotations."""
    return {
        "info": {
            "description": f"sdpose synthetic people ({split})",
            "version": "1.0",
            "year": 2024,
            "contributor": "sdpose",
        },
        "licenses": [{"id": 0, "name": "generated by sdpose", "url": ""}],
        "categories": [PERSON_CATEGORY],
    }


def default_workers(requested: int) -> int:
    """`synth.workers`: 0 means one process per available core."""
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run(params: Params, workdir: Path) -> dict:
    """The synth stage: build data/raw/synth under `workdir`; returns counts."""
    settings = params.synth
    workers = default_workers(settings.workers)
    summary: dict = {"workers": workers}
    with staged_directory(Path(workdir) / SYNTH_DIR) as staging:
        written = write_splits(
            {"train": settings.train_images, "val": settings.val_images},
            staging / "annotations",
            seed=settings.seed,
            size=tuple(settings.image_size),
            max_people=settings.max_people,
            images_dir=staging / "images",
            workers=workers,
            occluders=settings.occluders,
            clutter=settings.clutter,
        )
        for split, (images, people) in written.items():
            summary[f"{split}_images"] = images
            summary[f"{split}_people"] = people
    return summary
