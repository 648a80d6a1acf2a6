"""`sdpose predict`: people's keypoints in real images with the exported ONNX student.

Top-down, as in evaluation: each person box becomes a crop (aspect 3:4, padded 1.25)
warped with the codec's affine to the model's input size (read from the ONNX file), then
`sdpose.evaluation.inference` runs the path validation and evaluation run: the flip test,
DARK, image pixels, rescoring and OKS-NMS. The network is any callable from crops to its
head's outputs (heatmaps or SimCC bins; the codec comes from the model card beside the
file, or from the file's output shape), so the tests (a network replaced by ground-truth
heatmaps) run this very path. An image stays in OpenCV's BGR order from the file to the
overlay; its crops turn into the network's ImageNet-normalised RGB in `normalize_images`,
the one colour conversion, as in the feed.

Shapes: N persons, K keypoints, C cycles, Hi x Wi input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sdpose.config import EvaluateParams, Params
from sdpose.core.codecs import Codec, codec_for_output, codec_from_record
from sdpose.core.errors import InputError
from sdpose.core.images import ImageError, read_image
from sdpose.core.inputs import BoxError, center_scale, checked_box, checked_score, normalize_images
from sdpose.core.paths import CARD_NAME, EXPORT_DIR, ONNX_NAME, int8_path
from sdpose.data.coco import DataError, load_detections
from sdpose.deploy.registry import RegistryError, load_onnx
from sdpose.deploy.runtimes import RuntimeUnavailableError, open_session, resolve_runtime
from sdpose.evaluation.coco_ap import write_results
from sdpose.evaluation.inference import InferenceError, OutputRunner, Predictions, predict_crops
from sdpose.evaluation.visualize import draw_poses

DEFAULT_MODEL = EXPORT_DIR / ONNX_NAME
RESULTS_NAME = "keypoints.json"
BATCH = 16  # persons per network call (twice that with the flip test)


class PredictError(InputError):
    """Input that cannot be predicted on; the message names the file, record and field."""


@dataclass(frozen=True)
class PersonBoxes:
    """The person boxes of one image: bbox (N, 4) xywh in image pixels, score (N,)."""

    bbox: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    def center_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """Crop windows (N, 2) center and (N, 2) scale, as `prepare` computes them."""
        pairs = [center_scale(box) for box in self.bbox]
        center = np.array([c for c, _ in pairs], dtype=np.float64).reshape(-1, 2)
        return center, np.array([s for _, s in pairs], dtype=np.float64).reshape(-1, 2)


# ------------------------------------------------------------------------ inputs
def image_id_of(path: Path, position: int) -> int:
    """COCO names images by id (000000000785.jpg -> 785); other names get their position."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else position


def load_person_boxes(
    path: Path, images: dict[int, tuple[Path, int, int]], score_thr: float = 0.0
) -> dict[int, PersonBoxes]:
    """Detector boxes (COCO results json) of the given images -> image id -> PersonBoxes.

    `images`: image id -> (file, width, height). Records of other images are ignored (a
    detections file usually covers a whole val set); non-person records and scores below
    `score_thr` are dropped; a malformed record or a box with no pixel inside its image is
    an error naming the file, the record and the field.
    """

    try:
        records = load_detections(Path(path))
    except DataError as error:
        raise PredictError(str(error)) from None
    found: dict[int, list[tuple[list[float], float]]] = {image_id: [] for image_id in images}
    for index, record in enumerate(records):
        image_id = record["image_id"]
        if image_id not in images or record.get("category_id", 1) != 1:
            continue
        bbox, score = _checked_box(record, f"{path}: record {index}", images[image_id])
        if score >= score_thr:
            found[image_id].append((bbox, score))
    return {
        image_id: PersonBoxes(
            np.array([b for b, _ in boxes], dtype=np.float64).reshape(-1, 4),
            np.array([s for _, s in boxes], dtype=np.float64),
        )
        for image_id, boxes in found.items()
    }


def _checked_box(record: dict, where: str, image: tuple[Path, int, int]) -> tuple[list, float]:
    """The record's box and score (sdpose.core.inputs' rules), and at least a pixel of the
    box inside its image: a box beside the image would crop nothing but padding."""
    file, width, height = image
    try:
        bbox = checked_box(record["bbox"])
        score = checked_score(record["score"])
    except BoxError as error:
        raise PredictError(f"{where}: {error}") from None
    x, y, w, h = bbox
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise PredictError(
            f"{where}: 'bbox' {record['bbox']!r} lies outside image {file.name} "
            f"({width} x {height})"
        )
    return bbox, score


