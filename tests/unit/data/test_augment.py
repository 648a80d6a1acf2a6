"""Crop + augmentation geometry: pixels and keypoints must move together.

Dots are drawn at known keypoints into synthetic images, cut by the crops stage's own
function, augmented by the feed's own transforms, and found again in the 256x192 input.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from sdpose.config import AugmentParams, CropsParams
from sdpose.core import inputs
from sdpose.core.codec import HeatmapCodec
from sdpose.core.codecs import codec_for_model
from sdpose.core.geometry import apply_affine
from sdpose.core.keypoints import FLIP_INDEX, FLIP_PAIRS
from sdpose.core.presets import resolve_model_config as build_model_config
from sdpose.data import augment, crop_rows, feed
from sdpose.data.manifest import SCHEMA

pytestmark = pytest.mark.unit

IMAGE_W, IMAGE_H = 360, 420
# A standing person facing the camera: its left joints (odd ids) on the image's right.
KEYPOINTS = np.array(
    [[180.3, 80.6], [188.2, 72.4], [171.7, 72.9], [197.5, 79.1], [163.4, 78.8],
     [214.6, 121.3], [146.2, 120.7], [231.8, 171.4], [128.5, 170.9], [240.1, 222.6],
     [119.4, 221.8], [201.7, 232.2], [159.3, 231.5], [205.9, 301.4], [155.2, 300.6],
     [208.4, 366.7], [151.6, 365.8]]
)  # fmt: skip
ANN_ID = 4242


def box_center_scale(bbox: list[float]) -> tuple[list[float], list[float]]:
    """The manifest's box rule (docs/ARCHITECTURE.md), computed independently: aspect
    192/256, padding 1.25."""
    x, y, w, h = bbox
    aspect = 192 / 256
    w, h = (w, w / aspect) if w > aspect * h else (h * aspect, h)
    return [x + bbox[2] / 2, y + bbox[3] / 2], [w * 1.25, h * 1.25]


def dot_image(point: np.ndarray) -> np.ndarray:
    """Black BGR image with one Gaussian dot (sigma 1.5 px) centred exactly on `point`."""
    ys, xs = np.mgrid[0:IMAGE_H, 0:IMAGE_W]
    blob = np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * 1.5**2))
    return np.repeat(np.round(blob * 255).astype(np.uint8)[..., None], 3, axis=2)


def manifest_rows(files: list[str], bbox: list[float]) -> pa.Table:
    center, scale = box_center_scale(bbox)
    keypoints = np.concatenate([KEYPOINTS, np.full((17, 1), 2.0)], axis=1).ravel().tolist()
    rows = [
        {"image_id": i, "ann_id": 1000 + i, "file_name": name, "width": IMAGE_W,
         "height": IMAGE_H, "bbox": bbox, "center": center, "scale": scale,
         "keypoints": keypoints, "num_keypoints": 17, "area": bbox[2] * bbox[3],
         "score": 1.0, "split": "train"}
        for i, name in enumerate(files)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=SCHEMA)


@pytest.fixture(scope="module")
def dot_crops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pa.Table]:
    """One image per joint with only that joint's dot; cut as raw and as jpeg crops."""
    root = tmp_path_factory.mktemp("dots")
    files = []
    for joint, point in enumerate(KEYPOINTS):
        files.append(f"joint{joint:02d}.png")
        cv2.imwrite(str(root / files[-1]), dot_image(point))
    xs, ys = KEYPOINTS[:, 0], KEYPOINTS[:, 1]
    bbox = [xs.min() - 10, ys.min() - 15, np.ptp(xs) + 20, np.ptp(ys) + 25]
    rows = manifest_rows(files, [float(v) for v in bbox])
    tables = {}
    for encoding in ("raw", "jpeg"):
        table, skipped = crop_rows.crop_rows(rows, root, CropsParams(encoding=encoding))
        assert not skipped
        tables[encoding] = table
    return tables


