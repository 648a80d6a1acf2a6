"""The prepare stage on real COCO, on bad input, and through `run` for both sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from shared import COCO_SAMPLE

from sdpose.config import Params
from sdpose.core.inputs import center_scale
from sdpose.data import prepare
from sdpose.data.coco import DataError
from sdpose.data.manifest import SCHEMA, read_manifest
from sdpose.data.prepare import prepare_split

pytestmark = pytest.mark.unit

SAMPLE = COCO_SAMPLE
ANNOTATIONS = SAMPLE / "person_keypoints_val2017_sample.json"
DETECTIONS = SAMPLE / "person_detection_results_sample.json"


@pytest.fixture
def coco() -> dict:
    return json.loads(ANNOTATIONS.read_text())


@pytest.fixture
def images(tmp_path) -> Path:
    """A writable copy of the sample's images."""
    root = tmp_path / "images"
    shutil.copytree(SAMPLE / "images", root)
    return root


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def _good_ids(coco: dict, exclude: set[int] = frozenset()) -> set[int]:
    return {a["id"] for a in coco["annotations"] if a["num_keypoints"] > 0} - exclude


def test_real_sample_keeps_12_and_reports_the_2_without_keypoints(coco):
    result = prepare_split(ANNOTATIONS, SAMPLE / "images", "val")
    no_keypoints = sorted(a["id"] for a in coco["annotations"] if a["num_keypoints"] == 0)
    assert result.report["kept"] == len(result.rows) == 12
    assert list(result.report["skipped"]) == ["no_keypoints"]
    entry = result.report["skipped"]["no_keypoints"]
    assert entry["count"] == 2 and sorted(entry["ids"]) == no_keypoints
    assert {row["ann_id"] for row in result.rows} == _good_ids(coco)
    source = {a["id"]: a for a in coco["annotations"]}
    for row in result.rows:
        assert row["keypoints"] == source[row["ann_id"]]["keypoints"]
        assert row["num_keypoints"] == source[row["ann_id"]]["num_keypoints"]
        assert row["score"] == 1.0 and row["split"] == "val"


def test_center_and_scale_fix_the_aspect_then_pad():
    center, scale = center_scale([10, 20, 30, 80])  # tall: width grows to 80 * 0.75 = 60
    np.testing.assert_allclose(center, [25, 60])
    np.testing.assert_allclose(scale, [75, 100])
    center, scale = center_scale([0, 0, 120, 40])  # wide: height grows to 120 / 0.75 = 160
    np.testing.assert_allclose(center, [60, 20])
    np.testing.assert_allclose(scale, [150, 200])


def test_detector_boxes_become_rows_with_negative_ids(coco):
    detections = json.loads(DETECTIONS.read_text())
    result = prepare_split(
        ANNOTATIONS, SAMPLE / "images", "val", detections=DETECTIONS, det_score_thr=0.3
    )
    expected = [i for i, d in enumerate(detections) if d["score"] >= 0.3]
    assert [row["ann_id"] for row in result.det_rows] == [-(1 + i) for i in expected]
    assert result.report["detections"]["kept"] == len(expected)
    below = result.report["detections"]["skipped"]["below_score_thr"]
    assert below["count"] == len(detections) - len(expected)
    first = result.det_rows[0]
    assert first["bbox"] == pytest.approx(detections[expected[0]]["bbox"])
    assert first["score"] == pytest.approx(detections[expected[0]]["score"])
    assert first["num_keypoints"] == 0 and first["keypoints"] == [0.0] * 51


