"""Read a COCO annotation file as a stream of records, in one pass and bounded memory.

`json.load` of COCO train2017's 238 MB person-keypoint file builds a Python object graph
of about 2 GB before the first record is checked. `iter_sections` walks the top-level
object instead and yields the elements of its big lists (`images`, `annotations`) one at
a time, decoding each with the standard library's decoder; any other top-level value comes
whole. Memory is the read buffer (1 MiB) plus the record at hand. A syntax error names the
file, line and column, as `json.load` would.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdpose.data.coco import DataError

STREAMED = ("images", "annotations")
CHUNK_CHARS = 1 << 20
MAX_RECORD_CHARS = 64 << 20  # a record this long is no COCO record: stop growing the buffer
TAIL_CHARS = 64  # text kept past a decoded value, so a number cannot be cut short
WHITESPACE = " \t\n\r"
_DECODER = json.JSONDecoder()


class _Cursor:
    """A window on the file's text: `buf[pos:]` is unread; dropped text keeps line numbers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("rb")
        self._decode = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.eof = "", 0, False
        self._line, self._line_start = 1, 0  # line of buf[0]; buf offset where it starts
        self._dropped = 0  # characters before buf[0]

    def close(self) -> None:
        self._file.close()

    def more(self) -> bool:
        """Append a chunk (dropping what was read); False at the end of the file."""
        if self.eof:
            return False
        raw = self._file.read(CHUNK_CHARS)
        self.eof = not raw
        try:
            text = self._decode.decode(raw, final=self.eof)
        except UnicodeDecodeError as error:
            raise DataError(f"{self.path}: not UTF-8 text ({error})") from error
        self._drop_read()
        self.buf += text
        return True

    def _drop_read(self) -> None:
        dropped = self.buf[: self.pos]
        lines = dropped.count("\n")
        if lines:
            self._line += lines
            self._line_start = dropped.rfind("\n") + 1
        self._line_start -= self.pos
        self._dropped += self.pos
        self.buf, self.pos = self.buf[self.pos :], 0

    def skip_space(self) -> str:
        """The next non-blank character ('' at the end of the file), not consumed."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in WHITESPACE:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def expect(self, allowed: str, what: str) -> str:
        found = self.skip_space()
        if not found or found not in allowed:
            raise self.error(self.pos, f"Expecting {what}")
        self.pos += 1
        return found

    def value(self) -> Any:
        """Decode the JSON value at the cursor, reading on while it runs past the buffer."""
        self.skip_space()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as error:
                if len(self.buf) - self.pos < MAX_RECORD_CHARS and self.more():
                    continue  # the value may only be cut by the buffer's end
                raise self.error(error.pos, error.msg) from None
            if len(self.buf) - end < TAIL_CHARS and not self.eof and self.more():
                continue  # a number cut by the buffer's end ("1.5e" of "1.5e3") decodes too
            self.pos = end
            return value

    def error(self, offset: int, message: str) -> DataError:
        before = self.buf[:offset]
        newlines = before.count("\n")
        line = self._line + newlines
        start = before.rfind("\n") + 1 if newlines else self._line_start
        return DataError(
            f"{self.path}: not valid JSON at line {line}, column {offset - start + 1}: {message}"
        )


def iter_sections(
    path: Path, streamed: tuple[str, ...] = STREAMED
) -> Iterator[tuple[str, int | None, Any]]:
    """(key, index, value) of a JSON object file: each element of a `streamed` key's list
    with its index, any other key's value whole with index None (in file order).

    A top level that is not an object yields ("", None, value) once, for the caller to
    reject with its own words. An empty streamed list yields (key, None, []).
    """
    cursor = _Cursor(Path(path))
    try:
        if cursor.skip_space() != "{":
            yield "", None, cursor.value()
            return
        cursor.pos += 1
        if cursor.skip_space() == "}":
            cursor.pos += 1
        else:
            while True:
                key = cursor.value()
                if not isinstance(key, str):
                    raise cursor.error(cursor.pos, "Expecting property name enclosed in quotes")
                cursor.expect(":", "':' delimiter")
                if key in streamed and cursor.skip_space() == "[":
                    yield from _elements(cursor, key)
                else:
                    yield key, None, cursor.value()
                if cursor.expect(",}", "',' delimiter") == "}":
                    break
        if cursor.skip_space():
            raise cursor.error(cursor.pos, "Extra data")
    finally:
        cursor.close()


def _elements(cursor: _Cursor, key: str) -> Iterator[tuple[str, int | None, Any]]:
    cursor.pos += 1  # the "["
    if cursor.skip_space() == "]":
        cursor.pos += 1
        yield key, None, []
        return
    index = 0
    while True:
        yield key, index, cursor.value()
        index += 1
        if cursor.expect(",]", "',' delimiter") == "]":
            return
