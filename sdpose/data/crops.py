"""Stage `crops`: prepared manifests -> Parquet shards of context crops, with Ray Data.

Decoding full images is the first bottleneck of a top-down pose trainer, so it happens once,
here: each image is decoded once however many people it holds, and each person becomes a
crop around its box with room (`crops.context` x the box) for the train-time shift, scale
and rotation. The per-epoch augmentation then only decodes a small crop (`sdpose.data.feed`).

Crop row (CROP_SCHEMA): ids; the crop (`encoding` jpeg or raw BGR bytes) and its size; the
affine `crop_to_image` (2x3, crop pixels -> original pixels); keypoints in crop pixels
(x, y, v; unlabelled joints stay 0, 0, 0); the box `center` and `scale` in original pixels
(evaluation maps predictions back with them); area, score, num_keypoints.

Safety: all splits and `summary.json` are written under a staging folder that replaces
`data/crops/` only when everything is complete; a crash leaves the previous output or none.
An image that cannot be read is skipped and reported in the summary, never fatal.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import SaveMode
from ray.data.datasource import FilenameProvider

from sdpose import console
from sdpose.config import CropsParams, Params
from sdpose.core.paths import (
    remove_abandoned_staging,
    resolve,
    staged_directory,
    write_text_atomic,
)
from sdpose.data.manifest import META_IMAGE_ROOT, META_VERSION, SCHEMA_VERSION, ManifestError

SPLITS = ("train", "val", "val_det")  # val_det only when prepare wrote detector boxes
OPTIONAL_SPLITS = ("val_det",)
SKIPPED = "_skipped"  # staging subfolder of per-row skip records, folded into the summary
MAX_LISTED_SKIPS = 1000  # the summary counts every skip but lists only the first ones
# Small splits are cut into this many blocks per CPU at least, so no CPU waits on another.
TASKS_PER_CPU = 4


# A stored crop keeps the original resolution unless the box is taller than twice the
# network input's height (`max_box_height`), so even the smallest train-time scale (0.65)
# sees no upsampling of lost detail, while a 900-pixel person does not cost 5 MB per crop
# and a 128x96 model does not decode pixels it never sees.
INPUT_HEIGHTS_PER_BOX = 2
MAX_BOX_HEIGHT = 512.0  # for the paper's 256x192 input


def max_box_height(input_size: tuple[int, int]) -> float:
    """The tallest box stored at full resolution, for a model input (h, w)."""
    return float(INPUT_HEIGHTS_PER_BOX * input_size[0])

MANIFEST_COLUMNS = ["image_id", "ann_id", "file_name", "width", "height", "center", "scale",
                    "keypoints", "num_keypoints", "area", "score"]  # fmt: skip

CROP_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("ann_id", pa.int64(), nullable=False),
        pa.field("crop", pa.binary(), nullable=False),
        pa.field("encoding", pa.string(), nullable=False),  # jpeg | raw (H x W x 3 BGR)
        pa.field("crop_height", pa.int32(), nullable=False),
        pa.field("crop_width", pa.int32(), nullable=False),
        pa.field("crop_to_image", pa.list_(pa.float64(), 6), nullable=False),  # 2x3 row-major
        pa.field("keypoints", pa.list_(pa.float32(), 51), nullable=False),  # crop px, x y v
        pa.field("center", pa.list_(pa.float32(), 2), nullable=False),  # original px
        pa.field("scale", pa.list_(pa.float32(), 2), nullable=False),  # original px
        pa.field("num_keypoints", pa.int32(), nullable=False),
        pa.field("area", pa.float32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]
)


# --------------------------------------------------------------------------- geometry
def cut_crop(
    image: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    context: float,
    max_height: float = MAX_BOX_HEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """The context window around a box, zero outside the image; and its crop -> image affine.

    image (H, W, C) uint8; center, scale (2,) original pixels. Returns the crop (h, w, C)
    and the (2, 3) affine taking crop pixel coordinates to original ones. At full
    resolution the window starts on a whole pixel, so the crop is an exact copy (no
    resampling blur before the train-time warp). A box taller than `max_height` is
    resampled bilinearly, as mmpose samples every box
    from the full image.
    """
    win_w = max(1, math.ceil(context * float(scale[0])))
    win_h = max(1, math.ceil(context * float(scale[1])))
    x0 = round(float(center[0]) - win_w / 2)
    y0 = round(float(center[1]) - win_h / 2)
    ratio = min(1.0, max_height / float(scale[1]))
    if ratio < 1.0:
        out_w, out_h = max(1, round(win_w * ratio)), max(1, round(win_h * ratio))
        step_x, step_y = win_w / out_w, win_h / out_h
        to_image = np.array([[step_x, 0.0, x0], [0.0, step_y, y0]])
        crop = cv2.warpAffine(
            image, cv2.invertAffineTransform(to_image), (out_w, out_h), flags=cv2.INTER_LINEAR
        )
        return crop, to_image
    window = np.zeros((win_h, win_w, image.shape[2]), dtype=image.dtype)
    src_x, src_y = max(x0, 0), max(y0, 0)
    end_x, end_y = min(x0 + win_w, image.shape[1]), min(y0 + win_h, image.shape[0])
    if end_x > src_x and end_y > src_y:
        window[src_y - y0 : end_y - y0, src_x - x0 : end_x - x0] = image[src_y:end_y, src_x:end_x]
    return window, np.array([[1.0, 0.0, x0], [0.0, 1.0, y0]])


def keypoints_to_crop(keypoints: np.ndarray, crop_to_image: np.ndarray) -> np.ndarray:
    """COCO keypoints (K, 3) in original pixels -> crop pixels; unlabelled joints stay 0."""
    labelled = keypoints[:, 2] > 0
    out = keypoints.astype(np.float64).copy()
    scale = np.diag(crop_to_image[:, :2])  # crops are axis-aligned: a diagonal linear part
    out[:, :2] = (keypoints[:, :2] - crop_to_image[:, 2]) / scale
    out[~labelled] = 0.0
    return out


# --------------------------------------------------------------------------- encoding
def encode_crop(crop: np.ndarray, params: CropsParams) -> bytes:
    """BGR crop (OpenCV's order) -> bytes per `crops.encoding`: jpeg, or raw BGR pixels."""
    if params.encoding == "raw":
        return np.ascontiguousarray(crop).tobytes()
    ok, buffer = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, params.jpeg_quality])
    if not ok:
        raise ValueError(f"cv2 could not JPEG-encode a crop of shape {crop.shape}")
    return buffer.tobytes()


