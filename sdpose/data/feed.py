"""The Ray Datasets that feed training and validation from the crop shards.

train: read shards -> map_batches(decode crop, random shift/flip/half-body/scale/rotation,
warp to the model's input size, normalise, encode the head's targets). The dataset is
lazy, so every pass
re-executes the random step: Ray Train's `get_dataset_shard("train").iter_torch_batches()`
in each epoch gets fresh augmentation without materialising it (Ray's guidance for random
transforms). A split small enough keeps its stored crop rows in the object store, so a pass
starts at the augmentation (`_train_rows`); a larger one streams from the files, bounded by
Ray's object-store budget, not the dataset size.

Seeding: sample i of epoch e draws from rng(train.seed, e, ann_id_i), so a sample's
augmentation repeats exactly whatever the block layout or worker count. e = `epoch` + the
number of earlier complete passes over this Dataset object (Ray Data's own execution index,
which it also uses to reseed file shuffles). Build with `epoch=start_epoch` when resuming
(also after a Ray Train worker-group restart: pass a callable that rebuilds it); `take` or
`show` on the same object count as passes. The order (of shards, or of a cached split's
blocks) is reseeded per pass; rows within a block come grouped by image, so consumers should
mix with `local_shuffle_buffer_size`.

Batch columns: images, target (N, 17, *O) float32 (the head's: O = H x W heatmap or Wx + Hy
SimCC bins, `sdpose.core.codecs`), target_weight (N, 17) float32, ann_id
(N,) int64; validation adds center, scale (N, 2) original pixels, image_id, score, area.
Train images are (N, Hi, Wi, 3) uint8 BGR, a quarter of float32's bytes through the object
store; the worker normalises them (`core.inputs.normalize_tensor`) into a channels-last
tensor, the layout in which the CPU convolutions run fastest. Validation images are
(N, 3, Hi, Wi) float32 ImageNet-normalised RGB, what every inference path takes. The sizes
are the model's (`codec_for_labels`), and the crops must have been cut for that
input size (`check_crop_resolution`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pyarrow as pa

from sdpose.config import AugmentParams, Params
from sdpose.core.codecs import Codec, codec_for_labels
from sdpose.core.errors import InputError, MissingInputError
from sdpose.core.geometry import apply_affine, invert_affine
from sdpose.core.inputs import normalize_images
from sdpose.core.paths import CROPS_DIR
from sdpose.data.augment import (
    AffineToInput,
    Sample,
    apply_transforms,
    sample_rng,
    train_transforms,
)
from sdpose.data.crop_rows import decode_crop, fixed_list_column

if TYPE_CHECKING:
    import ray.data

# Ray is imported where it is used (`# lazy`): ray.data costs 1.0 s at import, and the
# evaluation and export stages read val crops through this module without Ray.

BATCH_ROWS = 128  # rows per block and augmentation task: per-task overhead amortised
NUM_KEYPOINTS = 17
BLOCK_BYTES = 16 << 20
CACHE_BYTES = 1 << 30  # what a split may hold in the object store


class CropResolutionError(InputError):
    """Crops on disk were cut for another model input size than the configured one."""


def sample_bytes(codec: Codec) -> int:
    """One validation sample as the feed emits it: float32 image and target, small columns."""
    in_h, in_w = codec.input_size
    return 4 * (3 * in_h * in_w + NUM_KEYPOINTS * math.prod(codec.output_shape)) + 1024


def crop_shards(workdir: Path, split: str) -> list[str]:
    """The shard files of a split, refusing output that `sdpose crops` did not finish."""
    root = Path(workdir) / CROPS_DIR
    if split not in crops_summary(workdir).get("splits", {}):
        raise MissingInputError(f"{root / 'summary.json'}: no split {split!r}; run `sdpose crops`")
    return [str(path) for path in sorted((root / split).glob("part-*.parquet"))]


def crops_summary(workdir: Path) -> dict:
    """`data/crops/summary.json`, written last by `sdpose crops`."""
    summary = Path(workdir) / CROPS_DIR / "summary.json"
    if not summary.exists():
        raise MissingInputError(
            f"{summary} missing: crops are absent or incomplete; run `sdpose crops`"
        )
    return json.loads(summary.read_text())


def check_crop_resolution(workdir: Path, codec: Codec) -> None:
    """Refuse crops cut for another input size: their stored resolution was chosen for it.

    `sdpose crops` stores each crop at most at twice the model's input height
    (`sdpose.data.crop_rows.max_box_height`), so crops made for 128x96 would starve a
    256x192 model of detail, and crops made for 256x192 cost a 128x96 feed four times the decoding.
    """
    summary = crops_summary(workdir)
    made_for = summary.get("input_size")
    if made_for is None or tuple(made_for) != tuple(codec.input_size):
        raise CropResolutionError(
            f"{Path(workdir) / 'data' / 'crops' / 'summary.json'}: the crops were cut for model "
            f"input {made_for or 'of an older version'}, the model takes "
            f"{list(codec.input_size)} (model.preset / model.input_size); rerun `sdpose crops` "
            "(`dvc repro` does)"
        )


def train_dataset(params: Params, workdir: Path, epoch: int = 0) -> ray.data.Dataset:
    """Augmented training samples; the first pass is `epoch`, each later pass the next."""
    codec = codec_for_labels(params.model.resolve(), params.train)
    check_crop_resolution(workdir, codec)
    ds = _train_rows(crop_shards(workdir, "train"), _mix(params.train.seed, epoch))
    ds = ds.map_batches(
        augment_batch,
        batch_size=BATCH_ROWS,
        batch_format="pyarrow",
        fn_kwargs={
            "augment": params.train.augment,
            "seed": params.train.seed,
            "epoch": epoch,
            "codec": codec,
        },
    )
    ds.context.execution_options = ingest_options(params)
    return _small_block_bytes(ds)


def ingest_options(params: Params) -> ray.data.ExecutionOptions:
    """Ray Data's options for the train feed: at most `ray.feed_memory_mb` of object store
    ahead of the trainers. Ray Train replaces a dataset's options with its own unless
    given these (`DataConfig(execution_options=...)`), so the launcher passes them too."""
    from ray.data import ExecutionOptions, ExecutionResources  # lazy: see the note on Ray

    budget = ExecutionResources.for_limits(object_store_memory=params.ray.feed_memory_mb << 20)
    return ExecutionOptions(resource_limits=budget)


def _train_rows(shards: list[str], seed: int) -> ray.data.Dataset:
    """The stored crop rows in blocks of a batch, in an order reseeded on every pass.

    Crops that fit in CACHE_BYTES are read once into the object store: each epoch then
    starts at the augmentation, not at listing and reading files (764 crops at 128x96:
    1.1 s a pass instead of 2.2 s, the first batch after 0.13 s instead of 1.35 s; the
    throughput issue's profile in docs/training.md). A larger split streams from the files,
    whose order is shuffled per pass.
    """
    import ray  # lazy: see the note on Ray
    from ray.data import FileShuffleConfig, RandomSeedConfig  # lazy: see the note on Ray

    if sum(Path(shard).stat().st_size for shard in shards) > CACHE_BYTES:
        return _in_small_blocks(ray.data.read_parquet(shards, shuffle=FileShuffleConfig(seed=seed)))
    cached = _in_small_blocks(ray.data.read_parquet(shards)).materialize()
    return cached.randomize_block_order(
        seed=RandomSeedConfig(seed=seed, reseed_after_execution=True)
    )


def val_dataset(params: Params, workdir: Path, split: str = "val") -> ray.data.Dataset:
    """Validation samples (`val`, or `val_det` for detector boxes): warped, not augmented."""
    import ray  # lazy: see the note on Ray

    codec = codec_for_labels(params.model.resolve(), params.train)
    check_crop_resolution(workdir, codec)
    ds = ray.data.read_parquet(crop_shards(workdir, split))
    ds = _in_small_blocks(ds).map_batches(
        val_batch,
        batch_size=BATCH_ROWS,
        batch_format="pyarrow",
        fn_kwargs={"codec": codec},
    )
    return _small_block_bytes(ds)


def validation_feed(params: Params, workdir: Path, split: str = "val") -> ray.data.Dataset:
    """`val_dataset` for the epochs of a training run: computed once when it is small.

    The validation samples never change, yet a lazy dataset decodes and warps them again on
    every epoch; for a small split that costs Ray Data's start-up, not work (120 crops: 5 s
    streamed, 0.03 s from the object store, against 0.3 s of decoding). A split whose samples
    fit in CACHE_BYTES is materialised; a larger one (COCO val: ~5 GB) streams.
    """
    ds = val_dataset(params, workdir, split)
    codec = codec_for_labels(params.model.resolve(), params.train)
    if split_rows(workdir, split) * sample_bytes(codec) <= CACHE_BYTES:
        return ds.materialize()
    return ds


def split_rows(workdir: Path, split: str) -> int:
    """Crops in a split, from the summary `sdpose crops` writes last."""
    crop_shards(workdir, split)  # the same checks and messages
    return int(crops_summary(workdir)["splits"][split]["rows"])


def _in_small_blocks(ds: ray.data.Dataset) -> ray.data.Dataset:
    """Blocks of BATCH_ROWS rows, so every CPU gets augmentation work.

    128 rows, not 32: each block is a task with a fixed cost in Ray Data and the split
    coordinator, and 32-row blocks cost the quick start 7% of its training samples/s.

    Ray packs Parquet files into ~128 MB read tasks: a small dataset would be one block and
    one augmentation task. The streaming repartition splits blocks without a barrier.
    """
    return ds.repartition(target_num_rows_per_block=BATCH_ROWS)


def _small_block_bytes(ds: ray.data.Dataset) -> ray.data.Dataset:
    """Cap this dataset's blocks at BLOCK_BYTES (Ray's default is 128 MB).

    Reads then stream a shard in pieces instead of holding a 128 MB bin per task, and
    batches leave the workers sooner: peak memory per worker drops, whatever the size.
    """
    ds.context.target_max_block_size = BLOCK_BYTES
    return ds


# --------------------------------------------------------------------------- batch UDFs
def augment_batch(
    rows: pa.Table, augment: AugmentParams, seed: int, epoch: int, codec: Codec
) -> dict[str, np.ndarray]:
    """Crop rows -> augmented, normalised inputs with the head's targets (see module doc)."""
    cv2.setNumThreads(1)  # one Ray task per CPU already
    epoch += _pass_index()
    transforms = train_transforms(augment, codec)
    ann_ids = rows.column("ann_id").to_numpy()
    samples = [
        apply_transforms(sample, transforms, sample_rng(seed, epoch, ann_id))
        for sample, ann_id in zip(crop_samples(rows), ann_ids, strict=True)
    ]
    return {**_inputs_and_targets(samples, codec, normalise=False), "ann_id": ann_ids}