def find_dot(image_bgr: np.ndarray) -> np.ndarray | None:
    """Intensity-weighted centre of the bright pixels, or None if the dot left the frame."""
    gray = image_bgr[..., 1].astype(np.float64)
    weights = np.where(gray > 25, gray, 0.0)
    if weights.sum() < 200:
        return None
    ys, xs = np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]]
    return np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()


def augment_all(table: pa.Table, params: AugmentParams, epoch: int) -> list[dict]:
    """The same random draws (one ann_id) for every joint's image."""
    transforms = augment.train_transforms(params, HeatmapCodec())
    return [
        augment.apply_transforms(sample, transforms, augment.sample_rng(0, epoch, ANN_ID))
        for sample in feed.crop_samples(table)
    ]


def assert_dots_follow_keypoints(samples: list[dict]) -> int:
    """Dot of joint j lies where the sample says joint j (or its mirror twin) is."""
    found = 0
    for joint, sample in enumerate(samples):
        label = FLIP_INDEX[joint] if sample["flipped"] else joint
        expected = sample["keypoints"][label]
        dot = find_dot(sample["image"])
        inside = (4 <= expected[0] <= 192 - 5) and (4 <= expected[1] <= 256 - 5)
        if not inside:
            continue
        assert dot is not None, f"joint {joint}: no dot near {expected}"
        assert np.abs(dot - expected).max() < 1.0, f"joint {joint}: dot {dot}, keypoint {expected}"
        found += 1
    return found


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_dots_follow_flip_and_rotation(dot_crops, encoding, flip):
    params = AugmentParams(flip_prob=flip, rotation_prob=1.0, half_body_prob=0.0)
    rotations = []
    for epoch in range(4):
        samples = augment_all(dot_crops[encoding], params, epoch)
        assert all(sample["flipped"] == bool(flip) for sample in samples)
        rotations.append(samples[0]["rotation"])
        assert assert_dots_follow_keypoints(samples) >= 12
    assert all(rotation != 0 for rotation in rotations)  # rotation really exercised


def test_dots_follow_random_official_augmentation(dot_crops):
    flips, found = set(), 0
    for epoch in range(12):
        samples = augment_all(dot_crops["raw"], AugmentParams(), epoch)
        flips.add(samples[0]["flipped"])
        found += assert_dots_follow_keypoints(samples)
    assert flips == {True, False}
    assert found >= 12 * 17 // 2  # most dots stay in frame, so the check is not vacuous


def test_flip_swaps_left_and_right_labels(dot_crops):
    fixed = {"rotation_prob": 0.0, "half_body_prob": 0.0, "shift_prob": 0.0}
    plain = augment_all(dot_crops["raw"], AugmentParams(flip_prob=0.0, **fixed), 0)[0]
    mirrored = augment_all(dot_crops["raw"], AugmentParams(flip_prob=1.0, **fixed), 0)[0]
    width = 192
    for left, right in FLIP_PAIRS:
        # The mirror image of a person facing the camera still faces it, so its anatomical
        # left is still on the image's right: only a left/right swap of the labels keeps it.
        assert plain["keypoints"][left, 0] > plain["keypoints"][right, 0]
        assert mirrored["keypoints"][left, 0] > mirrored["keypoints"][right, 0]
        # and the new left joint is the old right one mirrored about the box centre, which
        # the warp puts at x = 96: input x -> 192 - x
        mirrored_right = width - plain["keypoints"][right, 0]
        assert abs(mirrored["keypoints"][left, 0] - mirrored_right) < 1e-6
        assert abs(mirrored["keypoints"][left, 1] - plain["keypoints"][right, 1]) < 1e-6


def test_crop_keypoints_map_back_through_stored_affine(dot_crops):
    table = dot_crops["raw"]
    to_image = crop_rows.fixed_list_column(table, "crop_to_image", 6).reshape(-1, 2, 3)
    in_crop = crop_rows.fixed_list_column(table, "keypoints", 51).reshape(-1, 17, 3)
    for matrix, keypoints in zip(to_image, in_crop, strict=True):
        assert np.abs(apply_affine(keypoints[:, :2], matrix) - KEYPOINTS).max() < 1e-3


