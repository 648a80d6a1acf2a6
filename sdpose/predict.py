"""`sdpose predict`: people's keypoints in real images with the exported ONNX student.

Top-down, as in evaluation: each person box becomes a crop (aspect 192:256, padded 1.25)
warped with the codec's affine, the network's heatmaps (averaged with those of the mirrored
crop: the flip test) are decoded with DARK and mapped back to image pixels with the same
box geometry, then rescored and OKS-NMSed as MMPose does. The network is any callable
from crops to heatmaps, so evaluation (PyTorch, every cycle) and the tests (a network
replaced by ground-truth heatmaps) run this very path.

Shapes: N persons, K keypoints, C cycles, Hi x Wi input, H x W heatmap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sdpose.codec import HeatmapCodec
from sdpose.config import Params
from sdpose.data.prepare import center_scale

# (N, 3, Hi, Wi) float32 normalised crops -> (..., N, K, H, W) heatmaps (leading axes: cycles).
HeatmapRunner = Callable[[np.ndarray], np.ndarray]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_MODEL = Path("models/export/sdpose-student.onnx")
RESULTS_NAME = "keypoints.json"
BATCH = 16  # persons per network call (twice that with the flip test)


class PredictError(ValueError):
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
def read_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3); PredictError when it cannot be decoded."""
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: image file not found")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PredictError(f"{path}: not a readable image (OpenCV cannot decode it)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


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
    from sdpose.data.coco import DataError, load_detections

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
    file, width, height = image
    bbox, score = record["bbox"], record["score"]
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise PredictError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox!r}")
    try:
        values = np.asarray([*bbox, score], dtype=np.float64)
    except (TypeError, ValueError):
        raise PredictError(f"{where}: 'bbox' and 'score' must be numbers: {bbox!r}") from None
    if not np.isfinite(values).all():
        raise PredictError(f"{where}: 'bbox' or 'score' holds NaN or infinity: {bbox!r}")
    x, y, w, h = values[:4]
    if w <= 0 or h <= 0:
        raise PredictError(f"{where}: 'bbox' width and height must be positive: {bbox!r}")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise PredictError(
            f"{where}: 'bbox' {bbox!r} lies outside image {file.name} ({width} x {height})"
        )
    return values[:4].tolist(), float(values[4])


def whole_image_box(width: int, height: int) -> PersonBoxes:
    """No detections: the whole image is one person box, score 1."""
    return PersonBoxes(np.array([[0.0, 0.0, float(width), float(height)]]), np.ones(1))


