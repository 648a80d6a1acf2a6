"""COCO keypoint AP against pycocotools itself, and MMPose's rescoring and OKS-NMS."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from shared import SHARED

from sdpose.core.keypoints import OKS_SIGMAS
from sdpose.data.coco import DataError
from sdpose.evaluation.coco_ap import (
    SUMMARY_KEYS,
    coco_keypoint_ap,
    instance_scores,
    keypoint_results,
    oks_iou,
    oks_nms,
    topdown_results,
    write_results,
)

pytestmark = pytest.mark.unit

ANNOTATIONS = SHARED / "fixtures" / "coco-val2017-sample" / "person_keypoints_val2017_sample.json"


@pytest.fixture(scope="module")
def truth() -> list[dict]:
    """The labelled instances of the real sample, as results with score 1."""
    data = json.loads(ANNOTATIONS.read_text())
    labelled = [a for a in data["annotations"] if a["num_keypoints"] > 0]
    keypoints = np.array([a["keypoints"] for a in labelled], dtype=float).reshape(-1, 17, 3)
    return keypoint_results([a["image_id"] for a in labelled], keypoints, [1.0] * len(labelled))


def _pycocotools(results_path: Path) -> list[float]:
    """The reference: pycocotools run by hand, as its own demo does."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ANNOTATIONS))
        evaluator = COCOeval(gt, gt.loadRes(str(results_path)), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats)


def test_ground_truth_scores_ap_one(truth):
    metrics = coco_keypoint_ap(ANNOTATIONS, truth)
    assert list(metrics) == list(SUMMARY_KEYS)
    assert metrics["AP"] == metrics["AP50"] == metrics["AR"] == 1.0


@pytest.mark.parametrize("noise", [2.0, 8.0, 20.0])
def test_ap_equals_pycocotools_on_perturbed_results(tmp_path, truth, noise):
    rng = np.random.default_rng(int(noise))
    perturbed = []
    for result in truth:
        points = np.array(result["keypoints"]).reshape(17, 3)
        points[:, :2] += rng.normal(0, noise, (17, 2))
        perturbed.append(
            {
                **result,
                "keypoints": points.reshape(-1).tolist(),
                "score": float(rng.uniform(0.1, 1)),
            }
        )
    perturbed.append({**perturbed[0], "score": 0.05})  # a duplicate: a false positive
    path = write_results(perturbed, tmp_path / "results.json")
    expected = _pycocotools(path)
    from_file = coco_keypoint_ap(ANNOTATIONS, path)
    from_list = coco_keypoint_ap(ANNOTATIONS, perturbed)
    assert [from_file[key] for key in SUMMARY_KEYS] == pytest.approx(expected, abs=1e-12)
    assert from_list == from_file
    assert from_file["AP"] < 1.0
    assert "area" not in perturbed[0], "the caller's records are left untouched"


def test_empty_results_score_zero():
    assert coco_keypoint_ap(ANNOTATIONS, []) == dict.fromkeys(SUMMARY_KEYS, 0.0)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"image_id": 1, "keypoints": [0.0] * 51, "score": 1.0}, r"image_id 1 is not in"),
        ({"image_id": 785, "keypoints": [0.0] * 50, "score": 1.0}, r"has 50 values"),
        ({"image_id": 785, "keypoints": [0.0] * 51}, r"'score' is missing"),
        ({"image_id": 785, "keypoints": [float("nan")] * 51, "score": 1.0}, r"NaN"),
    ],
)
def test_bad_results_name_the_record(tmp_path, record, message):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(DataError, match=rf"results\.json: record 0: .*{message}"):
        coco_keypoint_ap(ANNOTATIONS, path)


def test_bad_ground_truth_names_the_record(tmp_path, truth):
    data = json.loads(ANNOTATIONS.read_text())
    del data["annotations"][3]["iscrowd"]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"gt\.json: annotations\[3\] lacks iscrowd"):
        coco_keypoint_ap(path, truth)


def test_results_json_syntax_error_has_line_and_column(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("[\n{]")
    with pytest.raises(DataError, match=r"line 2, column 2"):
        coco_keypoint_ap(ANNOTATIONS, path)


def test_instance_score_is_box_score_times_mean_confident_keypoint():
    scores = np.full((2, 17), 0.1)
    scores[0, :3] = [0.9, 0.5, 0.3]  # above vis_thr 0.2: mean 0.5666...
    rescored = instance_scores(scores, np.array([0.8, 0.7]), vis_thr=0.2)
    assert rescored[0] == pytest.approx(0.8 * (0.9 + 0.5 + 0.3) / 3)
    assert rescored[1] == 0.0  # nothing confident: MMPose scores it 0


def test_oks_by_hand():
    pose = np.zeros((17, 3))
    pose[:, 0], pose[:, 1], pose[:, 2] = np.arange(17) * 10.0, 50.0, 1.0
    moved = pose.copy()
    moved[5, 0] += 6.0  # left shoulder 6 px off
    area = 900.0
    expected = (16 + np.exp(-36 / (2 * OKS_SIGMAS[5]) ** 2 / area / 2)) / 17
    assert oks_iou(pose, moved[None], area, np.array([area]))[0] == pytest.approx(expected)
    assert oks_iou(pose, pose[None], area, np.array([area]))[0] == pytest.approx(1.0)
    hidden = moved.copy()
    hidden[5, 2] = 0.0  # with vis_thr, the shoulder no longer counts
    assert oks_iou(pose, hidden[None], area, np.array([area]), vis_thr=0.5)[0] == pytest.approx(1)


def test_oks_nms_keeps_the_best_of_duplicates():
    base = np.zeros((17, 3))
    base[:, 0], base[:, 1], base[:, 2] = np.arange(17) * 10.0, np.arange(17) * 5.0, 1.0
    near = base + np.array([0.5, 0.5, 0])
    far = base + np.array([300, 0, 0])
    poses = np.stack([near, base, far])
    kept = oks_nms(poses, np.array([0.5, 0.9, 0.4]), np.full(3, 1e4), oks_thr=0.9)
    assert kept == [1, 2]


def test_topdown_results_rescore_and_suppress_per_image():
    base = np.zeros((17, 3))
    base[:, 0], base[:, 1], base[:, 2] = np.arange(17) * 10.0, 40.0, 0.8
    keypoints = np.stack([base, base + np.array([0.2, 0.2, 0.1]), base])
    results = topdown_results([1, 1, 2], keypoints, [0.5, 0.9, 0.6], [1e4] * 3, 0.2, 0.9)
    assert [r["image_id"] for r in results] == [1, 2]
    assert results[0]["score"] == pytest.approx(0.9 * 0.9)  # the better duplicate survives
    assert results[1]["score"] == pytest.approx(0.6 * 0.8)
    assert len(results[0]["keypoints"]) == 51 and results[0]["category_id"] == 1


def test_sdpose_coco_eval_command(tmp_path, truth, capsys):
    from sdpose.cli import main

    path = write_results(truth, tmp_path / "truth.json")
    assert main(["coco-eval", str(ANNOTATIONS), str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["AP"] == 1.0
    assert [printed[key] for key in SUMMARY_KEYS] == pytest.approx(_pycocotools(path))
    path.write_text("[{]")
    assert main(["coco-eval", str(ANNOTATIONS), str(path)]) == 2
    assert "truth.json: not valid JSON at line 1, column 3" in capsys.readouterr().err
