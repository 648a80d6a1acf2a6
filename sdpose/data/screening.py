"""Screen a stream of COCO annotations in one pass, holding a few numbers per record.

A COCO file lists its categories after its annotations, so whether a record is a person
is known only at the end. `AnnotationScreen` therefore checks every record as it streams
by (`coco.check_annotation` with the category left out), keeps the record's id, index,
category and provisional reason in typed arrays (about 30 bytes a record), the first
detail of each kind of finding, and the manifest rows of the candidates; `finish` then
applies the category and the duplicate-id rule in file order, exactly as checking the
records one by one with the category known would have. `Findings` gathers what is
skipped, by reason, with every id but one example each.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sdpose.data.coco import (
    DEFECT_REASONS,
    DataError,
    Issue,
    check_annotation,
)
from sdpose.data.manifest import SCHEMA, read_rows

CANDIDATE = ""  # the provisional reason of a record that passed every check


@dataclass
class Findings:
    """reason -> count, every record id and the first detail; the first defect for strict."""

    by_reason: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_defect: tuple[int, Issue] | None = None  # (order, issue)

    def add(self, issue: Issue, order: int) -> None:
        entry = self.by_reason.setdefault(
            issue.reason, {"count": 0, "ids": [], "example": issue.detail}
        )
        entry["count"] += 1
        entry["ids"].append(issue.record)
        if issue.reason in DEFECT_REASONS and (
            self.first_defect is None or order < self.first_defect[0]
        ):
            self.first_defect = (order, issue)

    def summary(self, bad_images: dict[int, tuple[str, str]]) -> dict[str, dict[str, Any]]:
        """The report's `skipped`: image-level reasons also list the image ids."""
        summary = {}
        for reason, entry in sorted(self.by_reason.items()):
            image_ids = sorted(i for i, (why, _) in bad_images.items() if why == reason)
            summary[reason] = {**entry, **({"image_ids": image_ids} if image_ids else {})}
        return summary

    def raise_first_defect(self, path: Path) -> None:
        """Strict mode: the first defect in file order, and how many more there are."""
        if self.first_defect is None:
            return
        count = sum(e["count"] for r, e in self.by_reason.items() if r in DEFECT_REASONS)
        more = f" ({count - 1} more problems)" if count > 1 else ""
        issue = self.first_defect[1]
        raise DataError(f"{path}: {issue.detail} [{issue.reason}; strict mode]{more}")


class AnnotationScreen:
    """Provisional outcome of each streamed record; `finish` makes it final (module doc)."""

    def __init__(
        self, images: dict[int, dict], make_row: Callable[[dict, dict], dict], rows: RowSpool
    ) -> None:
        self.images = images
        self._make_row = make_row
        self.ann_ids = array("q")  # -1 for a record without an integer id
        self.indices = array("q")
        self.before_category = array("b")  # found before the category was looked at
        self.categories: list[Any] = []  # one shared object per distinct category value
        self._category_of: dict[Any, Any] = {}
        self.reasons: list[str] = []  # shared reason strings; CANDIDATE for candidates
        # the first detail per (reason, category, found before the category)
        self.examples: dict[tuple[str, Any, bool], str] = {}
        self.candidate_rows = rows  # manifest rows, in record order

    def add(self, index: int, ann: Any) -> None:
        """Screen record `annotations[index]` now; its category decides at `finish`."""
        category = ann.get("category_id") if isinstance(ann, dict) else None
        category = self._category_of.setdefault(_hashable(category), category)
        issue = check_annotation(ann, index, self.images, person_id=None)
        nameless = issue is not None and not isinstance(issue.record, int)
        self.ann_ids.append(-1 if nameless else ann["id"])
        self.indices.append(index)
        self.categories.append(category)
        if issue is None:
            self.before_category.append(0)
            self.reasons.append(CANDIDATE)
            self.candidate_rows.add(self._make_row(ann, self.images[ann["image_id"]]))
            return
        before = nameless or issue.reason == "unknown_image"
        self.before_category.append(before)
        self.reasons.append(sys.intern(issue.reason))
        self.examples.setdefault((issue.reason, _hashable(category), before), issue.detail)

    def finish(self, person_id: int, findings: Findings) -> np.ndarray:
        """Apply the category and duplicate ids in file order; returns which candidate
        rows are kept (a mask over `candidate_rows`), and adds the rest to `findings`."""
        kept = np.zeros(self.candidate_rows.count, dtype=bool)
        seen: set[int] = set()
        candidate = -1
        for order, reason in enumerate(self.reasons):
            ann_id, index = self.ann_ids[order], self.indices[order]
            category = self.categories[order]
            record = f"record {index}" if ann_id < 0 else ann_id
            candidate += reason == CANDIDATE
            if self.before_category[order] or (category == person_id and reason != CANDIDATE):
                # the stored detail is this record's when it is the first of its reason, the
                # only detail Findings keeps
                key = (reason, _hashable(category), bool(self.before_category[order]))
                detail = self.examples[key]
                findings.add(Issue(reason, record, detail), order)
            elif category != person_id:
                where = f"annotation {ann_id} (annotations[{index}])"
                findings.add(Issue("not_person", ann_id, f"{where}: category_id {category!r}"),
                             order)  # fmt: skip
            elif ann_id in seen:
                detail = f"annotations[{index}]: id {ann_id} appears more than once"
                findings.add(Issue("duplicate_id", ann_id, detail), order)
            else:
                seen.add(ann_id)
                kept[candidate] = True
        return kept


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