def val_batch(rows: pa.Table, codec: Codec) -> dict[str, np.ndarray]:
    """Crop rows -> inputs of the unaugmented box, targets, and what evaluation maps back."""
    cv2.setNumThreads(1)
    warp = AffineToInput(codec)
    samples = [warp(sample) for sample in crop_samples(rows)]
    batch = _inputs_and_targets(samples, codec)
    for name in ("center", "scale"):
        batch[name] = fixed_list_column(rows, name, 2).astype(np.float32)
    for name in ("image_id", "ann_id", "score", "area"):
        batch[name] = rows.column(name).to_numpy()
    return batch


def crop_samples(rows: pa.Table) -> list[Sample]:
    """Crop rows -> augmentation samples in crop pixels (fields: sdpose.data.augment)."""
    keypoints = fixed_list_column(rows, "keypoints", NUM_KEYPOINTS * 3).reshape(
        -1, NUM_KEYPOINTS, 3
    )
    centers, scales = fixed_list_column(rows, "center", 2), fixed_list_column(rows, "scale", 2)
    to_image = fixed_list_column(rows, "crop_to_image", 6).reshape(-1, 2, 3)
    crops = rows.column("crop").to_pylist()
    heights = rows.column("crop_height").to_pylist()
    widths = rows.column("crop_width").to_pylist()
    encodings = rows.column("encoding").to_pylist()
    samples = []
    for i in range(rows.num_rows):
        center, scale = box_in_crop(centers[i], scales[i], to_image[i])
        samples.append(
            {
                "image": decode_crop(crops[i], heights[i], widths[i], encodings[i]),
                "keypoints": keypoints[i, :, :2].copy(),
                "visible": (keypoints[i, :, 2] > 0).astype(np.float64),
                "center": center,
                "scale": scale,
            }
        )
    return samples