def test_big_box_is_downsampled_and_still_exact(tmp_path):
    """A 900-pixel-tall person is stored at <= MAX_BOX_HEIGHT; its dot stays on its keypoint."""
    big = np.zeros((1200, 900, 3), np.uint8)
    point = np.array([432.0, 612.0])
    cv2.circle(big, (432, 612), 6, (255, 255, 255), -1)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    rows = manifest_rows(["big.png"], [250.0, 150.0, 400.0, 900.0]).to_pylist()
    rows[0].update(width=900, height=1200)
    rows[0]["keypoints"] = [*point, 2.0] + [0.0] * 48
    table, _ = crop_rows.crop_rows(
        pa.Table.from_pylist(rows, schema=SCHEMA), tmp_path, CropsParams()
    )
    assert table["crop_height"][0].as_py() <= crop_rows.MAX_BOX_HEIGHT * CropsParams().context + 1
    sample = feed.crop_samples(table)[0]
    dot = find_dot(sample["image"])
    assert np.abs(dot - sample["keypoints"][0]).max() < 1.0


def test_same_seed_same_sample_whatever_the_batching(dot_crops):
    table = dot_crops["raw"]
    kwargs = {"augment": AugmentParams(), "seed": 3, "epoch": 5, "codec": HeatmapCodec()}
    whole = feed.augment_batch(table, **kwargs)
    halves = [feed.augment_batch(table.slice(0, 7), **kwargs),
              feed.augment_batch(table.slice(7), **kwargs)]  # fmt: skip
    for name in ("images", "target", "target_weight", "ann_id"):
        np.testing.assert_array_equal(whole[name], np.concatenate([h[name] for h in halves]))
    other_epoch = feed.augment_batch(table, **{**kwargs, "epoch": 6})
    assert not np.array_equal(whole["images"], other_epoch["images"])


