"""Reading and validating COCO files: precise errors for bad files, reasons for bad records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared import COCO_SAMPLE

from sdpose.data.coco import (
    DataError,
    check_annotation,
    check_detection,
    clip_box,
    load_coco_keypoints,
    load_detections,
    load_json,
    unsafe_file_name,
)

pytestmark = pytest.mark.unit

SAMPLE = COCO_SAMPLE


@pytest.fixture
def coco() -> dict:
    return json.loads((SAMPLE / "person_keypoints_val2017_sample.json").read_text())


def _write(tmp_path: Path, data, name: str = "ann.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_real_sample_loads(coco):
    data = load_coco_keypoints(SAMPLE / "person_keypoints_val2017_sample.json")
    assert len(data["images"]) == 4 and len(data["annotations"]) == 14


def test_json_syntax_error_names_file_line_and_column(tmp_path):
    path = _write(tmp_path, '{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(DataError, match=r"ann\.json: not valid JSON at line 3, column 19"):
        load_json(path)


def test_unreadable_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"missing\.json: cannot read the file"):
        load_json(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match=r"binary\.json: cannot read the file"):
        load_json(binary)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: [d], r"top level is a list"),
        (lambda d: {k: v for k, v in d.items() if k != "annotations"}, r"'annotations' is missing"),
        (lambda d: {**d, "images": {}}, r"'images' must be a list, not dict"),
        (lambda d: {**d, "categories": [{"id": 2, "name": "dog"}]}, r"no 'person' entry"),
        (lambda d: {**d, "categories": [{"name": "person"}]}, r"categories\[0\]: expected an"),
        (
            lambda d: {**d, "categories": [{**d["categories"][0], "keypoints": ["nose"]}]},
            r"'keypoints' must list COCO's 17 names",
        ),
        (
            lambda d: {**d, "images": [{**d["images"][0], "width": "640"}]},
            r"images\[0\]: 'width' must be an integer, found '640'",
        ),
        (
            lambda d: {**d, "images": [d["images"][0], d["images"][0]]},
            r"images\[1\]: id 785 is already used by images\[0\]",
        ),
        (
            lambda d: {**d, "images": [{**d["images"][0], "file_name": ""}]},
            r"images\[0\] \(id 785\): 'file_name' must be a non-empty string",
        ),
    ],
)
def test_non_coco_files_are_errors_naming_what_is_wrong(tmp_path, coco, mutate, message):
    path = _write(tmp_path, mutate(coco))
    with pytest.raises(DataError, match=message) as caught:
        load_coco_keypoints(path)
    assert str(path) in str(caught.value)


def _images(coco: dict) -> dict[int, dict]:
    return {image["id"]: image for image in coco["images"]}


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        ({"keypoints": [0.0] * 50}, "bad_keypoints", "'keypoints' has 50 values, expected 51"),
        ({"keypoints": "x"}, "bad_keypoints", "'keypoints' has str values"),
        ({"keypoints": [float("nan")] + [0.0] * 50}, "non_finite", "NaN or infinity"),
        ({"keypoints": [0.0, 0.0, 3.0] * 17}, "bad_keypoints", "must be 0, 1 or 2"),
        ({"bbox": [1, 2, 0, 5]}, "bad_box", "width and height must be positive"),
        ({"bbox": [1, 2, -3, 5]}, "bad_box", "width and height must be positive"),
        ({"bbox": [1, 2, 3]}, "bad_box", "must be 4 numbers"),
        ({"bbox": [1, 2, float("inf"), 5]}, "non_finite", "'bbox' holds NaN"),
        ({"image_id": 123456}, "unknown_image", "image_id 123456 is not in 'images'"),
        ({"category_id": 2}, "not_person", "category_id 2"),
        ({"iscrowd": 1}, "crowd", "crowd"),
        ({"keypoints": [0.0] * 51}, "no_keypoints", "num_keypoints == 0"),
        ({"bbox": [700.0, 10.0, 50.0, 50.0]}, "box_outside_image", "no positive area"),
    ],
)
def test_each_bad_annotation_has_its_reason(coco, change, reason, detail):
    ann = {**coco["annotations"][0], **change}
    issue = check_annotation(ann, 0, _images(coco), person_id=1)
    assert issue is not None and issue.reason == reason and issue.record == ann["id"]
    assert detail in issue.detail and f"annotation {ann['id']}" in issue.detail


def test_good_annotations_pass_and_malformed_ones_name_the_record(coco):
    images = _images(coco)
    kept = [a for i, a in enumerate(coco["annotations"]) if not check_annotation(a, i, images, 1)]
    assert len(kept) == sum(1 for a in coco["annotations"] if a["num_keypoints"] > 0)
    issue = check_annotation({"image_id": 785}, 7, images, 1)
    assert issue.reason == "malformed" and issue.record == "record 7"


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../outside.jpg", "a/../../b.jpg", "C:\\x.jpg", "..\\x.jpg", "\\\\h\\s"]
)
def test_unsafe_file_names(name):
    assert unsafe_file_name(name) is not None


@pytest.mark.parametrize("name", ["000000000785.jpg", "sub/dir/a.jpg", "a..b.jpg"])
def test_safe_file_names(name):
    assert unsafe_file_name(name) is None


def test_clip_box_follows_the_inclusive_pixel_grid():
    assert clip_box([10, 20, 30, 40], 640, 480) == [10.0, 20.0, 29.0, 39.0]
    assert clip_box([-10, -5, 30, 40], 640, 480) == [0.0, 0.0, 19.0, 34.0]
    assert clip_box([630, 470, 30, 40], 640, 480) == [630.0, 470.0, 9.0, 9.0]
    assert clip_box([639.5, 10, 30, 40], 640, 480) is None
    assert clip_box([10, 10, 1, 1], 640, 480) is None  # one pixel: no extent


def test_detections_file_errors_and_checks(tmp_path, coco):
    with pytest.raises(DataError, match=r"must be a JSON list"):
        load_detections(_write(tmp_path, {"a": 1}))
    with pytest.raises(DataError, match=r"record 1: 'score' is missing"):
        load_detections(
            _write(
                tmp_path,
                [
                    {"image_id": 785, "bbox": [0, 0, 1, 1], "score": 1},
                    {"image_id": 785, "bbox": [0, 0, 1, 1]},
                ],
            )
        )
    images = _images(coco)
    good = {"image_id": 785, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.5}
    assert check_detection(good, 0, images, 1, 0.3) is None
    assert check_detection(good, 0, images, 1, 0.6).reason == "below_score_thr"
    assert check_detection({**good, "image_id": 9}, 0, images, 1, 0).reason == "unknown_image"
    assert check_detection({**good, "bbox": [1, 2, 0, 4]}, 0, images, 1, 0).reason == "bad_box"
    assert check_detection({**good, "score": "high"}, 0, images, 1, 0).reason == "non_finite"


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        ({"bbox": [1, 2, 3, True]}, "bad_box", "'bbox' must hold numbers, found True"),
        ({"bbox": [1, 2, float("nan"), 4]}, "non_finite", "'bbox' holds NaN or infinity"),
        ({"score": float("nan")}, "non_finite", "'score' holds NaN or infinity"),
        ({"score": None, "bbox": [1, 2, 0, 4]}, "non_finite", "'score' must hold numbers"),
    ],
)
def test_a_bad_detection_names_its_field(coco, change, reason, detail):
    good = {"image_id": 785, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.5}
    issue = check_detection({**good, **change}, 4, _images(coco), 1, 0.0)
    assert issue.reason == reason and issue.record == 4
    assert issue.detail.startswith(f"detection 4: {detail}")
