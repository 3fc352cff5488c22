"""Overlapping work with threads: order kept, memory bounded, errors reaching the caller."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from pipeline.prefetch import Worker, prefetch


def test_prefetch_keeps_the_order_and_raises_the_producers_error() -> None:
    def chunks() -> Iterator[int]:
        yield from (1, 2, 3)
        raise ValueError("bad chunk 4")

    seen = []
    with pytest.raises(ValueError, match="bad chunk 4"):
        for chunk in prefetch(chunks()):
            seen.append(chunk)
    assert seen == [1, 2, 3]


def test_worker_runs_calls_in_order_with_at_most_backlog_unfinished() -> None:
    release = threading.Event()
    done: list[int] = []

    def call(n: int) -> None:
        release.wait()
        done.append(n)

    with Worker("test-worker", backlog=2) as worker:
        try:
            worker.submit(call, 1)
            worker.submit(call, 2)
            third = threading.Thread(target=worker.submit, args=(call, 3))
            third.start()
            third.join(timeout=0.3)
            accepted_early = not third.is_alive()
        finally:
            release.set()  # a failing check must not leave the worker blocked
        third.join(timeout=5)
        worker.wait()
    assert not accepted_early, "a third call was accepted while two were unfinished"
    assert done == [1, 2, 3]


def test_a_failed_call_is_raised_by_the_next_submit_or_by_wait() -> None:
    def fail() -> None:
        raise OSError("disk full")

    with Worker("test-worker", backlog=1) as worker:
        worker.submit(fail)
        with pytest.raises(OSError, match="disk full"):
            worker.submit(lambda: None)  # waits for room: the failed call is collected here
    with Worker("test-worker") as worker:
        worker.submit(fail)
        with pytest.raises(OSError, match="disk full"):
            worker.wait()


def test_leaving_the_block_drops_the_calls_not_started() -> None:
    started = threading.Event()
    release = threading.Event()
    done: list[int] = []

    def call(n: int) -> None:
        started.set()
        release.wait()
        done.append(n)

    with pytest.raises(RuntimeError, match="stage failed"), Worker("test-worker", backlog=3) as worker:
        worker.submit(call, 1)
        worker.submit(call, 2)
        started.wait(timeout=5)
        threading.Timer(0.2, release.set).start()  # the running call ends after the block is left
        raise RuntimeError("stage failed")
    assert done == [1]
