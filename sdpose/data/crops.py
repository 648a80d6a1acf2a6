"""Stage `crops`: prepared manifests -> Parquet shards of context crops, with Ray Data.

Decoding full images is the first bottleneck of a top-down pose trainer, so it happens once,
here: each image is decoded once however many people it holds, and each person becomes a
crop around its box with room (`crops.context` x the box) for the train-time shift, scale
and rotation. The per-epoch augmentation then only decodes a small crop (`sdpose.data.feed`).

The rows it writes are `sdpose.data.crop_rows`'s (the crop contract).

Safety: all splits and `summary.json` are written under a staging folder that replaces
`data/crops/` only when everything is complete; a crash leaves the previous output or none.
An image that cannot be read is skipped and reported in the summary, never fatal.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import SaveMode
from ray.data.datasource import FilenameProvider

from sdpose import console
from sdpose.config import CropsParams, Params
from sdpose.core.paths import (
    CROPS_DIR,
    PREPARED_DIR,
    remove_abandoned_staging,
    resolve,
    staged_directory,
    write_text_atomic,
)
from sdpose.data.crop_rows import (
    CROP_SCHEMA,
    MANIFEST_COLUMNS,
    MAX_BOX_HEIGHT,
    crop_rows,
    max_box_height,
)
from sdpose.data.manifest import (
    META_IMAGE_ROOT,
    META_VERSION,
    SCHEMA_VERSION,
    ManifestError,
    read_rows,
)
from sdpose.ray_runtime import ray_session

SPLITS = ("train", "val", "val_det")  # val_det only when prepare wrote detector boxes
OPTIONAL_SPLITS = ("val_det",)
SKIPPED = "_skipped"  # staging subfolder of per-row skip records, folded into the summary
MAX_LISTED_SKIPS = 1000  # the summary counts every skip but lists only the first ones
# Small splits are cut into this many blocks per CPU at least, so no CPU waits on another.
TASKS_PER_CPU = 4


# --------------------------------------------------------------------------- Ray Data
def crop_split(manifest: Path, image_root: Path, out_dir: Path, skip_dir: Path,
               params: CropsParams, max_height: float = MAX_BOX_HEIGHT) -> None:  # fmt: skip
    """One split through Ray Data: image-aligned manifest blocks -> crop -> Parquet shards.

    Ray Data's groupby would shuffle every row through all-to-all tasks to keep an image's
    people together; sorting the image ids here (8 bytes a row, 1.2 MB at COCO size) is far
    cheaper and just as exact. Each block is the positions of whole images' rows, at most
    `rows_per_shard` of them; the task reads those rows itself (the row groups they sit in:
    one or two for a manifest in image order), crops them and writes one shard (map and
    write fuse).
    """

    blocks = image_aligned_blocks(manifest, params.rows_per_shard, _cluster_cpus())
    if not blocks:
        out_dir.mkdir(parents=True, exist_ok=True)  # an empty split is still a split
        return
    positions = [pa.table({"position": block}) for block in blocks]
    ds = ray.data.from_arrow(positions).map_batches(
        _crop_block,
        batch_size=None,  # a whole block: splitting it could split an image's people
        batch_format="pyarrow",
        fn_kwargs={
            "manifest": str(manifest),
            "image_root": str(image_root),
            "params": params,
            "skip_dir": str(skip_dir),
            "max_height": max_height,
        },
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


def image_aligned_blocks(manifest: Path, max_rows: int, num_cpus: int) -> list[np.ndarray]:
    """Row positions of the manifest in image order, cut at image boundaries into blocks
    of <= max_rows rows.

    Only the `image_id` column is read here (8 bytes a row): each crop task reads its own
    rows (`manifest.read_rows`), so the driver's memory does not follow the manifest.
    Blocks are made smaller when that is needed to give every CPU several of them; only an
    image with more than max_rows people makes a bigger block (its people stay together).
    """
    image_ids = pq.read_table(manifest, columns=["image_id"]).column("image_id").to_numpy()
    if image_ids.size == 0:
        return []
    order = np.argsort(image_ids, kind="stable")
    image_ids = image_ids[order]
    least_blocks = TASKS_PER_CPU * max(num_cpus, 1)
    block_rows = max(1, min(max_rows, math.ceil(image_ids.size / least_blocks)))
    image_starts = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]])
    image_ends = np.r_[image_starts[1:], image_ids.size]
    blocks, start = [], 0
    for image_start, image_end in zip(image_starts[1:], image_ends[1:], strict=True):
        if image_end - start > block_rows:  # this image would overflow the block: cut before it
            blocks.append(order[start:image_start])
            start = image_start
    blocks.append(order[start:])
    return blocks


def _cluster_cpus() -> int:

    return int(ray.cluster_resources().get("CPU", 1))


def _crop_block(
    block: pa.Table,
    manifest: str,
    image_root: str,
    params: CropsParams,
    skip_dir: str,
    max_height: float,
) -> pa.Table:
    """Ray Data UDF: manifest positions of whole images -> crop rows; skipped rows go to
    small JSON files.

    A file per skipped row, named by its ann_id, so a retried task rewrites the same files.
    """
    cv2.setNumThreads(1)  # Ray runs one task per CPU: OpenCV's own threads would only fight
    rows = read_rows(Path(manifest), block.column("position").to_numpy(), MANIFEST_COLUMNS)
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

    workdir = Path(workdir)
    manifests = find_manifests(workdir / PREPARED_DIR)
    out_root = workdir / CROPS_DIR
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
