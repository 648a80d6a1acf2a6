"""`sdpose predict` on the real COCO sample: geometry, decoding, scoring and file contracts.

The ground-truth test double replaces the network only. It recognises each crop it is
given by re-cutting every ground-truth person itself (its own affine from three box
corners, not the codec's) and answers with the heatmaps a perfect network would give:
the codec's Gaussians at the true keypoints, mirrored for a mirrored crop. Everything else
(box -> crop window, warp, flip test, DARK decoding, mapping back, rescoring, OKS-NMS and
the results file) is the real path, so AP ~ 1 proves the coordinate mapping end to end.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from shared import SHARED

from sdpose.config import Params
from sdpose.core.codec import HeatmapCodec
from sdpose.core.keypoints import FLIP_INDEX
from sdpose.deploy.predict import (
    PredictError,
    load_person_boxes,
    predict,
    predict_with_runner,
)

pytestmark = pytest.mark.unit

INPUT_H, INPUT_W = 256, 192
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def sample() -> Path:
    root = SHARED / "fixtures"
    return root / "coco-val2017-sample"


@pytest.fixture(scope="module")
def annotations(sample: Path) -> dict:
    return json.loads((sample / "person_keypoints_val2017_sample.json").read_text())


@pytest.fixture(scope="module")
def image_files(sample: Path, annotations: dict) -> list[Path]:
    return [sample / "images" / image["file_name"] for image in annotations["images"]]


def crop_window(bbox: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Center and (w, h) of the crop window of a box (the manifest rule, docs/ARCHITECTURE.md)."""
    x, y, w, h = bbox
    center = np.array([x + w / 2, y + h / 2])
    if w / h > INPUT_W / INPUT_H:
        h = w * INPUT_H / INPUT_W
    else:
        w = h * INPUT_W / INPUT_H
    return center, 1.25 * np.array([w, h])


class GroundTruthNetwork:
    """Crops -> the heatmaps of the ground truth; a stand-in for a perfect network."""

    def __init__(self, annotations: dict, image_files: list[Path], codec: HeatmapCodec) -> None:
        self.codec = codec
        files = {path.name: path for path in image_files}
        images = {image["id"]: image for image in annotations["images"]}
        self.crops, self.keypoints, self.visible = [], [], []
        for ann in annotations["annotations"]:
            if ann["num_keypoints"] == 0:
                continue
            rgb = cv2.cvtColor(
                cv2.imread(str(files[images[ann["image_id"]]["file_name"]])), cv2.COLOR_BGR2RGB
            )
            center, size = crop_window(ann["bbox"])
            half = size / 2  # the window's corners: top-left, top-right, bottom-left
            corners = np.float32([center - half, center + half * [1, -1], center + half * [-1, 1]])
            targets = np.float32([[0, 0], [INPUT_W, 0], [0, INPUT_H]])
            matrix = cv2.getAffineTransform(corners, targets)
            crop = cv2.warpAffine(rgb, matrix, (INPUT_W, INPUT_H), flags=cv2.INTER_LINEAR)
            self.crops.append(((crop / 255.0 - MEAN) / STD).transpose(2, 0, 1))
            points = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
            self.keypoints.append(points[:, :2] @ matrix[:, :2].T + matrix[:, 2])
            self.visible.append(points[:, 2] > 0)
        self.crops = np.stack(self.crops).astype(np.float32)
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        maps = []
        for crop in batch:
            person, mirrored = self._recognise(crop)
            keypoints, visible = self.keypoints[person].copy(), self.visible[person].copy()
            if mirrored:  # a perfect network sees joint k of the mirror at x -> Wi - 1 - x
                keypoints[:, 0] = INPUT_W - 1 - keypoints[:, 0]
                keypoints, visible = keypoints[FLIP_INDEX], visible[FLIP_INDEX]
            maps.append(self.codec.encode(keypoints, visible)[0])
        return np.stack(maps)

    def _recognise(self, crop: np.ndarray) -> tuple[int, bool]:
        plain = np.abs(self.crops - crop).mean(axis=(1, 2, 3))
        mirror = np.abs(self.crops[..., ::-1] - crop).mean(axis=(1, 2, 3))
        best = int(min(plain.argmin(), mirror.argmin(), key=lambda i: min(plain[i], mirror[i])))
        distance = min(plain[best], mirror[best])
        # A crop that matches no person closely means the pipeline cut the wrong window.
        assert distance < 0.02, f"crop matches no ground-truth person (mean |diff| {distance})"
        return best, bool(mirror[best] < plain[best])


