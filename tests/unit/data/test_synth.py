"""The synthetic dataset: COCO's schema, exact labels, determinism, and real difficulty."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from shared import SHARED

from sdpose.config import Params
from sdpose.core.keypoints import KEYPOINT_NAMES
from sdpose.data import synth
from sdpose.data.synth_people import Body, Part, View, place_person, skeleton_3d
from sdpose.data.synth_poses import FAMILY_WEIGHTS, POSE_LIMITS, SIDED, sample_pose
from sdpose.data.synth_scene import OBJECT_BASE, draw_person, label_person
from sdpose.evaluation.coco_ap import coco_keypoint_ap, keypoint_results

pytestmark = [
    pytest.mark.unit,
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # pycocotools
]

COCO_SAMPLE = SHARED / "fixtures" / "coco-val2017-sample" / "person_keypoints_val2017_sample.json"
K = {name: index for index, name in enumerate(KEYPOINT_NAMES)}
SIZE = (320, 256)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small dataset written by the stage itself, on two worker processes."""
    workdir = tmp_path_factory.mktemp("synth")
    params = Params.model_validate(
        {"synth": {"seed": 7, "train_images": 48, "val_images": 32, "workers": 2}}
    )
    summary = synth.run(params, workdir)
    assert summary["train_images"] == 48 and summary["val_images"] == 32
    return workdir / "data" / "raw" / "synth"


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"person_keypoints_{split}.json").read_text())


def test_layout_and_schema_match_coco(dataset):
    coco = json.loads(COCO_SAMPLE.read_text())
    for split in ("train", "val"):
        data = _load(dataset, split)
        assert set(data) >= {"info", "licenses", "images", "annotations", "categories"}
        assert data["categories"] == coco["categories"]  # COCO's own person entry
        assert {key for ann in data["annotations"] for key in ann} == set(coco["annotations"][0])
        for image in data["images"]:
            assert (image["width"], image["height"]) == SIZE
            assert (dataset / "images" / image["file_name"]).is_file()
    train_ids = {image["id"] for image in _load(dataset, "train")["images"]}
    assert not train_ids & {image["id"] for image in _load(dataset, "val")["images"]}
    assert not list(dataset.parent.glob(".synth*")), "the staging tree must be gone"


def test_labels_agree_with_the_drawn_silhouettes(dataset):
    width, height = SIZE
    data = _load(dataset, "train")
    for ann in data["annotations"]:
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        points = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
        flags = points[:, 2]
        assert ann["area"] == mask.sum() == mask_utils.area(ann["segmentation"])
        assert ann["num_keypoints"] == int((flags > 0).sum())
        assert set(flags) <= {0, 1, 2} and ann["iscrowd"] == 0
        assert np.all(points[flags == 0, :2] == 0), "unlabelled keypoints sit at (0, 0)"
        labelled = points[flags > 0]
        assert np.all((labelled[:, :2] >= 0) & (labelled[:, :2] <= [width - 1, height - 1]))
        pixel = np.floor(labelled[:, :2] + 0.5).astype(int)
        visible = pixel[labelled[:, 2] == 2]
        assert mask[visible[:, 1], visible[:, 0]].all(), "a v=2 keypoint must show the person"
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and x + w <= width + 1e-6 and y + h <= height + 1e-6
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert x <= cols[0] and cols[-1] + 1 <= x + w + 0.01
        assert y <= rows[0] and rows[-1] + 1 <= y + h + 0.01
        assert np.all(labelled[:, 0] >= x - 0.01) and np.all(labelled[:, 0] <= x + w + 0.01)
        assert np.all(labelled[:, 1] >= y - 0.01) and np.all(labelled[:, 1] <= y + h + 0.01)


def test_the_dataset_has_the_hard_cases(dataset):
    anns = _load(dataset, "train")["annotations"] + _load(dataset, "val")["annotations"]
    flags = np.array([ann["keypoints"][2::3] for ann in anns])
    heights = np.array([ann["bbox"][3] for ann in anns]) / SIZE[1]
    per_image = np.bincount([ann["image_id"] % synth.VAL_ID_BASE for ann in anns])
    keyed = flags[flags.sum(1) > 0]
    assert (flags == 1).sum() > 0.05 * flags.size, "occluded keypoints (v=1)"
    assert per_image.max() >= 3, "crowded images"
    assert heights.min() < 0.2 and heights.max() > 0.9, "small people and frame-filling ones"
    touching = [a for a in anns if a["bbox"][0] <= 0.5 or a["bbox"][0] + a["bbox"][2] >= 319.5]
    assert touching, "people truncated at the border"
    faces = keyed[:, [K["nose"], K["left_eye"], K["right_eye"]]] > 0
    ears = keyed[:, [K["left_ear"], K["right_ear"]]] > 0
    assert faces.all(1).any(), "front views show the face"
    assert (~faces.any(1) & ears.all(1)).any(), "back views: ears but no face"