def decode_crop(data: bytes, height: int, width: int, encoding: str) -> np.ndarray:
    """Bytes of a crop row -> (height, width, 3) uint8 BGR."""
    if encoding == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)
    crop = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if crop is None or crop.shape[:2] != (height, width):
        raise ValueError(f"a {encoding} crop of {height}x{width} pixels does not decode")
    return crop


# --------------------------------------------------------------------------- rows
def crop_rows(
    rows: pa.Table, image_root: Path, params: CropsParams, max_height: float = MAX_BOX_HEIGHT
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Manifest rows -> crop rows (CROP_SCHEMA) and skipped rows with reasons.

    Rows are grouped by image_id so each image is decoded once for all its people.
    """
    people = rows.select(["image_id", "ann_id", "file_name", "width", "height",
                          "num_keypoints", "area", "score"]).to_pylist()  # fmt: skip
    centers, scales = fixed_list_column(rows, "center", 2), fixed_list_column(rows, "scale", 2)
    keypoints = fixed_list_column(rows, "keypoints", 51).reshape(-1, 17, 3)
    out: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for members in _rows_by_image(rows.column("image_id").to_numpy()):
        first = people[members[0]]
        path = image_root / first["file_name"]
        try:
            image = read_image(path, first["width"], first["height"])
        except ImageError as error:
            skipped += [_skip_record(people[i], path, error) for i in members]
            continue
        for i in members:
            if not (scales[i] > 0).all():
                empty = ImageError("empty_box", f"box scale {scales[i].tolist()} has no area")
                skipped.append(_skip_record(people[i], path, empty))
                continue
            crop, to_image = cut_crop(image, centers[i], scales[i], params.context, max_height)
            out.append({**people[i], "crop": encode_crop(crop, params),
                        "encoding": params.encoding, "crop_height": crop.shape[0],
                        "crop_width": crop.shape[1], "crop_to_image": to_image.ravel(),
                        "keypoints": keypoints_to_crop(keypoints[i], to_image).ravel(),
                        "center": centers[i], "scale": scales[i]})  # fmt: skip
    return pa.Table.from_pylist(out, schema=CROP_SCHEMA), skipped


class ImageError(ValueError):
    """An image that cannot be used; `kind` groups the reasons in the summary."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_image(path: Path, width: int, height: int) -> np.ndarray:
    """Decode an image (BGR) of the size the manifest says, or raise ImageError."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageError("unreadable", f"cannot read {path}: {error}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageError("undecodable", f"{path} is not a decodable image ({data.size} bytes)")
    if image.shape[:2] != (height, width):
        raise ImageError(
            "size_mismatch",
            f"{path} is {image.shape[1]}x{image.shape[0]} pixels but the manifest says "
            f"{width}x{height}",
        )
    return image


def _rows_by_image(image_ids: np.ndarray) -> list[np.ndarray]:
    """Row indices grouped by image id, in order of first appearance of each image."""
    if len(image_ids) == 0:
        return []
    order = np.argsort(image_ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, image_ids[order][1:] != image_ids[order][:-1]])
    groups = np.split(order, starts[1:])
    return sorted(groups, key=lambda members: members[0])


def fixed_list_column(rows: pa.Table, name: str, size: int) -> np.ndarray:
    """A fixed-size-list column (center, keypoints, ...) as an (N, size) float64 array."""
    column = rows.column(name).combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, size)


def _skip_record(person: dict[str, Any], path: Path, error: ImageError) -> dict[str, Any]:
    return {"image_id": person["image_id"], "ann_id": person["ann_id"],
            "file_name": str(path), "kind": error.kind, "reason": str(error)}  # fmt: skip


# --------------------------------------------------------------------------- Ray Data
def crop_split(manifest: Path, image_root: Path, out_dir: Path, skip_dir: Path,
               params: CropsParams, max_height: float = MAX_BOX_HEIGHT) -> None:  # fmt: skip
    """One split through Ray Data: image-aligned manifest blocks -> crop -> Parquet shards.

    Ray Data's groupby would shuffle every row through all-to-all tasks to keep an image's
    people together; a manifest row is ~250 bytes, so sorting it here (35 MB at COCO size)
    is far cheaper and just as exact. Each block holds whole images and at most
    `rows_per_shard` rows; map and write fuse, so one task crops and writes one shard.
    """
    import ray

    blocks = image_aligned_blocks(manifest, params.rows_per_shard, _cluster_cpus())
    if not blocks:
        out_dir.mkdir(parents=True, exist_ok=True)  # an empty split is still a split
        return
    ds = ray.data.from_arrow(blocks).map_batches(
        _crop_block,
        batch_size=None,  # a whole block: splitting it could split an image's people
        batch_format="pyarrow",
        fn_kwargs={"image_root": str(image_root), "params": params, "skip_dir": str(skip_dir),
                   "max_height": max_height},  # fmt: skip
    )
    ds.write_parquet(
        str(out_dir),
        filename_provider=_ShardNames(),
        # our own fresh staging folder; OVERWRITE lets shard names skip Ray's write uuid
        mode=SaveMode.OVERWRITE,
        **parquet_write_options(params.encoding),
    )


def parquet_write_options(encoding: str) -> dict[str, Any]:
    """Every crop is unique and JPEG bytes do not compress: no dictionary, no codec for them."""
    others = [name for name in CROP_SCHEMA.names if name != "crop"]
    compression = dict.fromkeys(others, "snappy")
    compression["crop"] = "none" if encoding == "jpeg" else "snappy"
    return {"use_dictionary": others, "compression": compression}


def image_aligned_blocks(manifest: Path, max_rows: int, num_cpus: int) -> list[pa.Table]:
    """The manifest sorted by image, cut at image boundaries into blocks of <= max_rows rows.

    Blocks are made smaller when that is needed to give every CPU several of them; only an
    image with more than max_rows people makes a bigger block (its people stay together).
    """
    table = pq.read_table(manifest, columns=MANIFEST_COLUMNS).sort_by("image_id")
    if table.num_rows == 0:
        return []
    least_blocks = TASKS_PER_CPU * max(num_cpus, 1)
    block_rows = max(1, min(max_rows, math.ceil(table.num_rows / least_blocks)))
    image_ids = table.column("image_id").to_numpy()
    image_starts = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]])
    image_ends = np.r_[image_starts[1:], table.num_rows]
    blocks, start = [], 0
    for image_start, image_end in zip(image_starts[1:], image_ends[1:], strict=True):
        if image_end - start > block_rows:  # this image would overflow the block: cut before it
            blocks.append(table.slice(start, image_start - start))
            start = image_start
    blocks.append(table.slice(start))
    return blocks


def _cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def _crop_block(
    rows: pa.Table, image_root: str, params: CropsParams, skip_dir: str, max_height: float
) -> pa.Table:
    """Ray Data UDF: rows of whole images -> crop rows; skipped rows go to small JSON files.

    A file per skipped row, named by its ann_id, so a retried task rewrites the same files.
    """
    cv2.setNumThreads(1)  # Ray runs one task per CPU: OpenCV's own threads would only fight
    table, skipped = crop_rows(rows, Path(image_root), params, max_height)
    if skipped:
        Path(skip_dir).mkdir(parents=True, exist_ok=True)
        for record in skipped:
            _write_json(Path(skip_dir) / f"ann-{record['ann_id']}.json", record)
    return table


class _ShardNames(FilenameProvider):
    """`part-<task>-<file>.parquet`: docs/ARCHITECTURE.md's `data/crops/<split>/part-*.parquet`."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{task_index:05d}-{{i}}.parquet"  # Ray fills {i} per file of a task


# --------------------------------------------------------------------------- stage
def run(params: Params, workdir: Path) -> dict[str, Any]:
    """Crop every prepared split into `data/crops/<split>/`; returns the summary.

    The whole `data/crops` folder is built under a staging name and swapped in at the end
    (`staged_directory`), splits and summary together: a crash leaves the previous output.
    """
    from sdpose.ray_runtime import ray_session

    workdir = Path(workdir)
    manifests = find_manifests(workdir / "data" / "prepared")
    out_root = workdir / "data" / "crops"
    remove_abandoned_staging(out_root)
    input_size = params.model.resolve().input_size
    max_height = max_box_height(input_size)
    started = time.perf_counter()
    with staged_directory(out_root) as staging, ray_session(params.ray) as ray_info:
        for done, (split, manifest) in enumerate(manifests.items(), start=1):
            image_root = manifest_image_root(manifest, workdir)
            crop_split(manifest, image_root, staging / split, staging / SKIPPED / split,
                       params.crops, max_height)  # fmt: skip
            console.progress("crops (splits)", done, len(manifests))
        seconds = time.perf_counter() - started
        summary = summarize(staging, list(manifests), params.crops, seconds, ray_info)
        # what the feed checks: crops are cut for one model input size
        summary |= {"input_size": list(input_size), "max_box_height": max_height}
        shutil.rmtree(staging / SKIPPED, ignore_errors=True)
        _write_json(staging / "summary.json", summary)
    return summary


def find_manifests(prepared: Path) -> dict[str, Path]:
    """The manifests to crop: train and val must exist, val_det is optional."""
    manifests = {split: prepared / f"{split}.parquet" for split in SPLITS}
    for split, path in list(manifests.items()):
        if path.exists():
            continue
        if split in OPTIONAL_SPLITS:
            del manifests[split]
        else:
            raise ManifestError(f"{path}: manifest not found; run `sdpose prepare` first")
    return manifests


def manifest_image_root(manifest: Path, workdir: Path) -> Path:
    """The image root in a manifest's metadata (relative roots are relative to workdir)."""
    try:
        metadata = pq.read_schema(manifest).metadata or {}
    except (OSError, pa.ArrowInvalid) as error:
        raise ManifestError(f"{manifest}: not a readable Parquet manifest ({error})") from error
    version = metadata.get(META_VERSION, b"").decode()
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{manifest}: manifest schema version {version or 'missing'!r}, expected "
            f"{SCHEMA_VERSION!r}; rerun `sdpose prepare`"
        )
    root = Path(metadata.get(META_IMAGE_ROOT, b".").decode())
    return resolve(workdir, root)


