"""`OpenedPass`: a pass's first batch is fetched before the consumer asks, nothing is lost.

The train loop opens each pass ahead of its step (sdpose.training.passes) so that Ray
Data's start-up overlaps validation; these tests pin what that must not change: every batch
once and in order, errors raised where the consumer iterates, and a wait that still counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from sdpose.training.loop import _Waited
from sdpose.training.passes import OpenedPass

pytestmark = pytest.mark.unit

START_UP_S = 0.3


def slow_start(count: int, started: threading.Event | None = None) -> Iterator[int]:
    """`count` items, the first after a start-up pause (a new Ray Data execution)."""
    if started is not None:
        started.set()
    time.sleep(START_UP_S)
    yield from range(count)


def test_the_start_up_runs_before_iteration_and_every_item_comes_once_in_order() -> None:
    started = threading.Event()
    opened = OpenedPass(slow_start(5, started))
    assert started.wait(timeout=5), "the stream was not started on construction"
    time.sleep(START_UP_S + 0.2)  # validation would run here
    waited = _Waited(opened)
    assert list(waited) == [0, 1, 2, 3, 4]
    assert waited.seconds < START_UP_S / 2  # the start-up was already over


def test_a_consumer_that_comes_early_waits_for_what_is_left_and_the_wait_is_counted() -> None:
    waited = _Waited(OpenedPass(slow_start(2)))
    assert list(waited) == [0, 1]
    assert waited.seconds >= START_UP_S * 0.8


def test_an_error_of_the_stream_is_raised_in_the_consumer() -> None:
    def broken() -> Iterator[int]:
        raise OSError("part-00003.parquet: truncated")
        yield 0  # a generator

    opened = OpenedPass(broken())
    with pytest.raises(OSError, match="part-00003.parquet"):
        list(opened)


def test_an_empty_shard_is_an_empty_pass_and_a_pass_is_iterated_once() -> None:
    opened = OpenedPass(iter(()))
    assert list(opened) == []
    with pytest.raises(RuntimeError, match="iterated once"):
        iter(opened)
