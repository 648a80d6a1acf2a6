"""The prepared-instance manifest: one Parquet row per person instance.

This schema is the contract between `prepare` (writer) and `crops` (reader); the schema
version and the image root travel in the Parquet metadata so a reader can refuse a file
written by an incompatible version instead of misreading it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sdpose.core.errors import InputError
from sdpose.core.paths import atomic_file

SCHEMA_VERSION = "1"

SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("ann_id", pa.int64(), nullable=False),  # detector boxes: -(1 + index)
        pa.field("file_name", pa.string(), nullable=False),  # relative to the image root
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),  # x, y, w, h
        pa.field("center", pa.list_(pa.float32(), 2), nullable=False),  # original pixels
        pa.field("scale", pa.list_(pa.float32(), 2), nullable=False),  # box w, h x 1.25
        pa.field("keypoints", pa.list_(pa.float32(), 51), nullable=False),  # x, y, v
        pa.field("num_keypoints", pa.int32(), nullable=False),
        pa.field("area", pa.float32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),  # 1 for ground truth boxes
        pa.field("split", pa.string(), nullable=False),
    ]
)

META_VERSION = b"sdpose.schema_version"
META_IMAGE_ROOT = b"sdpose.image_root"


class ManifestError(InputError):
    """A manifest file that cannot be used; the message names the file."""


def write_manifest(
    rows: list[dict] | pa.Table | Iterable[pa.RecordBatch], path: Path, image_root: Path
) -> Path:
    """Write rows atomically: a crash leaves the old file or none, never a partial one.

    Record batches are written as they come, so a COCO-size manifest is never whole in memory.
    """
    metadata = {META_VERSION: SCHEMA_VERSION.encode(), META_IMAGE_ROOT: str(image_root).encode()}
    schema = SCHEMA.with_metadata(metadata)
    if isinstance(rows, list):
        rows = pa.Table.from_pylist(rows, schema=SCHEMA)
    batches = rows.to_batches() if isinstance(rows, pa.Table) else rows
    with atomic_file(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        writer.write_table(pa.table({name: [] for name in SCHEMA.names}, schema=schema))
        for batch in batches:
            writer.write_batch(pa.RecordBatch.from_arrays(
                [batch.column(name).cast(field.type) for name, field in zip(
                    SCHEMA.names, SCHEMA, strict=True)], schema=schema))  # fmt: skip
    return path


def read_manifest(path: Path) -> tuple[pa.Table, Path]:
    """Read a manifest and its image root, checking the schema version."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise ManifestError(f"{path}: not a readable Parquet manifest ({error})") from error
    meta = table.schema.metadata or {}
    version = meta.get(META_VERSION, b"").decode()
    if version != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: manifest schema version {version or 'missing'!r}, expected "
            f"{SCHEMA_VERSION!r}; rerun `sdpose prepare`"
        )
    missing = [name for name in SCHEMA.names if name not in table.schema.names]
    if missing:
        raise ManifestError(f"{path}: manifest lacks the columns {missing}")
    return table, Path(meta.get(META_IMAGE_ROOT, b".").decode())


def read_rows(path: Path, positions: np.ndarray, columns: list[str] | None = None) -> pa.Table:
    """The rows at `positions` (0-based, any order) of a Parquet file, in that order.

    Reads one row group at a time and keeps only the rows asked for, so gathering a block
    costs the row groups it touches, not the file: one or two for a manifest in image
    order (what `prepare` writes), more for one in another order.
    """
    source = pq.ParquetFile(path)
    sizes = [source.metadata.row_group(i).num_rows for i in range(source.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    if positions.size and (positions.min() < 0 or positions.max() >= starts[-1]):
        raise ManifestError(f"{path}: row positions outside its {starts[-1]} rows")
    groups = np.searchsorted(starts, positions, side="right") - 1
    pieces, order = [], []
    for group in np.unique(groups):
        wanted = np.flatnonzero(groups == group)
        table = source.read_row_group(int(group), columns=columns)
        pieces.append(table.take(pa.array(positions[wanted] - starts[group])))
        order.append(wanted)
    if not pieces:
        return source.schema_arrow.empty_table().select(columns or source.schema_arrow.names)
    gathered = pa.concat_tables(pieces)
    return gathered.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))