def gt_boxes_file(annotations: dict, path: Path) -> Path:
    """The ground-truth boxes of the labelled people as a detections file (score 1)."""
    records = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
        for a in annotations["annotations"]
        if a["num_keypoints"] > 0
    ]
    path.write_text(json.dumps(records))
    return path


def pycocotools_ap(annotation_file: Path, results_file: Path) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        evaluator = COCOeval(gt, gt.loadRes(str(results_file)), iouType="keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def test_ground_truth_heatmaps_score_ap_one(sample, annotations, image_files, tmp_path):
    codec = HeatmapCodec()
    network = GroundTruthNetwork(annotations, image_files, codec)
    boxes = gt_boxes_file(annotations, tmp_path / "gt_boxes.json")
    summary = predict_with_runner(image_files, boxes, network, codec, tmp_path / "out", Params())
    results = json.loads(Path(summary["results"]).read_text())
    labelled = sum(a["num_keypoints"] > 0 for a in annotations["annotations"])
    assert network.calls > 0
    assert len(results) == labelled  # distinct people: OKS-NMS keeps them all
    ap = pycocotools_ap(sample / "person_keypoints_val2017_sample.json", Path(summary["results"]))
    assert ap >= 0.99


def test_without_flip_test_joints_come_back_to_a_hundredth_of_a_heatmap_pixel(
    annotations, image_files, tmp_path
):
    codec = HeatmapCodec()
    network = GroundTruthNetwork(annotations, image_files, codec)
    boxes = gt_boxes_file(annotations, tmp_path / "gt_boxes.json")
    params = Params.model_validate({"evaluate": {"flip_test": False}})
    summary = predict_with_runner(image_files, boxes, network, codec, tmp_path, params)
    results = json.loads(Path(summary["results"]).read_text())
    labelled = [a for a in annotations["annotations"] if a["num_keypoints"] > 0]
    assert len(results) == len(labelled)
    for ann in labelled:
        truth = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
        seen = truth[:, 2] > 0
        candidates = [r for r in results if r["image_id"] == ann["image_id"]]
        errors = [
            np.abs(np.reshape(r["keypoints"], (17, 3))[:, :2] - truth[:, :2]) for r in candidates
        ]
        error = min(errors, key=lambda e: e[seen].max())  # image pixels, (17, 2)
        center, size = crop_window(ann["bbox"])
        heatmap_pixel = size / np.array([48, 64])  # image pixels per heatmap pixel (x, y)
        on_heatmap = (truth[:, :2] - (center - size / 2)) / heatmap_pixel
        # DARK is exact where its 11 x 11 blur (zero padded) does not reach past the map's
        # edge; it refines nothing within two pixels of the edge (mmpose), leaving the
        # argmax, within half a pixel; in between it is approximate.
        radius = codec.blur_kernel // 2
        inner = (on_heatmap >= radius).all(1) & (on_heatmap <= np.array([47, 63]) - radius).all(1)
        inner &= seen
        assert (error[inner] / heatmap_pixel < 0.01).all()
        assert (error[seen] / heatmap_pixel <= 0.5 + 1e-3).all()


@pytest.fixture(scope="module")
def nano_onnx(tmp_path_factory) -> Path:
    """A real exported student (random weights): predict runs the actual ONNX file."""
    from sdpose.export.onnx import export_onnx
    from sdpose.models import build_model

    path = tmp_path_factory.mktemp("model") / "student.onnx"
    export_onnx(build_model("sdpose-nano"), path, parity_batches=(1,))
    return path


def test_detector_boxes_give_results_coco_tools_accept(sample, image_files, nano_onnx, tmp_path):
    out = tmp_path / "out"
    summary = predict(
        image_files, sample / "person_detection_results_sample.json", nano_onnx, out, Params()
    )
    annotation_file = sample / "person_keypoints_val2017_sample.json"
    results = json.loads(Path(summary["results"]).read_text())
    assert results and {r["image_id"] for r in results} <= {785, 40083, 196141, 197388}
    assert all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in results)
    assert 0.0 <= pycocotools_ap(annotation_file, Path(summary["results"])) <= 1.0
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "sdpose.cli",
            "coco-eval",
            str(annotation_file),
            summary["results"],
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert set(json.loads(cli.stdout)) >= {"AP", "AP50", "AR"}
    for image, overlay in zip(image_files, summary["overlays"], strict=True):
        drawn, original = cv2.imread(overlay), cv2.imread(str(image))
        assert Path(overlay).suffix == ".png" and drawn.shape == original.shape