def _damaged(coco: dict, index: int, **change) -> dict:
    annotations = [dict(a) for a in coco["annotations"]]
    annotations[index].update(change)
    return {**coco, "annotations": annotations}


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        ({"keypoints": [1.0] * 50}, "bad_keypoints", r"has 50 values, expected 51"),
        ({"keypoints": [float("nan")] * 51}, "non_finite", r"NaN or infinity"),
        ({"bbox": [1.0, 2.0, -5.0, 10.0]}, "bad_box", r"width and height must be positive"),
        ({"bbox": [1.0, 2.0, 0.0, 10.0]}, "bad_box", r"width and height must be positive"),
        ({"image_id": 999}, "unknown_image", r"image_id 999 is not in 'images'"),
    ],
)
def test_bad_annotations_are_skipped_reported_or_raised(tmp_path, coco, change, reason, message):
    bad = coco["annotations"][0]
    path = _write(tmp_path, _damaged(coco, 0, **change))
    result = prepare_split(path, SAMPLE / "images", "val")
    assert result.report["skipped"][reason]["ids"] == [bad["id"]]
    assert {row["ann_id"] for row in result.rows} == _good_ids(coco, {bad["id"]})
    with pytest.raises(DataError, match=message) as caught:
        prepare_split(path, SAMPLE / "images", "val", strict=True)
    assert str(path) in str(caught.value) and f"annotation {bad['id']}" in str(caught.value)


def test_strict_mode_still_filters_ordinary_cases(coco):
    result = prepare_split(ANNOTATIONS, SAMPLE / "images", "val", strict=True)
    assert result.report["kept"] == 12  # num_keypoints == 0 is a filter, not a defect


def test_missing_and_undecodable_images_are_skipped(tmp_path, coco, images):
    first, second = coco["images"][0], coco["images"][1]
    (images / first["file_name"]).unlink()
    (images / second["file_name"]).write_bytes(b"not a jpeg at all")
    result = prepare_split(ANNOTATIONS, images, "val")
    skipped = result.report["skipped"]
    on = {
        image["id"]: {a["id"] for a in coco["annotations"] if a["image_id"] == image["id"]}
        for image in (first, second)
    }
    assert set(skipped["missing_image"]["ids"]) == on[first["id"]] & _good_ids(coco)
    assert skipped["missing_image"]["image_ids"] == [first["id"]]
    assert set(skipped["undecodable_image"]["ids"]) == on[second["id"]] & _good_ids(coco)
    assert {row["image_id"] for row in result.rows} == {i["id"] for i in coco["images"][2:]}
    with pytest.raises(DataError, match=r"no readable file at .*000000000785\.jpg"):
        prepare_split(ANNOTATIONS, images, "val", strict=True)


def test_image_with_a_different_size_than_recorded_is_skipped(tmp_path, coco):
    data = {**coco, "images": [dict(image) for image in coco["images"]]}
    data["images"][0]["width"] = 320
    result = prepare_split(_write(tmp_path, data), SAMPLE / "images", "val")
    assert result.report["skipped"]["image_size_mismatch"]["image_ids"] == [data["images"][0]["id"]]


@pytest.mark.parametrize("name", ["../outside.jpg", "/abs/000000000785.jpg"])
def test_file_names_leaving_the_image_root_are_rejected(tmp_path, coco, images, name):
    shutil.copy(images / coco["images"][0]["file_name"], tmp_path / "outside.jpg")  # would decode
    data = {**coco, "images": [dict(image) for image in coco["images"]]}
    data["images"][0]["file_name"] = name
    result = prepare_split(_write(tmp_path, data), images, "val")
    entry = result.report["skipped"]["unsafe_file_name"]
    assert entry["image_ids"] == [data["images"][0]["id"]] and "rejected" in entry["example"]
    assert {row["image_id"] for row in result.rows} == {i["id"] for i in coco["images"][1:]}


def test_bad_json_is_an_error_with_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [\n  {"id": 1,}\n]}')  # the stray "}" is line 2's 12th character
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON at line 2, column 12"):
        prepare_split(path, tmp_path, "val")


def _coco_tree(root: Path) -> Path:
    """A COCO 2017 layout built from the sample (train and val alike)."""
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        shutil.copy(ANNOTATIONS, root / "annotations" / f"person_keypoints_{split}2017.json")
        shutil.copytree(SAMPLE / "images", root / f"{split}2017")
    return root


