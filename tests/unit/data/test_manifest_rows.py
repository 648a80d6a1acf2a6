"""Gathering manifest rows by position, and prepare's manifest in image order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdpose.data.manifest import ManifestError, read_rows
from sdpose.data.screening import RowSpool

pytestmark = pytest.mark.unit


@pytest.fixture
def numbered(tmp_path):
    """1,000 rows (value = 10 x position) in row groups of 64."""
    path = tmp_path / "rows.parquet"
    table = pa.table({"position": np.arange(1000), "value": np.arange(1000) * 10})
    pq.write_table(table, path, row_group_size=64)
    return path


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rows_come_back_in_the_order_asked(numbered, seed):
    positions = np.random.default_rng(seed).choice(1000, size=300, replace=False)
    rows = read_rows(numbered, positions)
    assert rows.column("position").to_pylist() == positions.tolist()
    assert rows.column("value").to_pylist() == (positions * 10).tolist()


def test_a_contiguous_block_reads_only_its_row_groups(numbered, monkeypatch):
    read = []
    real = pq.ParquetFile.read_row_group

    def counted(self, index, *args, **kwargs):
        read.append(index)
        return real(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    rows = read_rows(numbered, np.arange(100, 150), columns=["value"])
    assert rows.column_names == ["value"] and rows.num_rows == 50
    assert read == [1, 2]  # rows 64-127 and 128-191


def test_positions_outside_the_file_are_an_error(numbered):
    with pytest.raises(ManifestError, match="outside its 1000 rows"):
        read_rows(numbered, np.array([5, 1000]))


def _row(image_id: int, ann_id: int) -> dict:
    return {"image_id": image_id, "ann_id": ann_id, "file_name": f"{image_id}.jpg",
            "width": 64, "height": 48, "bbox": [0, 0, 4, 4], "center": [2, 2],
            "scale": [5, 5], "keypoints": [0.0] * 51, "num_keypoints": 1, "area": 16.0,
            "score": 1.0, "split": "train"}  # fmt: skip


@pytest.mark.parametrize("spilled", [False, True])
def test_the_spool_comes_out_in_image_order_stably(tmp_path, monkeypatch, spilled):
    monkeypatch.setattr(RowSpool, "BATCH_ROWS", 7)  # several batches, several row groups
    spool = RowSpool(tmp_path / "spill.parquet" if spilled else None)
    images = np.random.default_rng(3).integers(0, 12, size=60)
    for ann_id, image_id in enumerate(images):
        spool.add(_row(int(image_id), ann_id))
    rows = pa.Table.from_batches(list(spool.batches_by("image_id")))
    assert rows.column("image_id").to_pylist() == sorted(images.tolist())
    expected = [ann for _, ann in sorted((int(i), a) for a, i in enumerate(images))]
    assert rows.column("ann_id").to_pylist() == expected  # people of an image keep their order