def summarize(staging: Path, splits: list[str], params: CropsParams, seconds: float,
              ray_info: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Rows, shards, bytes and skipped rows (with reasons) of each staged split."""
    summary: dict[str, Any] = {"encoding": params.encoding, "splits": {}}
    for split in splits:
        shards = sorted((staging / split).glob("part-*.parquet"))
        skipped = [json.loads(path.read_text())
                   for path in sorted((staging / SKIPPED / split).glob("*.json"))]  # fmt: skip
        kinds: dict[str, int] = {}
        for record in skipped:
            kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
        summary["splits"][split] = {
            "rows": sum(pq.ParquetFile(shard).metadata.num_rows for shard in shards),
            "shards": len(shards),
            "bytes": sum(shard.stat().st_size for shard in shards),
            "skipped_rows": len(skipped),
            "skipped_by_kind": kinds,
            "skipped": skipped[:MAX_LISTED_SKIPS],
        }
    summary["rows"] = sum(info["rows"] for info in summary["splits"].values())
    summary["seconds"] = round(seconds, 3)
    summary["crops_per_s"] = round(summary["rows"] / seconds, 2) if seconds > 0 else None
    summary["ray"] = {key: ray_info[key] for key in ("address", "num_cpus")}
    return summary


def _write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a retried task never leaves half a file."""
    write_text_atomic(path, json.dumps(value, indent=2) + "\n")