def _params(**sections) -> Params:
    return Params.model_validate(sections)


def test_run_on_a_coco_tree_writes_manifests_and_report(tmp_path, coco):
    _coco_tree(tmp_path / "coco")
    params = _params(
        data={"source": "coco", "root": "coco"},
        evaluate={"boxes": str(DETECTIONS), "det_score_thr": 0.5},
    )
    summary = prepare.run(params, tmp_path)
    assert summary["train"] == summary["val"] == 12
    out = tmp_path / "data" / "prepared"
    for split in ("train", "val"):
        table, image_root = read_manifest(out / f"{split}.parquet")
        assert table.num_rows == 12 and table.schema.equals(SCHEMA, check_metadata=False)
        assert image_root == Path("coco") / f"{split}2017"
        assert set(table.column("split").to_pylist()) == {split}
    det, _ = read_manifest(out / "val_det.parquet")
    detections = json.loads(DETECTIONS.read_text())
    assert det.num_rows == summary["val_det"] == sum(d["score"] >= 0.5 for d in detections)
    assert max(det.column("ann_id").to_pylist()) < 0
    report = json.loads((out / "report.json").read_text())
    assert report["splits"]["val"]["skipped"]["no_keypoints"]["count"] == 2
    assert report["splits"]["val"]["detections"]["kept"] == det.num_rows
    assert not list(out.glob(".*tmp*")), "no temporary files left behind"

    params = _params(data={"source": "coco", "root": "coco"})  # boxes off again
    prepare.run(params, tmp_path)
    assert not (out / "val_det.parquet").exists(), "a stale detector manifest must go"
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "train.parquet", "val.parquet"]


def test_run_on_synthetic_data(tmp_path):
    from sdpose.data import synth

    params = _params(synth={"train_images": 6, "val_images": 4, "workers": 1})
    synth.run(params, tmp_path)
    summary = prepare.run(params, tmp_path)
    for split in ("train", "val"):
        data = json.loads(
            (tmp_path / "data/raw/synth/annotations" / f"person_keypoints_{split}.json").read_text()
        )
        expected = sum(1 for a in data["annotations"] if a["num_keypoints"] > 0)
        table, image_root = read_manifest(tmp_path / "data/prepared" / f"{split}.parquet")
        assert table.num_rows == summary[split] == expected
        assert image_root == Path("data/raw/synth/images")


def test_missing_annotations_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"annotation file not found.*sdpose synth"):
        prepare.run(_params(), tmp_path)


def test_strict_argument_overrides_params(tmp_path, coco):
    root = _coco_tree(tmp_path / "coco")
    damaged = _damaged(coco, 0, keypoints=[1.0] * 50)
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(damaged))
    params = _params(data={"source": "coco", "root": "coco", "strict": False})
    assert prepare.run(params, tmp_path)["val"] == 11
    with pytest.raises(DataError, match=r"has 50 values"):
        prepare.run(params, tmp_path, strict=True)


def test_a_crash_while_writing_leaves_no_complete_looking_manifest(tmp_path, monkeypatch):
    _coco_tree(tmp_path / "coco")
    params = _params(data={"source": "coco", "root": "coco"})
    out = tmp_path / "data" / "prepared"
    real_write = prepare.write_manifest
    calls = []

    def crash_on_second_file(rows, where, *args, **kwargs):
        calls.append(where)
        if len(calls) == 2:  # train written, val half-written
            Path(where).write_bytes(b"PAR1 half a file")
            raise OSError("disk full")
        return real_write(rows, where, *args, **kwargs)

    monkeypatch.setattr(prepare, "write_manifest", crash_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        prepare.run(params, tmp_path)
    assert not out.exists(), "no manifest from a crashed first run"

    monkeypatch.setattr(prepare, "write_manifest", real_write)
    prepare.run(params, tmp_path)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    calls.clear()
    monkeypatch.setattr(prepare, "write_manifest", crash_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        prepare.run(params, tmp_path)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging removed"