def whole_image_box(width: int, height: int) -> PersonBoxes:
    """No detections: the whole image is one person box, score 1."""
    return PersonBoxes(np.array([[0.0, 0.0, float(width), float(height)]]), np.ones(1))


# ------------------------------------------------------------------------ top-down core
def crop_people(
    image: np.ndarray, center: np.ndarray, scale: np.ndarray, codec: Codec
) -> np.ndarray:
    """BGR image (H, W, 3) uint8 -> normalised RGB crops (N, 3, Hi, Wi) float32, as the feed's."""
    in_h, in_w = codec.input_size
    warped = [
        cv2.warpAffine(image, matrix, (in_w, in_h), flags=cv2.INTER_LINEAR)
        for matrix in codec.affine_matrix(center, scale).reshape(-1, 2, 3)
    ]
    if not warped:
        return np.zeros((0, 3, in_h, in_w), dtype=np.float32)
    return normalize_images(np.stack(warped))


def predict_people(
    image: np.ndarray,
    boxes: PersonBoxes,
    runner: OutputRunner,
    codec: Codec,
    flip: bool = True,
    method: str = "dark",
) -> np.ndarray:
    """Keypoints (C, N, K, 3) in image pixels of the boxes of one BGR image (C = 1 for a
    student)."""
    center, scale = boxes.center_scale()
    settings = EvaluateParams(flip_test=flip, decode=method)
    parts = []
    for start in range(0, len(boxes), BATCH):
        window = slice(start, start + BATCH)
        crops = crop_people(image, center[window], scale[window], codec)
        try:
            found = predict_crops(runner, crops, center[window], scale[window], codec, settings)
        except InferenceError as error:
            raise PredictError(str(error)) from None
        parts.append(found)
    return np.concatenate(parts, axis=-3)


# ------------------------------------------------------------------------ ONNX model
def onnx_runner(path: Path, runtime: str = "auto", threads: int = 0) -> tuple[OutputRunner, Codec]:
    """The ONNX file on `runtime` as a runner, and the codec of its input and output sizes.

    `runtime` "auto": the one its model card names (the faster measured at export), else
    onnxruntime; a runtime that is not installed is an error naming the extra to install.
    """

    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: ONNX model not found; run `sdpose export` or pass --model")
    chosen = resolve_runtime(runtime, path)
    try:
        session = open_session(path, chosen, threads)
    except RuntimeUnavailableError:
        raise
    except Exception as error:  # each runtime raises its own exception types
        raise PredictError(f"{path}: not a loadable ONNX model on {chosen} ({error})") from error
    in_shape, out_shape = session.input_shape, session.output_shape
    if len(in_shape) != 4 or in_shape[1] != 3 or len(out_shape) not in (3, 4):
        raise PredictError(
            f"{path}: expected input N x 3 x H x W and output N x K x h x w heatmaps or "
            f"N x K x bins SimCC logits, got {list(in_shape)} -> {list(out_shape)}"
        )
    return session.run, file_codec(path, tuple(in_shape[2:]), tuple(out_shape[2:]))


def file_codec(path: Path, input_size: tuple[int, int], output_shape: tuple[int, ...]) -> Codec:
    """The codec an exported file decodes with: its model card's record when the card
    beside it has one that fits the file's shapes, else the one its shapes imply."""
    card_path = path.with_name(CARD_NAME)
    record = None
    if card_path.is_file():
        try:
            record = (json.loads(card_path.read_text()).get("output") or {}).get("codec")
        except (OSError, ValueError, AttributeError):
            record = None
    try:
        if isinstance(record, dict):
            codec = codec_from_record(record)
            if codec.input_size == input_size and codec.output_shape == output_shape:
                return codec
        return codec_for_output(input_size, output_shape)
    except ValueError as error:
        raise PredictError(f"{path}: {error}") from None


def resolve_model(
    model: str | Path | None, params: Params, workdir: Path, int8: bool = False
) -> Path:
    """A local ONNX file from a path, a `models:/...` registry URI, or the default export;
    `int8`: that model's int8 form (the file beside it, or the version's int8 artifact)."""
    if str(model).startswith("models:/"):
        try:
            return load_onnx(params, workdir, str(model), form="int8" if int8 else "fp32")
        except RegistryError as error:  # a version or form that is not there: bad input
            raise PredictError(str(error)) from None
    path = Path(workdir) / DEFAULT_MODEL if model is None else Path(model)
    if int8:
        path = int8_path(path)
        if not path.is_file():
            raise PredictError(f"{path}: no int8 form beside the model; run `sdpose export`")
    return path