@pytest.mark.parametrize("preset", ["sdpose-t", "sdpose-nano"])  # 256x192 and 128x96
def test_batch_shapes_targets_and_normalisation(dot_crops, preset):
    table = dot_crops["raw"]
    config = build_model_config(preset)
    codec = codec_for_model(config)
    in_h, in_w = config.input_size
    batch = feed.augment_batch(table, AugmentParams(), seed=0, epoch=0, codec=codec)
    n = table.num_rows
    # train crops travel as uint8 BGR; the worker normalises them (normalize_tensor)
    assert batch["images"].shape == (n, in_h, in_w, 3) and batch["images"].dtype == np.uint8
    # the head's targets: 64x48 heatmaps for sdpose-t, SimCC's 192 + 256 bins for the nano
    assert batch["target"].shape == (n, 17, *config.output_shape)
    assert batch["target"].dtype == np.float32
    assert batch["target_weight"].shape == (n, 17)
    # a black pixel normalises to -mean/std per RGB channel
    black = -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])
    normalised = inputs.normalize_tensor(torch.from_numpy(batch["images"])).numpy()
    assert normalised.shape == (n, 3, in_h, in_w)
    np.testing.assert_allclose(normalised[0, :, 0, 0], black, rtol=1e-5)
    val = feed.val_batch(table, codec)
    assert val["images"].shape == (n, 3, in_h, in_w) and val["images"].dtype == np.float32
    # unaugmented: every joint's target peaks at its keypoint: / stride (4) on a heatmap,
    # x split (2) in SimCC's bins
    samples = [augment.AffineToInput(codec)(s) for s in feed.crop_samples(table)]
    keypoints = samples[0]["keypoints"]
    if config.head == "simcc":
        x_part, y_part = codec.split_axes(val["target"][0])
        peaks = np.stack([x_part.argmax(axis=1), y_part.argmax(axis=1)], 1)
        np.testing.assert_array_equal(peaks, np.round(keypoints * codec.split).astype(int))
    else:
        peaks = val["target"][0].reshape(17, -1).argmax(axis=1)
        width = config.heatmap_size[1]
        expected = np.round(keypoints / config.stride).astype(int)
        np.testing.assert_array_equal(np.stack([peaks % width, peaks // width], 1), expected)
    np.testing.assert_array_equal(val["target_weight"][0], np.ones(17, np.float32))
    assert set(val) >= {"center", "scale", "image_id", "ann_id", "score", "area"}


def test_normalize_images_is_rgb_imagenet():
    bgr = np.zeros((1, 2, 2, 3), np.uint8)
    bgr[0, 0, 0] = (10, 20, 200)  # B, G, R
    out = inputs.normalize_images(bgr)
    mean, std = np.array(inputs.IMAGENET_MEAN), np.array(inputs.IMAGENET_STD)
    expected = (np.array([200, 20, 10]) / 255 - mean) / std
    np.testing.assert_allclose(out[0, :, 0, 0], expected, rtol=1e-6)


def test_the_workers_torch_normalisation_is_the_numpy_one():
    bgr = np.random.default_rng(0).integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    in_torch = inputs.normalize_tensor(torch.from_numpy(bgr))
    assert in_torch.dtype == torch.float32
    assert in_torch.is_contiguous(memory_format=torch.channels_last)  # the fast conv layout
    np.testing.assert_allclose(in_torch.numpy(), inputs.normalize_images(bgr), atol=1e-6)
    with pytest.raises(ValueError, match=r"images: expected \(N, H, W, 3\) uint8"):
        inputs.normalize_tensor(torch.from_numpy(inputs.normalize_images(bgr)))


def test_scale_and_rotation_stay_in_mmpose_ranges():
    transform = augment.RandomScaleRotation(0.35, 45.0, 0.6)
    scales, rotations = [], []
    for ann_id in range(3000):
        sample = transform({"scale": np.array([100.0, 100.0])}, augment.sample_rng(0, 0, ann_id))
        scales.append(sample["scale"][0] / 100)
        rotations.append(sample["rotation"])
    scales, rotations = np.array(scales), np.array(rotations)
    assert scales.min() >= 0.65 - 1e-9 and scales.max() <= 1.35 + 1e-9
    assert np.abs(rotations).max() <= 90 + 1e-9
    assert 0.55 < np.mean(rotations != 0) < 0.65  # rotation_prob 0.6


def test_half_body_box_is_the_chosen_joints_box_times_1_5():
    keypoints, visible = KEYPOINTS.copy(), np.ones(17)
    half = augment.HalfBody(min_joints=8, prob=1.0, aspect_ratio=0.75)
    for ann_id in range(20):
        sample = half({"keypoints": keypoints, "visible": visible, "center": None,
                       "scale": None}, augment.sample_rng(0, 0, ann_id))  # fmt: skip
        chosen = KEYPOINTS[:11] if sample["center"][1] < 200 else KEYPOINTS[11:]
        width, height = np.ptp(chosen, axis=0)
        width, height = max(width, 0.75 * height), max(height, width / 0.75)
        np.testing.assert_allclose(sample["center"], chosen.mean(axis=0))
        np.testing.assert_allclose(sample["scale"], [width * 1.5, height * 1.5])


def test_unreadable_and_mismatched_images_are_skipped_with_reasons(tmp_path):
    cv2.imwrite(str(tmp_path / "ok.png"), np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "small.png"), np.zeros((10, 10, 3), np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    rows = manifest_rows(["ok.png", "broken.jpg", "missing.jpg", "small.png"],
                         [100.0, 100.0, 50.0, 120.0])  # fmt: skip
    table, skipped = crop_rows.crop_rows(rows, tmp_path, CropsParams())
    assert table.num_rows == 1
    assert sorted(record["kind"] for record in skipped) == [
        "size_mismatch", "undecodable", "unreadable"]  # fmt: skip
    assert all(Path(record["file_name"]).name in record["reason"] for record in skipped)