def test_ground_truth_scores_one_and_a_mean_pose_does_not(dataset):
    train, val = _load(dataset, "train"), _load(dataset, "val")
    relative, labelled = [], []
    for ann in train["annotations"]:
        points = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
        x, y, w, h = ann["bbox"]
        relative.append((points[:, :2] - [x, y]) / [w, h])
        labelled.append(points[:, 2] > 0)
    relative, labelled = np.array(relative), np.array(labelled)[..., None]
    mean_pose = (relative * labelled).sum(0) / np.maximum(labelled.sum(0), 1)  # (17, 2)
    scored = [ann for ann in val["annotations"] if ann["num_keypoints"] > 0]
    assert len(scored) >= 20
    boxes = np.array([ann["bbox"] for ann in scored])
    guesses = boxes[:, None, :2] + mean_pose[None] * boxes[:, None, 2:]
    guesses = np.concatenate([guesses, np.ones((len(scored), 17, 1))], axis=2)
    ids = [ann["image_id"] for ann in scored]
    annotations = dataset / "annotations" / "person_keypoints_val.json"
    mean_ap = coco_keypoint_ap(annotations, keypoint_results(ids, guesses, [1.0] * len(ids)))
    truth = np.array([ann["keypoints"] for ann in scored], dtype=float).reshape(-1, 17, 3)
    truth_ap = coco_keypoint_ap(annotations, keypoint_results(ids, truth, [1.0] * len(ids)))
    assert mean_ap["AP"] < 0.2
    assert truth_ap["AP"] == pytest.approx(1.0)


def test_output_does_not_depend_on_worker_count(tmp_path):
    settings = {"seed": 3, "size": (160, 128), "max_people": 4}
    one = synth.generate_split("val", 20, images_dir=tmp_path / "a", workers=1, **settings)
    two = synth.generate_split("val", 20, images_dir=tmp_path / "b", workers=2, **settings)
    assert one == two
    for image in one["images"]:
        name = image["file_name"]
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = synth.generate_split(
        "val", 4, images_dir=tmp_path / "c", seed=4, size=(160, 128), max_people=4
    )
    assert other["annotations"] != one["annotations"][: len(other["annotations"])]


def test_left_and_right_follow_the_view():
    pose = sample_pose(np.random.default_rng(0), "stand")
    pose.update(head_yaw=0.0, torso_twist=0.0)  # head square to the body
    for yaw, left_on_image_right in ((0, True), (180, False)):
        person = place_person(Body(), pose, View(yaw, 0, 0, 200, (100, 120)))
        points = person.keypoints
        for left, right in (("left_shoulder", "right_shoulder"), ("left_hip", "right_hip")):
            assert (points[K[left], 0] > points[K[right], 0]) == left_on_image_right
    front = place_person(Body(), pose, View(0, 0, 0, 200, (100, 120)))
    back = place_person(Body(), pose, View(180, 0, 0, 200, (100, 120)))
    face = [K["nose"], K["left_eye"], K["right_eye"]]
    assert front.face_labelled.all()
    assert not back.face_labelled[face].any()
    assert back.face_labelled[[K["left_ear"], K["right_ear"]]].all()


@pytest.mark.parametrize("family", sorted(FAMILY_WEIGHTS))
def test_poses_respect_joint_limits_and_bone_lengths(family):
    rng = np.random.default_rng(1)
    body = Body()
    for _ in range(50):
        pose = sample_pose(rng, family)
        for name, (low, high) in POSE_LIMITS.items():
            assert np.all((low <= pose[name]) & (pose[name] <= high)), name
            assert np.shape(pose[name]) == ((2,) if name in SIDED else ())
        joints = skeleton_3d(body, pose)["joints"]
        for side, index in (("left", 0), ("right", 1)):
            hip, knee, ankle = (joints[K[f"{side}_{j}"]] for j in ("hip", "knee", "ankle"))
            shoulder, elbow, wrist = (
                joints[K[f"{side}_{j}"]] for j in ("shoulder", "elbow", "wrist")
            )
            assert np.linalg.norm(knee - hip) == pytest.approx(body.thigh)
            assert np.linalg.norm(ankle - knee) == pytest.approx(body.shank)
            assert np.linalg.norm(elbow - shoulder) == pytest.approx(body.upper_arm)
            assert np.linalg.norm(wrist - elbow) == pytest.approx(body.forearm)
            bend = np.degrees(np.arccos(np.dot(knee - hip, ankle - knee) / body.thigh / body.shank))
            assert bend == pytest.approx(pose["knee"][index], abs=1e-6)


