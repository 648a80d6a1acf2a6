"""A training pass's batch stream, opened before the step needs it.

Ray Data starts a pass over a split Dataset only when every worker has asked for it (the
split coordinator's barrier); it then builds a new streaming execution and, for an equal
split, augments two blocks before the first batch can leave. On two cores that is about
0.8 s per pass, and 3-7 s for a run's first (the executor's and the augmentation workers'
start-up), all of it spent with the step idle. Opening the next pass as soon as the current
one ends lets that start-up run during validation, and opening the first one before the
model is built lets it overlap the build (docs/training.md, "Throughput of the train
stage"). Each pass is still one execution of the Dataset, so the per-pass augmentation
seeds and the every-sample-once-per-epoch split stay as the feed defines them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class OpenedPass(Generic[T]):
    """An iterable whose first item is fetched in a background thread from construction on.

    Iterating joins that thread (the wait a consumer times is whatever is still left of the
    start-up), re-raises what it raised, then continues the same stream in the caller's
    thread. Iterate it once.
    """

    def __init__(self, batches: Iterable[T], name: str = "sdpose-open-pass") -> None:
        self._batches: Iterator[T] = iter(batches)
        self._first: list[T] = []
        self._error: BaseException | None = None
        self._consumed = False
        self._thread = threading.Thread(target=self._fetch_first, name=name, daemon=True)
        self._thread.start()

    def _fetch_first(self) -> None:
        try:
            self._first.append(next(self._batches))
        except StopIteration:
            pass  # an empty shard: the pass has no batches
        except BaseException as error:  # handed to the consumer, in its thread
            self._error = error

    def __iter__(self) -> Iterator[T]:
        if self._consumed:
            raise RuntimeError("an opened pass is iterated once; open a new one per pass")
        self._consumed = True
        return self._stream()

    def _stream(self) -> Iterator[T]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        yield from self._first
        self._first.clear()
        yield from self._batches