# ------------------------------------------------------------------------ the command
def predict(
    images: Sequence[Path],
    boxes: Path | None,
    model: str | Path | None,
    out_dir: Path,
    params: Params,
    workdir: Path | None = None,
    runtime: str | None = None,
    int8: bool = False,
) -> dict[str, Any]:
    """Predict every person in `images`; write COCO results json and one overlay PNG each.

    `boxes`: a COCO detection-results json (image ids from COCO file names), or None for
    the whole image as one box. `runtime`: onnxruntime, openvino or auto (default
    `export.runtime`); `int8`: the model's int8 form. Returns {results, overlays, images,
    instances, model, runtime}.
    """

    workdir = Path.cwd() if workdir is None else Path(workdir)
    check_out_dir(out_dir)  # before the model loads: a bad --out should not cost a minute
    model_path = resolve_model(model, params, workdir, int8)
    chosen = resolve_runtime(runtime or params.export.runtime, model_path)
    runner, codec = onnx_runner(model_path, chosen)
    summary = predict_with_runner(images, boxes, runner, codec, out_dir, params)
    return {**summary, "model": str(model_path), "runtime": chosen}


def predict_with_runner(
    images: Sequence[Path],
    boxes: Path | None,
    runner: OutputRunner,
    codec: Codec,
    out_dir: Path,
    params: Params,
) -> dict[str, Any]:
    """`predict` with any network: the whole path from image files to results and PNGs."""

    if not images:
        raise PredictError("no images given")
    check_out_dir(out_dir)
    loaded = list(_load_images(images))
    sizes = {image_id: (path, bgr.shape[1], bgr.shape[0]) for path, image_id, bgr in loaded}
    detections = load_person_boxes(boxes, sizes, params.evaluate.det_score_thr) if boxes else {}
    settings = params.evaluate
    found, without_boxes = Predictions(), []
    for path, image_id, bgr in loaded:
        people = detections.get(image_id) if boxes else whole_image_box(bgr.shape[1], bgr.shape[0])
        if not people:
            without_boxes.append(str(path))
            continue
        keypoints = predict_people(bgr, people, runner, codec, settings.flip_test, settings.decode)
        _, scale = people.center_scale()
        found.add_people([image_id] * len(people), keypoints[0], people.score, scale)
    results = found.results(settings)
    out_dir = Path(out_dir)
    results_path = write_results(results, out_dir / RESULTS_NAME)
    overlays = [
        _write_overlay(bgr, image_id, path, results, out_dir, settings.vis_thr)
        for path, image_id, bgr in loaded
    ]
    return {
        "results": str(results_path),
        "overlays": [str(path) for path in overlays],
        "images": len(loaded),
        "instances": len(results),
        "image_ids": {str(path): image_id for path, image_id, _ in loaded},
        "images_without_boxes": without_boxes,
    }


def check_out_dir(out_dir: Path) -> None:
    """`--out` must be a folder or creatable as one: an existing file in its way is an error
    now, not a FileExistsError after every image was predicted."""
    for path in (Path(out_dir), *Path(out_dir).parents):
        if path.exists():
            if not path.is_dir():
                raise PredictError(
                    f"{path}: is a file; --out {out_dir} must be a folder for the results "
                    "and overlays"
                )
            return


def _load_images(images: Sequence[Path]) -> Iterator[tuple[Path, int, np.ndarray]]:
    """(path, image id, BGR image) of each file; images stay BGR up to `normalize_images`."""
    seen: dict[int, Path] = {}
    for position, path in enumerate(images):
        path = Path(path)
        image_id = image_id_of(path, position)
        if image_id in seen:
            raise PredictError(f"{path}: same image id {image_id} as {seen[image_id]}")
        seen[image_id] = path
        try:
            image = read_image(path)
        except ImageError as error:
            raise PredictError(str(error)) from None
        yield path, image_id, image


def _write_overlay(
    bgr: np.ndarray, image_id: int, path: Path, results: list[dict], out_dir: Path, vis_thr: float
) -> Path:
    """The image with every person whose instance score passes `vis_thr` drawn on it."""

    people = [r for r in results if r["image_id"] == image_id and r["score"] > vis_thr]
    keypoints = np.array([r["keypoints"] for r in people], dtype=np.float64).reshape(-1, 17, 3)
    canvas = draw_poses(bgr, keypoints, score_thr=vis_thr)
    target = out_dir / f"{path.stem}_pose.png"
    if not cv2.imwrite(str(target), canvas):
        raise OSError(f"{target}: could not write the overlay image")
    return target
