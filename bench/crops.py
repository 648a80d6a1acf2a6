"""Crops stage and augmentation feed: throughput against their baselines, and peak memory.

Prints
1. crops/s of the Ray Data stage (`sdpose.data.crops.run`, 2 CPUs, Ray already up) and of
   a single-process OpenCV loop doing the same decode, crop, encode and Parquet write on the
   same >= 2,000 instances, and their ratio (goal >= 1.6 on two cores);
2. augmented samples/s of one epoch of the feed (`sdpose.data.feed.train_dataset`, consumed
   with iter_torch_batches) next to the training rate of sdpose-t (forward of all cycles,
   SDPose loss, backward, Adam; batch 32, 2 torch threads) and their ratio (goal >= 2);
3. peak memory (PSS of the whole process tree: driver, Ray services and workers) of the
   crops stage and of one feed epoch at two dataset sizes, each in a fresh process.
Every rate comes with its CPU seconds too: on a shared machine wall-clock ratios say more
about the neighbours than about the code, while CPU time does not (see `Meter`).

The images are synthetic COCO-like scenes made here (640x480 JPEGs, 1 to 4 people each):
the repository's synth stage draws smaller images, and this bench must not depend on it.
Usage: python bench/crops.py [--instances 2000] [--sizes 4500,13500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
from measure import CPUS, Meter, PeakMemory, training_meter, tree_pss_mb

from sdpose.config import Params
from sdpose.data import crop_rows, crops, feed
from sdpose.data.manifest import write_manifest

IMAGE_W, IMAGE_H = 640, 480
UNIQUE_IMAGES = 500
OBJECT_STORE_MB = 1024  # memory runs only
# one train sample: uint8 image (256 x 192 x 3) + float32 targets (17 x 64 x 48), weights (17)
SAMPLE_BYTES = 256 * 192 * 3 + 4 * (17 * 64 * 48 + 17)


# --------------------------------------------------------------------------- data
def make_dataset(workdir: Path, instances: int, seed: int = 0) -> int:
    """COCO-like images and manifests with at least `instances` people; returns the count.

    At most UNIQUE_IMAGES files are drawn; later image ids reuse them under their own id,
    which costs the stage the same decode per image id but keeps big runs quick to set up.
    """
    rng = np.random.default_rng(seed)
    image_dir = workdir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    image_id = 0
    while len(rows) < instances:
        name = f"{image_id % UNIQUE_IMAGES:08d}.jpg"
        if image_id < UNIQUE_IMAGES:
            cv2.imwrite(str(image_dir / name), scene(rng), [cv2.IMWRITE_JPEG_QUALITY, 90])
        for _ in range(int(rng.integers(1, 5))):
            rows.append(person_row(rng, image_id, len(rows) + 1, name))
        image_id += 1
    order = rng.permutation(len(rows))  # a manifest need not be grouped by image
    rows = [rows[i] for i in order]
    prepared = workdir / "data" / "prepared"
    write_manifest(rows, prepared / "train.parquet", image_dir)
    write_manifest(rows[:32], prepared / "val.parquet", image_dir)
    return len(rows) + 32


def scene(rng: np.random.Generator) -> np.ndarray:
    """Gradient, textured blobs and noise: JPEG sizes and decode times like real photos."""
    ys, xs = np.mgrid[0:IMAGE_H, 0:IMAGE_W]
    image = np.stack([xs * 255 // IMAGE_W, ys * 255 // IMAGE_H, (xs + ys) % 256], -1)
    image = np.ascontiguousarray(image.astype(np.uint8))
    for _ in range(12):
        centre = (int(rng.integers(0, IMAGE_W)), int(rng.integers(0, IMAGE_H)))
        axes = (int(rng.integers(8, 90)), int(rng.integers(8, 90)))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    return cv2.add(image, rng.integers(0, 24, image.shape, dtype=np.uint8))


def person_row(rng: np.random.Generator, image_id: int, ann_id: int, name: str) -> dict:
    """A person box (COCO-like size spread) with 17 labelled joints inside it."""
    height = float(rng.uniform(60, 420))
    width = height * float(rng.uniform(0.35, 0.7))
    x, y = float(rng.uniform(0, IMAGE_W - width)), float(rng.uniform(0, IMAGE_H - height))
    joints = np.stack([rng.uniform(x, x + width, 17), rng.uniform(y, y + height, 17),
                       np.full(17, 2.0)], 1)  # fmt: skip
    box_w, box_h = max(width, height * 0.75), max(height, width / 0.75)
    return {"image_id": image_id, "ann_id": ann_id, "file_name": name, "width": IMAGE_W,
            "height": IMAGE_H, "bbox": [x, y, width, height],
            "center": [x + width / 2, y + height / 2], "scale": [box_w * 1.25, box_h * 1.25],
            "keypoints": joints.ravel().tolist(), "num_keypoints": 17,
            "area": width * height, "score": 1.0, "split": "train"}  # fmt: skip


# --------------------------------------------------------------------------- throughput
def opencv_loop(workdir: Path, params: Params, out: Path) -> int:
    """The baseline: one process, image by image, same crop function, same shard size."""
    rows = 0
    for split in ("train", "val"):
        manifest = workdir / "data" / "prepared" / f"{split}.parquet"
        table = pq.read_table(manifest, columns=crop_rows.MANIFEST_COLUMNS).sort_by("image_id")
        image_root = crops.manifest_image_root(manifest, workdir)
        cropped, _ = crop_rows.crop_rows(table, image_root, params.crops)
        (out / split).mkdir(parents=True, exist_ok=True)
        size = params.crops.rows_per_shard
        options = crops.parquet_write_options(params.crops.encoding)
        for index, offset in enumerate(range(0, cropped.num_rows, size)):
            shard = out / split / f"part-{index:05d}.parquet"
            pq.write_table(cropped.slice(offset, size), shard, **options)
        rows += cropped.num_rows
    return rows


def feed_epoch(workdir: Path, params: Params, epoch: int) -> int:
    """Consume one epoch as a training worker does; returns the number of samples."""
    samples = 0
    dataset = feed.train_dataset(params, workdir, epoch)
    for batch in dataset.iter_torch_batches(batch_size=32):
        samples += len(batch["ann_id"])
    return samples


# --------------------------------------------------------------------------- memory
def memory_child(instances: int) -> None:
    """Run in a fresh process: peak memory of the crops stage, then of one feed epoch.

    Ray's object store is capped at OBJECT_STORE_MB, as on a small worker node: a pipeline
    that materialised its data would have to spill or fail; a streaming one stays flat.
    """
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows = make_dataset(workdir, instances)
        ray.init(address="local", num_cpus=CPUS, include_dashboard=False,
                 logging_level="WARNING", object_store_memory=OBJECT_STORE_MB << 20)  # fmt: skip
        try:
            idle = tree_pss_mb(os.getpid())[0]
            with PeakMemory() as stage:
                summary = crops.run(Params(), workdir)
            with PeakMemory() as epoch:
                samples = feed_epoch(workdir, Params(), 0)
        finally:
            ray.shutdown()
    shard_mb = sum(info["bytes"] for info in summary["splits"].values()) / 2**20
    tensor_mb = samples * SAMPLE_BYTES / 2**20
    print(json.dumps({"rows": rows, "idle": idle, "crops": stage.peak, "feed": epoch.peak,
                      "crops_store": stage.store, "feed_store": epoch.store,
                      "shards": shard_mb, "tensors": tensor_mb}))  # fmt: skip


def measure_memory(sizes: list[int]) -> list[dict]:
    results = []
    for size in sizes:
        done = subprocess.run([sys.executable, __file__, "--memory-child", str(size)],
                              capture_output=True, text=True, timeout=1800)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"memory run for {size} instances failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


# --------------------------------------------------------------------------- main
def throughput(instances: int) -> None:
    import ray

    params = Params.model_validate({"ray": {"address": ""}})
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows = make_dataset(workdir, instances)
        with Meter() as loop:
            loop_rows = opencv_loop(workdir, params, workdir / "loop")
        ray.init(address="local", num_cpus=CPUS, include_dashboard=False, logging_level="WARNING")
        try:
            crops.run(params, workdir)  # warm-up: worker processes and their imports
            with Meter() as stage:
                stage_rows = crops.run(params, workdir)["rows"]
            feed_epoch(workdir, params, 0)  # warm-up
            with Meter() as epoch:
                samples = feed_epoch(workdir, params, 1)
        finally:
            ray.shutdown()
    train, batches = training_meter(), 3 * 32
    assert loop_rows == stage_rows == rows, (loop_rows, stage_rows, rows)
    print(f"crops, {rows} instances ({params.crops.encoding} q{params.crops.jpeg_quality}):")
    print(f"  {'':28}{'crops/s':>9}{'wall s':>8}{'CPU s':>8}")
    print(
        f"  {'single-process OpenCV loop':28}{rows / loop.wall:9.1f}{loop.wall:8.1f}{loop.cpu:8.1f}"
    )
    print(f"  {f'Ray Data stage, {CPUS} CPUs':28}{rows / stage.wall:9.1f}{stage.wall:8.1f}"
          f"{stage.cpu:8.1f}")  # fmt: skip
    print(
        f"  ratio {loop.wall / stage.wall:.2f} wall-clock (goal >= 1.6); "
        f"{CPUS * loop.cpu / stage.cpu:.2f} on {CPUS} idle cores by CPU time"
    )
    print(f"feed: one epoch of {samples} augmented samples, {CPUS} CPUs, vs sdpose-t training:")
    print(
        f"  feed                 {samples / epoch.wall:7.1f} samples/s wall, "
        f"{1000 * epoch.cpu / samples:6.1f} CPU ms/sample"
    )
    print(
        f"  sdpose-t train step  {batches / train.wall:7.1f} samples/s wall, "
        f"{1000 * train.cpu / batches:6.1f} CPU ms/sample (batch 32, {CPUS} threads)"
    )
    print(
        f"  ratio {samples / epoch.wall / (batches / train.wall):.1f} wall-clock, "
        f"{train.cpu / batches / (epoch.cpu / samples):.1f} by CPU time (goal >= 2)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    # both above 2 CPUs x 4 blocks x 512 rows, where crop tasks reach their full shard size
    parser.add_argument("--sizes", default="4500,13500", help="dataset sizes for peak memory")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("CI", "1")  # no progress bars in a benchmark log
    if args.memory_child:
        memory_child(args.memory_child)
        return
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores (other work skews every rate)")
    throughput(args.instances)
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"peak memory, MB (PSS of driver + Ray + workers, fresh process per size; 'store' "
          f"is the part in Ray's object store, capped at {OBJECT_STORE_MB} MB):")  # fmt: skip
    print(f"  {'instances':>10}{'shards':>8}{'epoch tensors':>15}{'idle':>7}"
          f"{'crops (store)':>15}{'feed (store)':>15}")  # fmt: skip
    for r in measure_memory(sizes):
        print(f"  {r['rows']:>10}{r['shards']:>8.0f}{r['tensors']:>15.0f}{r['idle']:>7.0f}"
              f"{r['crops']:>8.0f} ({r['crops_store']:>4.0f}){r['feed']:>8.0f} "
              f"({r['feed_store']:>4.0f})")  # fmt: skip


if __name__ == "__main__":
    main()
