"""The streamed COCO reader: the same records as json.load, in one pass, same errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from shared import COCO_SAMPLE

from sdpose.data import coco_stream
from sdpose.data.coco import DataError
from sdpose.data.prepare import prepare_split

pytestmark = pytest.mark.unit

ANNOTATIONS = COCO_SAMPLE / "person_keypoints_val2017_sample.json"


def _rebuilt(path: Path) -> dict:
    document: dict = {}
    for key, index, value in coco_stream.iter_sections(path):
        if index is None:
            document[key] = value
        else:
            document.setdefault(key, []).append(value)
    return document


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_any_buffer_size_gives_json_loads_records(tmp_path, monkeypatch, chunk):
    rng = random.Random(chunk)
    document = {
        "info": {"note": "é ü\n"},
        "images": [{"id": i, "w": rng.random() * 1e5, "f": f"{i:012d}.jpg"} for i in range(60)],
        "annotations": [
            {"id": i, "k": [rng.uniform(-1e3, 1e3) for _ in range(51)], "n": None, "t": True}
            for i in range(40)
        ],
        "categories": [{"id": 1, "big": 12345678901234567890, "e": 1.5e-300}],
    }
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(document, indent=1 if chunk % 2 else None))
    monkeypatch.setattr(coco_stream, "CHUNK_CHARS", chunk)
    assert _rebuilt(path) == document
    assert _rebuilt(ANNOTATIONS) == json.loads(ANNOTATIONS.read_text())


@pytest.mark.parametrize(
    "text",
    [
        '{"images": [\n  {"id": 1,}\n]}',
        '{"a": 1} x',
        '{"images": [1, 2',
        '{"images": [1 2]}',
        '{"a": 1,\n\n "b" 2}',
        '{\n"annotations": [{"id": 1}, {"id": 2, "x": [1.5e]}]}',
    ],
)
@pytest.mark.parametrize("chunk", [2, 1 << 20])
def test_syntax_errors_name_json_loads_line_and_column(tmp_path, monkeypatch, text, chunk):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    monkeypatch.setattr(coco_stream, "CHUNK_CHARS", chunk)
    with pytest.raises(DataError) as caught:
        _rebuilt(path)
    where = f"line {expected.value.lineno}, column {expected.value.colno}"
    assert str(path) in str(caught.value) and where in str(caught.value)


def test_a_top_level_that_is_no_object_comes_whole(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    assert list(coco_stream.iter_sections(path)) == [("", None, [1, 2])]


def _reordered(document: dict, order: list[str]) -> dict:
    return {key: document[key] for key in order}


@pytest.mark.parametrize(
    "order",
    [
        ["info", "licenses", "images", "annotations", "categories"],  # COCO's own order
        ["annotations", "categories", "images", "info", "licenses"],  # annotations first
    ],
)
def test_the_section_order_changes_nothing(tmp_path, order):
    """The category decides last whatever the order; a non-person record with a bad box
    is not_person, as when the category is checked first; duplicates count in file order."""
    document = json.loads(ANNOTATIONS.read_text())
    annotations = [dict(a) for a in document["annotations"]]
    annotations[1].update(category_id=7, bbox=[0, 0, -1, 5])  # not a person, and a bad box
    annotations[2].update(bbox=[0, 0, -1, 5])  # a person with a bad box
    good = next(a for a in annotations[3:] if a["num_keypoints"] > 0)
    annotations.append(dict(good))  # a duplicate id, after the original
    annotations.append({"image_id": annotations[0]["image_id"]})  # no id at all
    document["annotations"] = annotations
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps(document))
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(_reordered(document, order)))
    expected = prepare_split(baseline, COCO_SAMPLE / "images", "val")
    found = prepare_split(moved, COCO_SAMPLE / "images", "val", scratch=tmp_path)
    skipped = found.report["skipped"]
    assert skipped["not_person"]["ids"] == [annotations[1]["id"]]
    assert skipped["bad_box"]["ids"] == [annotations[2]["id"]]
    assert skipped["duplicate_id"]["ids"] == [good["id"]]
    assert skipped["malformed"]["ids"] == [f"record {len(annotations) - 1}"]
    assert skipped == expected.report["skipped"]
    assert found.rows == expected.rows and found.report["kept"] == len(found.rows) > 0


def test_a_corrupt_record_among_many_is_skipped_in_one_pass(tmp_path, monkeypatch):
    """One broken record among 3,000: the others are kept, the file is read once."""
    document = json.loads(ANNOTATIONS.read_text())
    template = next(a for a in document["annotations"] if a["num_keypoints"] > 0)
    document["annotations"] = [{**template, "id": 10_000 + i} for i in range(3000)]
    document["annotations"][1717]["keypoints"] = [*template["keypoints"][:-3], "x", 0, 2]
    path = tmp_path / "many.json"
    path.write_text(json.dumps(document))
    reads = []
    real_open = Path.open

    def counting_open(self, *args, **kwargs):
        if self == path:
            reads.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    result = prepare_split(path, COCO_SAMPLE / "images", "val", scratch=tmp_path)
    assert len(reads) == 1, "the annotation file is read once"
    assert result.report["kept"] == 2999
    entry = result.report["skipped"]["bad_keypoints"]
    assert entry["ids"] == [11_717] and "annotations[1717]" in entry["example"]
    with pytest.raises(DataError, match=r"annotation 11717 \(annotations\[1717\]\)"):
        prepare_split(path, COCO_SAMPLE / "images", "val", strict=True)
