"""The crops stage and the feed on real Ray (local, 2 CPUs), real COCO images and DVC.

Manifests are written here from the COCO fixture (not by `sdpose prepare`), so these tests
check the crops contract on its own: 12 labelled instances of the real COCO sample, crops
that map back to the original pixels, a skip-and-report for broken images, a DVC rerun
that is skipped, and a crash in the middle that leaves no half-written split behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import yaml
from ray.data.dataset import MaterializedDataset
from shared import REPO

from sdpose.config import Params, load_params
from sdpose.core.codecs import codec_for_labels
from sdpose.core.geometry import apply_affine
from sdpose.data import crop_rows, crops, feed
from sdpose.data.manifest import write_manifest

pytestmark = pytest.mark.integration

COCO = REPO.parent / "shared" / "fixtures" / "coco-val2017-sample"


def box_center_scale(bbox: list[float]) -> tuple[list[float], list[float]]:
    """docs/ARCHITECTURE.md: box aspect fixed to 192/256, then padded by 1.25 (written out here)."""
    x, y, w, h = bbox
    fit_w, fit_h = (w, w * 256 / 192) if w * 256 > 192 * h else (h * 192 / 256, h)
    return [x + w / 2, y + h / 2], [fit_w * 1.25, fit_h * 1.25]


def coco_rows() -> list[dict]:
    """Manifest rows of the labelled instances (COCO's training rule: num_keypoints > 0)."""
    data = json.loads((COCO / "person_keypoints_val2017_sample.json").read_text())
    images = {image["id"]: image for image in data["images"]}
    rows = []
    for ann in data["annotations"]:
        if ann["num_keypoints"] == 0 or ann["iscrowd"]:
            continue
        image = images[ann["image_id"]]
        center, scale = box_center_scale(ann["bbox"])
        rows.append(
            {
                "image_id": ann["image_id"],
                "ann_id": ann["id"],
                "file_name": image["file_name"],
                "width": image["width"],
                "height": image["height"],
                "bbox": ann["bbox"],
                "center": center,
                "scale": scale,
                "keypoints": ann["keypoints"],
                "num_keypoints": ann["num_keypoints"],
                "area": ann["area"],
                "score": 1.0,
                "split": "val",
            }
        )
    return rows


def detection_rows() -> list[dict]:
    """The detector boxes of the sample, as prepare writes them (ann_id -(1 + index))."""
    data = json.loads((COCO / "person_keypoints_val2017_sample.json").read_text())
    images = {image["id"]: image for image in data["images"]}
    boxes = json.loads((COCO / "person_detection_results_sample.json").read_text())
    rows = []
    for index, box in enumerate(boxes):
        image = images[box["image_id"]]
        center, scale = box_center_scale(box["bbox"])
        rows.append(
            {
                "image_id": box["image_id"],
                "ann_id": -(1 + index),
                "file_name": image["file_name"],
                "width": image["width"],
                "height": image["height"],
                "bbox": box["bbox"],
                "center": center,
                "scale": scale,
                "keypoints": [0.0] * 51,
                "num_keypoints": 0,
                "area": box["bbox"][2] * box["bbox"][3],
                "score": box["score"],
                "split": "val",
            }
        )
    return rows


def write_coco_manifests(workdir: Path, with_detections: bool = False) -> None:
    prepared = workdir / "data" / "prepared"
    for split in ("train", "val"):
        write_manifest(coco_rows(), prepared / f"{split}.parquet", COCO / "images")
    if with_detections:
        write_manifest(detection_rows(), prepared / "val_det.parquet", COCO / "images")


def read_split(workdir: Path, split: str):
    shards = sorted((workdir / "data" / "crops" / split).glob("part-*.parquet"))
    return pq.read_table(shards) if shards else None, shards


@pytest.fixture(scope="module")
def local_ray():
    """A private 2-CPU Ray for this module; `address="local"` never joins anyone else's."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def coco_crops(local_ray, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("coco")
    write_coco_manifests(workdir, with_detections=True)
    params = Params.model_validate({"crops": {"encoding": "raw", "rows_per_shard": 5}})
    summary = crops.run(params, workdir)
    assert summary["splits"]["train"]["rows"] == 12
    return workdir


@pytest.mark.timeout(300)
def test_coco_sample_gives_12_crops_that_map_back_within_half_a_pixel(coco_crops):
    table, shards = read_split(coco_crops, "train")
    expected = {row["ann_id"]: row for row in coco_rows()}
    assert table.num_rows == 12 and sorted(table["ann_id"].to_pylist()) == sorted(expected)
    assert len(shards) >= 3 and all(pq.read_metadata(s).num_rows <= 5 for s in shards)
    to_image = crop_rows.fixed_list_column(table, "crop_to_image", 6).reshape(-1, 2, 3)
    in_crop = crop_rows.fixed_list_column(table, "keypoints", 51).reshape(-1, 17, 3)
    for ann_id, matrix, keypoints in zip(
        table["ann_id"].to_pylist(), to_image, in_crop, strict=True
    ):
        original = np.array(expected[ann_id]["keypoints"], dtype=np.float64).reshape(17, 3)
        labelled = original[:, 2] > 0
        back = apply_affine(keypoints[labelled, :2], matrix)
        assert np.abs(back - original[labelled, :2]).max() < 0.5
        np.testing.assert_array_equal(keypoints[labelled, 2], original[labelled, 2])
        assert not keypoints[~labelled].any()


@pytest.mark.timeout(300)
def test_crop_pixels_are_the_original_pixels(coco_crops):
    table, _ = read_split(coco_crops, "train")
    # a box no taller than twice the input height is stored at full resolution: exact pixels
    full_size = crop_rows.fixed_list_column(table, "scale", 2)[:, 1] <= 256
    assert full_size.any() and not full_size.all()
    row = table.filter(full_size).slice(0, 1).to_pylist()[0]
    crop = crop_rows.decode_crop(row["crop"], row["crop_height"], row["crop_width"], "raw")
    image = cv2.imread(str(COCO / "images" / f"{row['image_id']:012d}.jpg"))
    matrix = np.array(row["crop_to_image"]).reshape(2, 3)
    center_crop = (np.array(crop.shape[1::-1]) // 2).astype(float)
    x, y = np.round(apply_affine(center_crop, matrix)).astype(int)
    np.testing.assert_array_equal(crop[int(center_crop[1]), int(center_crop[0])], image[y, x])


@pytest.mark.timeout(300)
def test_detector_boxes_and_summary(coco_crops):
    summary = json.loads((coco_crops / "data" / "crops" / "summary.json").read_text())
    table, shards = read_split(coco_crops, "val_det")
    assert table.num_rows == len(detection_rows()) == summary["splits"]["val_det"]["rows"]
    assert (table["ann_id"].to_numpy() < 0).all()
    for split, info in summary["splits"].items():
        _, shards = read_split(coco_crops, split)
        assert info["shards"] == len(shards)
        assert info["bytes"] == sum(shard.stat().st_size for shard in shards)
        assert info["skipped_rows"] == 0
    assert not list((coco_crops / "data").glob(".crops.tmp-*"))


@pytest.fixture(params=["cached", "streamed"])
def train_rows_kept(request, monkeypatch) -> str:
    """The train feed both ways: crops read once into the object store, or from the files."""
    if request.param == "streamed":
        monkeypatch.setattr(feed, "CACHE_BYTES", 0)
    return request.param


@pytest.mark.timeout(300)
def test_feed_batches_and_epoch_reseeding(coco_crops, train_rows_kept):
    params = Params()
    config = params.model.resolve()  # the default nano at 128x96
    val = feed.val_dataset(params, coco_crops).take_batch(12)
    assert val["images"].shape == (12, 3, *config.input_size) and val["images"].dtype == np.float32
    assert val["target"].shape == (
        12,
        17,
        *codec_for_labels(params.model.resolve(), params.train).output_shape,
    )
    assert val["target_weight"].shape == (12, 17)
    truth = {row["ann_id"]: row for row in coco_rows()}
    for ann_id, center in zip(val["ann_id"], val["center"], strict=True):
        np.testing.assert_allclose(center, truth[int(ann_id)]["center"], rtol=1e-6)

    def epoch_images(ds) -> dict[int, np.ndarray]:
        batches = list(ds.iter_batches(batch_size=4))
        return {
            int(a): img for b in batches for a, img in zip(b["ann_id"], b["images"], strict=True)
        }

    train = feed.train_dataset(params, coco_crops, epoch=0)
    first, second = epoch_images(train), epoch_images(train)  # a lazy dataset, run twice
    assert sorted(first) == sorted(truth)
    fresh_epoch_1 = epoch_images(feed.train_dataset(params, coco_crops, epoch=1))
    for ann_id in truth:
        np.testing.assert_array_equal(second[ann_id], fresh_epoch_1[ann_id])
    assert any(not np.array_equal(first[a], second[a]) for a in truth)


@pytest.mark.timeout(300)
def test_crops_are_cut_for_the_model_input_and_refused_by_another(coco_crops):
    summary = json.loads((coco_crops / "data" / "crops" / "summary.json").read_text())
    assert summary["input_size"] == [128, 96] and summary["max_box_height"] == 256
    table, _ = read_split(coco_crops, "train")
    scale = crop_rows.fixed_list_column(table, "scale", 2)
    stored = table["crop_height"].to_numpy() / (scale[:, 1] * Params().crops.context)
    # boxes taller than twice the input height are stored shrunk to that height
    assert np.all(stored[scale[:, 1] > 256] < 1) and np.all(stored[scale[:, 1] <= 256] >= 1)
    paper_sized = Params.model_validate({"model": {"preset": "sdpose-t"}})
    for dataset in (feed.val_dataset, feed.train_dataset):
        with pytest.raises(feed.CropResolutionError, match=r"summary\.json.*\[128, 96\].*\[256, "):
            dataset(paper_sized, coco_crops)


@pytest.mark.timeout(300)
def test_small_validation_split_is_computed_once(coco_crops, monkeypatch):
    params = Params()
    sample_bytes = feed.sample_bytes(codec_for_labels(params.model.resolve(), params.train))
    cached = feed.validation_feed(params, coco_crops)
    assert isinstance(cached, MaterializedDataset)
    expected = feed.val_dataset(params, coco_crops).take_all()
    assert sorted(row["ann_id"] for row in cached.take_all()) == sorted(
        row["ann_id"] for row in expected
    )
    monkeypatch.setattr(feed, "CACHE_BYTES", sample_bytes * (len(expected) - 1))
    assert not isinstance(feed.validation_feed(params, coco_crops), MaterializedDataset)


@pytest.mark.timeout(300)
def test_feed_through_streaming_split_follows_epochs(coco_crops, train_rows_kept):
    """As Ray Train's get_dataset_shard: one dataset, split in two, iterated per epoch."""
    import ray

    params = Params()
    splits = feed.train_dataset(params, coco_crops, epoch=0).streaming_split(2, equal=False)

    @ray.remote(num_cpus=0)
    def consume(iterator, epochs: int) -> list[dict[int, float]]:
        return [
            {
                int(a): float(img.sum())
                for batch in iterator.iter_torch_batches(batch_size=4)
                for a, img in zip(batch["ann_id"], batch["images"], strict=True)
            }
            for _ in range(epochs)
        ]

    per_split = ray.get([consume.remote(it, 2) for it in splits])
    for epoch in range(2):
        merged = {k: v for split in per_split for k, v in split[epoch].items()}
        pinned = feed.train_dataset(params, coco_crops, epoch=epoch)
        expected = {
            int(a): float(img.sum())
            for b in pinned.iter_batches(batch_size=4)
            for a, img in zip(b["ann_id"], b["images"], strict=True)
        }
        assert merged.keys() == expected.keys()
        for ann_id, value in expected.items():
            assert merged[ann_id] == pytest.approx(value, rel=1e-5)


@pytest.mark.timeout(300)
def test_broken_image_is_skipped_and_reported(local_ray, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(COCO / "images", images)
    (images / "000000040083.jpg").write_bytes(b"\xff\xd8 truncated")
    rows = coco_rows()
    for split in ("train", "val"):
        write_manifest(rows, tmp_path / "data" / "prepared" / f"{split}.parquet", images)
    summary = crops.run(Params(), tmp_path)
    broken = [row["ann_id"] for row in rows if row["image_id"] == 40083]
    info = summary["splits"]["train"]
    assert info["rows"] == 12 - len(broken) and info["skipped_rows"] == len(broken)
    assert sorted(record["ann_id"] for record in info["skipped"]) == sorted(broken)
    assert info["skipped_by_kind"] == {"undecodable": len(broken)}


# --------------------------------------------------------------------------- processes
def synthetic_workdir(root: Path, images: int) -> None:
    """Enough people on random images that cropping takes a few seconds."""
    rng = np.random.default_rng(0)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for image_id in range(images):
        pixels = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        cv2.imwrite(str(image_dir / f"{image_id}.jpg"), pixels)
        for person in range(3):
            bbox = [float(rng.uniform(0, 200)), float(rng.uniform(0, 100)), 80.0, 120.0]
            center, scale = box_center_scale(bbox)
            rows.append(
                {
                    "image_id": image_id,
                    "ann_id": image_id * 10 + person,
                    "file_name": f"{image_id}.jpg",
                    "width": 320,
                    "height": 240,
                    "bbox": bbox,
                    "center": center,
                    "scale": scale,
                    "keypoints": [0.0] * 51,
                    "num_keypoints": 0,
                    "area": 9600.0,
                    "score": 1.0,
                    "split": "train",
                }
            )
    for split in ("train", "val"):
        write_manifest(rows, root / "data" / "prepared" / f"{split}.parquet", image_dir)
    # data.root: the raw tree the crops stage's DVC deps name (its pixels)
    params = {
        "data": {"root": "images"},
        "crops": {"rows_per_shard": 8},
        "model": {"preset": "sdpose-nano", "input_size": None},  # crops depend on its size
        "ray": {"address": ""},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def _env() -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "CI": "1", "PATH": path}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the crops run and everything it started (its session, then any stragglers)."""
    try:
        started = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        started = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    for child in started:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def staging_folders(workdir: Path, inside: str = "") -> list[Path]:
    """What a crops run is building: `data/.crops.tmp-<pid>/<inside>`."""
    return list((workdir / "data").glob(f".crops.tmp-*/{inside}".rstrip("/")))


def _assert_consistent(workdir: Path) -> None:
    """A summary is only present next to exactly the splits and rows it describes."""
    out = workdir / "data" / "crops"
    summary_path = out / "summary.json"
    if not summary_path.exists():
        return
    summary = json.loads(summary_path.read_text())
    for split, info in summary["splits"].items():
        table, shards = read_split(workdir, split)
        assert len(shards) == info["shards"] and table.num_rows == info["rows"]


@pytest.mark.timeout(900)
def test_crash_in_the_middle_keeps_the_previous_output_then_rerun_completes(tmp_path):
    command = [sys.executable, "-c", "from sdpose.cli import main; main(['crops'])"]
    out = tmp_path / "data" / "crops"
    synthetic_workdir(tmp_path, images=20)
    _run(command, tmp_path)
    assert json.loads((out / "summary.json").read_text())["splits"]["train"]["rows"] == 60

    synthetic_workdir(tmp_path, images=120)  # new manifests: the next run has more to do
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not staging_folders(tmp_path, "train/part-*.parquet"):
            assert process.poll() is None, "the crops run ended before it could be killed"
            assert time.monotonic() < deadline, "no shard was staged in 300 s"
            time.sleep(0.05)
    finally:
        _kill_group(process)
    assert staging_folders(tmp_path), "the kill should have hit the run mid-way"
    _assert_consistent(tmp_path)  # the previous output, untouched
    assert json.loads((out / "summary.json").read_text())["splits"]["train"]["rows"] == 60

    _run(command, tmp_path)
    assert json.loads((out / "summary.json").read_text())["splits"]["train"]["rows"] == 360
    _assert_consistent(tmp_path)
    assert not staging_folders(tmp_path), "the dead run's staging folder is cleaned up"


@pytest.mark.timeout(900)
def test_dvc_reruns_crops_only_when_its_inputs_change(tmp_path):
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"crops": stages["crops"]}}))
    # the code deps (whole package: Ray workers import `sdpose` from the working folder)
    shutil.copytree(
        REPO / "sdpose", tmp_path / "sdpose", ignore=shutil.ignore_patterns("__pycache__")
    )
    synthetic_workdir(tmp_path, images=10)
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        _run(args, tmp_path)

    first = _run(["dvc", "repro", "crops"], tmp_path)
    assert "Running stage 'crops'" in first.stdout
    summary = json.loads((tmp_path / "data" / "crops" / "summary.json").read_text())
    assert summary["splits"]["train"]["rows"] == 30
    shards = sorted((tmp_path / "data" / "crops" / "train").iterdir())

    second = _run(["dvc", "repro", "crops"], tmp_path)
    assert "Stage 'crops' didn't change, skipping" in second.stdout
    assert sorted((tmp_path / "data" / "crops" / "train").iterdir()) == shards

    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["crops"]["jpeg_quality"] = 80
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert load_params(tmp_path / "params.yaml").crops.jpeg_quality == 80
    third = _run(["dvc", "repro", "crops"], tmp_path)
    assert "Running stage 'crops'" in third.stdout

    # new pixels under the same annotations (a re-exported image): the crops are stale
    image = tmp_path / "images" / "0.jpg"
    cv2.imwrite(str(image), 255 - cv2.imread(str(image)))
    fourth = _run(["dvc", "repro", "crops"], tmp_path)
    assert "Running stage 'crops'" in fourth.stdout

    # another model input size: crops made for the old one are never reused
    params["model"]["input_size"] = [256, 192]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    fifth = _run(["dvc", "repro", "crops"], tmp_path)
    assert "Running stage 'crops'" in fifth.stdout
    summary = json.loads((tmp_path / "data" / "crops" / "summary.json").read_text())
    assert summary["input_size"] == [256, 192]


@pytest.mark.timeout(120)
def test_init_ray_reuses_a_running_ray_and_is_quiet_in_ci(local_ray, monkeypatch):
    import ray
    from ray.data import DataContext

    from sdpose.config import RayParams
    from sdpose.ray_runtime import init_ray, ray_session

    monkeypatch.setenv("CI", "true")
    address = ray.get_runtime_context().gcs_address
    info = init_ray(RayParams(address=""))
    assert info["started"] is False and info["address"] == address and info["num_cpus"] == 2
    assert DataContext.get_current().enable_progress_bars is False
    with ray_session(RayParams()) as session:
        assert session["started"] is False
    assert ray.is_initialized(), "a Ray this session did not start must outlive it"