def box_in_crop(
    center: np.ndarray, scale: np.ndarray, crop_to_image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A box (original pixels) in crop pixels; crops are axis-aligned, so this is exact."""
    crop_center = apply_affine(center, invert_affine(crop_to_image))
    return crop_center, scale / np.diag(crop_to_image[:, :2])


# --------------------------------------------------------------------------- helpers
def _inputs_and_targets(
    samples: list[Sample], codec: Codec, normalise: bool = True
) -> dict[str, np.ndarray]:
    """Network inputs (normalised, or the uint8 BGR crops) and the head's targets."""
    in_h, in_w = codec.input_size
    if samples:
        images = np.stack([sample["image"] for sample in samples])
        keypoints = np.stack([sample["keypoints"] for sample in samples])
        visible = np.stack([sample["visible"] for sample in samples])
        target, target_weight = codec.encode(keypoints, visible)
    else:
        images = np.zeros((0, in_h, in_w, 3), np.uint8)
        target = np.zeros((0, NUM_KEYPOINTS, *codec.output_shape), np.float32)
        target_weight = np.zeros((0, NUM_KEYPOINTS), np.float32)
    if normalise:
        images = normalize_images(images)
    return {"images": images, "target": target, "target_weight": target_weight}


def _pass_index() -> int:
    """How many complete passes over this Dataset came before the running one.

    Ray Data counts them in the DataContext it ships with every task (private field, also
    behind FileShuffleConfig's reseeding); 0 if a future Ray drops it.
    """
    from ray.data import DataContext  # lazy: see the note on Ray

    return int(getattr(DataContext.get_current(), "_execution_idx", 0))


def _mix(*values: int) -> int:
    """A 31-bit seed from ints, stable across processes (unlike hash() of a str)."""
    return int(np.random.SeedSequence([v & 0xFFFF_FFFF for v in values]).generate_state(1)[0]) >> 1
