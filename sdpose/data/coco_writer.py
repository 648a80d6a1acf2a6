"""Write a COCO annotation file record by record, never holding the whole document.

COCO train2017's person-keypoint file is 238 MB of JSON; built as one dict and dumped, it
costs a Python object graph several times that size plus a second copy as a string. The
writer streams instead: the image records go straight into the file, the annotations into
a side file beside it (COCO puts every image before the first annotation), and closing the
writer appends the annotations and the categories. The bytes are those of
`json.dumps(document, separators=(",", ":"))` for the same records, so readers see no
difference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import TracebackType
from typing import IO, Any

_COMPACT = {"separators": (",", ":")}


class CocoJsonWriter:
    """`with CocoJsonWriter(path, info, licenses, categories) as out: out.add(image, anns)`.

    On an exception the partial file and its side file are removed: a caller writes into
    a staging folder, and a half-written annotation file must never look complete.
    """

    def __init__(self, path: Path, info: dict, licenses: list, categories: list) -> None:
        self.path = Path(path)
        self._side_path = self.path.with_name(self.path.name + ".annotations.part")
        self._tail = categories
        self._head = (
            f'{{"info":{json.dumps(info, **_COMPACT)},'
            f'"licenses":{json.dumps(licenses, **_COMPACT)},"images":['
        )
        self.images = self.annotations = 0
        self._main: IO[str] | None = None
        self._side: IO[str] | None = None

    def __enter__(self) -> CocoJsonWriter:
        self._main = self.path.open("w", encoding="utf-8")
        self._side = self._side_path.open("w+", encoding="utf-8")
        self._main.write(self._head)
        return self

    def add(self, image: dict[str, Any], annotations: list[dict[str, Any]]) -> None:
        """One image record and its annotations, in the order they should appear."""
        assert self._main is not None and self._side is not None, "use the writer in a with"
        self._main.write(("," if self.images else "") + json.dumps(image, **_COMPACT))
        self.images += 1
        for annotation in annotations:
            self._side.write(("," if self.annotations else "") + json.dumps(annotation, **_COMPACT))
            self.annotations += 1

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._main is not None and self._side is not None
        try:
            if kind is None:
                self._main.write('],"annotations":[')
                self._side.seek(0)
                shutil.copyfileobj(self._side, self._main, 1 << 20)
                self._main.write(f'],"categories":{json.dumps(self._tail, **_COMPACT)}}}')
        finally:
            self._main.close()
            self._side.close()
            self._side_path.unlink(missing_ok=True)
            if kind is not None:
                self.path.unlink(missing_ok=True)