def test_whole_image_is_one_box_without_detections(image_files, nano_onnx, tmp_path):
    summary = predict(image_files[:2], None, nano_onnx, tmp_path, Params())
    results = json.loads(Path(summary["results"]).read_text())
    assert sorted(r["image_id"] for r in results) == sorted([785, 40083])


def test_unreadable_image_is_a_clear_error(nano_onnx, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(PredictError, match=r"broken\.jpg.*not a readable image"):
        predict([broken], None, nano_onnx, tmp_path / "out", Params())
    with pytest.raises(PredictError, match=r"missing\.jpg.*not found"):
        predict([tmp_path / "missing.jpg"], None, nano_onnx, tmp_path / "out", Params())


def test_box_outside_the_image_is_a_clear_error(image_files, nano_onnx, tmp_path):
    detections = [
        {"image_id": 785, "category_id": 1, "bbox": [10, 10, 50, 80], "score": 0.9},
        {"image_id": 785, "category_id": 1, "bbox": [700, 10, 50, 80], "score": 0.9},
    ]
    boxes = tmp_path / "dets.json"
    boxes.write_text(json.dumps(detections))
    with pytest.raises(PredictError, match=r"dets\.json: record 1: 'bbox'.*outside image"):
        predict(image_files[:1], boxes, nano_onnx, tmp_path / "out", Params())
    boxes.write_text(json.dumps([{**detections[0], "bbox": [10, 10, -5, 80]}]))
    with pytest.raises(PredictError, match=r"record 0: 'bbox' width and height must be positive"):
        predict(image_files[:1], boxes, nano_onnx, tmp_path / "out", Params())


def test_missing_model_is_a_clear_error(image_files, tmp_path):
    with pytest.raises(PredictError, match=r"nothing\.onnx: ONNX model not found"):
        predict(image_files[:1], None, tmp_path / "nothing.onnx", tmp_path, Params())


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"score": float("nan")}, r"record 0: 'score' holds NaN or infinity"),
        ({"bbox": [10, 10, float("inf"), 80]}, r"record 0: 'bbox' holds NaN or infinity"),
        ({"bbox": [10, 10, 50]}, r"record 0: 'bbox' must be 4 numbers x, y, w, h"),
    ],
)
def test_a_bad_detection_names_its_record_and_field(tmp_path, change, says):
    record = {"image_id": 785, "category_id": 1, "bbox": [10, 10, 50, 80], "score": 0.9}
    boxes = tmp_path / "dets.json"
    images = {785: (Path("000000000785.jpg"), 640, 425)}
    boxes.write_text(json.dumps([record]))
    kept = load_person_boxes(boxes, images)[785]
    assert kept.bbox.tolist() == [[10.0, 10.0, 50.0, 80.0]] and kept.score.tolist() == [0.9]
    boxes.write_text(json.dumps([{**record, **change}]))
    with pytest.raises(PredictError, match=rf"dets\.json: {says}"):
        load_person_boxes(boxes, images)