# ------------------------------------------------------------------------ top-down core
def crop_people(
    image: np.ndarray, center: np.ndarray, scale: np.ndarray, codec: HeatmapCodec
) -> np.ndarray:
    """RGB image (H, W, 3) uint8 -> normalised crops (N, 3, Hi, Wi) float32."""
    in_h, in_w = codec.input_size
    crops = np.empty((len(center), 3, in_h, in_w), dtype=np.float32)
    for index, matrix in enumerate(codec.affine_matrix(center, scale).reshape(-1, 2, 3)):
        warped = cv2.warpAffine(image, matrix, (in_w, in_h), flags=cv2.INTER_LINEAR)
        normalised = (warped.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        crops[index] = normalised.transpose(2, 0, 1)
    return crops


def flip_test_heatmaps(
    runner: HeatmapRunner, crops: np.ndarray, codec: HeatmapCodec, flip: bool = True
) -> np.ndarray:
    """Heatmaps (..., N, K, H, W) of the crops, averaged with those of the mirrored crops.

    Both halves go through the network in one call; the mirrored half's maps are flipped
    back (joints swapped, mmpose's one-pixel shift) before averaging.
    """
    count = len(crops)
    batch = np.concatenate([crops, crops[..., ::-1]]) if flip else crops
    heatmaps = np.asarray(runner(np.ascontiguousarray(batch)), dtype=np.float32)
    if heatmaps.shape[-4] != len(batch):
        raise PredictError(f"the network returned {heatmaps.shape} for {len(batch)} crops")
    if not flip:
        return heatmaps
    plain, mirrored = heatmaps[..., :count, :, :, :], heatmaps[..., count:, :, :, :]
    maps_shape = mirrored.shape[-3:]
    restored = codec.flip_back(mirrored.reshape(-1, *maps_shape)).reshape(mirrored.shape)
    return (plain + restored) * 0.5


def decode_to_image(
    heatmaps: np.ndarray, center: np.ndarray, scale: np.ndarray, codec: HeatmapCodec, method: str
) -> np.ndarray:
    """Heatmaps (..., N, K, H, W) -> keypoints (..., N, K, 3): image x, y and score."""
    lead, maps_shape = heatmaps.shape[:-3], heatmaps.shape[-3:]
    points, scores = codec.decode(np.ascontiguousarray(heatmaps.reshape(-1, *maps_shape)), method)
    points = points.reshape(*lead, *points.shape[-2:]).astype(np.float64)
    scores = scores.reshape(*lead, scores.shape[-1]).astype(np.float64)
    in_image = codec.to_image(points, center, scale)
    return np.concatenate([in_image, scores[..., None]], axis=-1)


def predict_people(
    image: np.ndarray,
    boxes: PersonBoxes,
    runner: HeatmapRunner,
    codec: HeatmapCodec,
    flip: bool = True,
    method: str = "dark",
) -> np.ndarray:
    """Keypoints (..., N, K, 3) in image pixels of the boxes of one image."""
    center, scale = boxes.center_scale()
    parts = []
    for start in range(0, len(boxes), BATCH):
        window = slice(start, start + BATCH)
        crops = crop_people(image, center[window], scale[window], codec)
        heatmaps = flip_test_heatmaps(runner, crops, codec, flip)
        parts.append(decode_to_image(heatmaps, center[window], scale[window], codec, method))
    return np.concatenate(parts, axis=-3)


# ------------------------------------------------------------------------ ONNX model
def onnx_runner(path: Path, threads: int = 0) -> tuple[HeatmapRunner, HeatmapCodec]:
    """An onnxruntime session as a runner, and the codec of its input and output sizes."""
    from sdpose.onnx_session import cpu_session

    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: ONNX model not found; run `sdpose export` or pass --model")
    try:
        session = cpu_session(path, threads)
    except Exception as error:  # onnxruntime raises its own exception types
        raise PredictError(f"{path}: not a loadable ONNX model ({error})") from error
    (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
    in_shape, out_shape = model_input.shape, model_output.shape
    if len(in_shape) != 4 or in_shape[1] != 3 or len(out_shape) != 4:
        raise PredictError(
            f"{path}: expected input N x 3 x H x W and output N x K x h x w heatmaps, got "
            f"{model_input.name} {in_shape} -> {model_output.name} {out_shape}"
        )
    codec = HeatmapCodec(input_size=tuple(in_shape[2:]), heatmap_size=tuple(out_shape[2:]))

    def run(crops: np.ndarray) -> np.ndarray:
        return session.run([model_output.name], {model_input.name: crops})[0]

    return run, codec


def resolve_model(model: str | Path | None, params: Params, workdir: Path) -> Path:
    """A local ONNX file from a path, a `models:/...` registry URI, or the default export."""
    if model is None:
        return Path(workdir) / DEFAULT_MODEL
    if str(model).startswith("models:/"):
        from sdpose.registry import load_onnx

        return load_onnx(params, workdir, str(model))
    return Path(model)


# ------------------------------------------------------------------------ the command
def predict(
    images: Sequence[Path],
    boxes: Path | None,
    model: str | Path | None,
    out_dir: Path,
    params: Params,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Predict every person in `images`; write COCO results json and one overlay PNG each.

    `boxes`: a COCO detection-results json (image ids from COCO file names), or None for
    the whole image as one box. Returns {results, overlays, images, instances, model}.
    """
    workdir = Path.cwd() if workdir is None else Path(workdir)
    model_path = resolve_model(model, params, workdir)
    runner, codec = onnx_runner(model_path)
    summary = predict_with_runner(images, boxes, runner, codec, out_dir, params)
    return {**summary, "model": str(model_path)}


def predict_with_runner(
    images: Sequence[Path],
    boxes: Path | None,
    runner: HeatmapRunner,
    codec: HeatmapCodec,
    out_dir: Path,
    params: Params,
) -> dict[str, Any]:
    """`predict` with any network: the whole path from image files to results and PNGs."""
    from sdpose.evaluation import topdown_results, write_results

    if not images:
        raise PredictError("no images given")
    loaded = list(_load_images(images))
    sizes = {image_id: (path, rgb.shape[1], rgb.shape[0]) for path, image_id, rgb in loaded}
    detections = load_person_boxes(boxes, sizes, params.evaluate.det_score_thr) if boxes else {}
    settings = params.evaluate
    image_ids, keypoints, box_scores, areas, without_boxes = [], [], [], [], []
    for path, image_id, rgb in loaded:
        people = detections.get(image_id) if boxes else whole_image_box(rgb.shape[1], rgb.shape[0])
        if not people:
            without_boxes.append(str(path))
            continue
        found = predict_people(rgb, people, runner, codec, settings.flip_test, settings.decode)
        _, scale = people.center_scale()
        image_ids += [image_id] * len(people)
        keypoints.append(found)
        box_scores.append(people.score)
        areas.append(scale.prod(axis=1))
    results = []
    if keypoints:
        results = topdown_results(
            image_ids,
            np.concatenate(keypoints),
            np.concatenate(box_scores),
            np.concatenate(areas),
            settings.vis_thr,
            settings.oks_thr,
        )
    out_dir = Path(out_dir)
    results_path = write_results(results, out_dir / RESULTS_NAME)
    overlays = [
        _write_overlay(rgb, image_id, path, results, out_dir, settings.vis_thr)
        for path, image_id, rgb in loaded
    ]
    return {
        "results": str(results_path),
        "overlays": [str(path) for path in overlays],
        "images": len(loaded),
        "instances": len(results),
        "image_ids": {str(path): image_id for path, image_id, _ in loaded},
        "images_without_boxes": without_boxes,
    }


def _load_images(images: Sequence[Path]) -> Iterator[tuple[Path, int, np.ndarray]]:
    seen: dict[int, Path] = {}
    for position, path in enumerate(images):
        path = Path(path)
        image_id = image_id_of(path, position)
        if image_id in seen:
            raise PredictError(f"{path}: same image id {image_id} as {seen[image_id]}")
        seen[image_id] = path
        yield path, image_id, read_image(path)


def _write_overlay(
    rgb: np.ndarray, image_id: int, path: Path, results: list[dict], out_dir: Path, vis_thr: float
) -> Path:
    """The image with every person whose instance score passes `vis_thr` drawn on it."""
    from sdpose.visualize import draw_poses

    people = [r for r in results if r["image_id"] == image_id and r["score"] > vis_thr]
    keypoints = np.array([r["keypoints"] for r in people], dtype=np.float64).reshape(-1, 17, 3)
    canvas = draw_poses(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), keypoints, score_thr=vis_thr)
    target = out_dir / f"{path.stem}_pose.png"
    if not cv2.imwrite(str(target), canvas):
        raise OSError(f"{target}: could not write the overlay image")
    return target