def test_occlusion_by_an_object_gives_v1():
    person = place_person(
        Body(), sample_pose(np.random.default_rng(2), "stand"), View(0, 0, 0, 200, (100, 120))
    )
    owner = np.zeros((256, 200), dtype=np.uint16)
    draw_person(owner, person, 1)
    before = np.array(label_person(owner, 0, person)["keypoints"]).reshape(17, 3)
    wrist = np.round(person.keypoints[K["left_wrist"]]).astype(int)
    owner[wrist[1] - 3 : wrist[1] + 4, wrist[0] - 3 : wrist[0] + 4] = OBJECT_BASE  # a ball
    after = np.array(label_person(owner, 0, person)["keypoints"]).reshape(17, 3)
    assert before[K["left_wrist"], 2] == 2 and after[K["left_wrist"], 2] == 1
    np.testing.assert_array_equal(
        np.delete(after, K["left_wrist"], 0), np.delete(before, K["left_wrist"], 0)
    )
    assert Part.HAND_L in person.visible_parts[K["left_wrist"]]


def test_side_view_hides_the_far_shoulder_behind_the_trunk():
    pose = sample_pose(np.random.default_rng(5), "stand")
    person = place_person(Body(), pose, View(90, 0, 0, 200, (100, 120)))  # facing image right
    owner = np.zeros((256, 200), dtype=np.uint16)
    draw_person(owner, person, 1)
    flags = np.array(label_person(owner, 0, person)["keypoints"]).reshape(17, 3)[:, 2]
    # Facing image right, the person's left side is the far side.
    assert flags[K["right_shoulder"]] == 2 and flags[K["left_shoulder"]] == 1


def test_an_interrupted_run_keeps_the_previous_dataset(tmp_path, monkeypatch):
    params = Params.model_validate({"synth": {"train_images": 2, "val_images": 1, "workers": 1}})
    synth.run(params, tmp_path)
    root = tmp_path / "data" / "raw" / "synth"
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "write_splits", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synth.run(params, tmp_path)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
    assert [p.name for p in root.parent.iterdir()] == ["synth"], "no staging folder left"


def test_overlay_grid_draws_each_label_in_its_side_colour(dataset):
    import cv2

    from sdpose.evaluation.visualize import LEFT, RIGHT, coco_overlay_grid, draw_coco_annotations

    data = _load(dataset, "val")
    grid = coco_overlay_grid(
        dataset / "annotations" / "person_keypoints_val.json",
        dataset / "images",
        count=6,
        columns=3,
    )
    assert grid.shape == (2 * (SIZE[1] + 4) + 4, 3 * (SIZE[0] + 4) + 4, 3)
    checked = 0
    for record in data["images"]:
        image = cv2.imread(str(dataset / "images" / record["file_name"]))
        for ann in (a for a in data["annotations"] if a["image_id"] == record["id"]):
            drawn = draw_coco_annotations(image, [ann])
            points = np.array(ann["keypoints"]).reshape(17, 3)
            for name, colour in (("left_hip", LEFT), ("right_hip", RIGHT)):
                x, y, v = points[K[name]]
                others = np.delete(points, K[name], 0)
                others = others[others[:, 2] > 0, :2]
                alone = len(others) == 0 or np.hypot(*(others - [x, y]).T).min() > 12
                if v == 2 and alone:  # a filled dot of the side's colour
                    assert tuple(drawn[round(y), round(x)]) == colour
                    checked += 1
    assert checked >= 5


@pytest.mark.parametrize("seed", range(6))
def test_plain_scenes_have_no_clutter_and_no_occluders(seed):
    """synth.clutter / synth.occluders off: a smooth background, nothing in front of anyone."""
    from sdpose.data.synth_scene import render_scene
    from sdpose.data.synth_style import Palette, draw_background

    width, height = 160, 128

    def background(clutter: bool) -> np.ndarray:
        palette = Palette(np.random.default_rng(seed), width, height)
        return draw_background(np.random.default_rng(seed), palette, width, height, [], clutter)

    plain, busy = background(clutter=False), background(clutter=True)
    # a gradient changes by about its range / width per pixel; blocks, lines and sticks jump
    assert np.abs(np.diff(plain, axis=1)).max() < 2.0 / width * 255
    assert np.abs(np.diff(busy, axis=1)).max() > 10 * np.abs(np.diff(plain, axis=1)).max()
    rng = np.random.default_rng(seed)
    scene = render_scene(rng, width, height, 1, occluders=False, clutter=False)
    assert len(scene.annotations) <= 1