class RowSpool:
    """Manifest rows in Arrow batches: in memory, or spilled to a Parquet file when given
    one, so a COCO-size split holds one batch of Python rows at a time."""

    BATCH_ROWS = 4096

    def __init__(self, spill: Path | None = None) -> None:
        self.spill = spill
        self.count = 0
        self._pending: list[dict] = []
        self._batches: list[pa.RecordBatch] = []
        self._writer: pq.ParquetWriter | None = None

    def add(self, row: dict) -> None:
        self._pending.append(row)
        self.count += 1
        if len(self._pending) >= self.BATCH_ROWS:
            self._flush()

    def add_batch(self, batch: pa.RecordBatch) -> None:
        """Rows already in Arrow form (in order after the rows added before)."""
        self._flush()
        self.count += batch.num_rows
        self._pending = []
        self._store(batch)

    def _flush(self) -> None:
        if not self._pending:
            return
        batch = pa.RecordBatch.from_pylist(self._pending, schema=SCHEMA)
        self._pending = []
        self._store(batch)

    def _store(self, batch: pa.RecordBatch) -> None:
        if self.spill is None:
            self._batches.append(batch)
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.spill, SCHEMA)
        self._writer.write_batch(batch)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Every row so far, in order, in batches of at most BATCH_ROWS."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.spill is not None and self.spill.exists():
            yield from pq.ParquetFile(self.spill).iter_batches(batch_size=self.BATCH_ROWS)
        yield from self._batches

    def batches_by(self, column: str) -> Iterator[pa.RecordBatch]:
        """Every row ordered by `column` (stable), in batches of at most BATCH_ROWS.

        Rows already in order stream as they are; otherwise only the column is held, and a
        spilled spool gathers each batch from its row groups (`manifest.read_rows`).
        """
        keys = np.concatenate(
            [batch.column(column).to_numpy() for batch in self.batches()] or [np.zeros(0)]
        )
        if keys.size < 2 or bool(np.all(keys[1:] >= keys[:-1])):
            yield from self.batches()
            return
        order = np.argsort(keys, kind="stable")
        if self.spill is None:
            table = pa.Table.from_batches(list(self.batches()), schema=SCHEMA).take(order)
            yield from table.to_batches(max_chunksize=self.BATCH_ROWS)
            return
        for start in range(0, order.size, self.BATCH_ROWS):
            chunk = read_rows(self.spill, order[start : start + self.BATCH_ROWS])
            yield from chunk.to_batches()
