"""The streamed annotation file is byte for byte the document `json.dumps` would write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdpose.data import synth
from sdpose.data.coco_writer import CocoJsonWriter

SETTINGS = {"seed": 5, "size": (160, 128), "max_people": 4, "workers": 1}


def test_streamed_files_equal_the_dumped_documents(tmp_path: Path) -> None:
    counts = {"train": 6, "val": 3}
    written = synth.write_splits(counts, tmp_path / "ann", images_dir=tmp_path / "a", **SETTINGS)
    held = synth.generate_splits(counts, images_dir=tmp_path / "b", **SETTINGS)
    for split, document in held.items():
        path = tmp_path / "ann" / f"person_keypoints_{split}.json"
        assert path.read_text() == json.dumps(document, separators=(",", ":"))
        assert written[split] == (len(document["images"]), len(document["annotations"]))
        assert written[split][1] > 0
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == [
        "person_keypoints_train.json",
        "person_keypoints_val.json",
    ], "no side file left behind"


def test_an_empty_split_is_still_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    with CocoJsonWriter(path, {"a": 1}, [], [{"id": 1}]):
        pass
    assert json.loads(path.read_text()) == {
        "info": {"a": 1}, "licenses": [], "images": [], "annotations": [],
        "categories": [{"id": 1}],
    }  # fmt: skip


def test_a_failure_leaves_neither_file(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    with pytest.raises(RuntimeError), CocoJsonWriter(path, {}, [], []) as writer:
        writer.add({"id": 1}, [{"id": 10, "image_id": 1}])
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
