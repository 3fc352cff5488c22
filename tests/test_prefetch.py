"""Overlapping work with threads: order kept, memory bounded, errors reaching the caller.

No timers: each step waits for the thread it depends on to say where it is, with `threading.Event`s. Whether a
thread has gone as far as it can is told by `signal_when_blocked` — its next wait with no timeout, which only
another thread can end. GUARD bounds every wait, so a broken implementation fails instead of hanging; a passing
run never waits for it.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from pipeline.prefetch import Worker, prefetch

GUARD = 10.0
"""Seconds any wait here gives up after: reached only by a failing run."""

_CONDITION_WAIT = threading.Condition.wait.__code__


def signal_when_blocked(blocked: threading.Event) -> None:
    """From now on, set `blocked` whenever the calling thread starts waiting with no timeout.

    Waits on an Event, a Queue, a Future or a Semaphore all end in `Condition.wait`: when this thread enters it
    with no timeout, it stays there until another thread acts, so it has gone as far as it can on its own.
    (A wait with a timeout, such as a poll with timeout 0, is not blocking and does not count.)
    """

    def watch(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is _CONDITION_WAIT and frame.f_locals.get("timeout") is None:
            blocked.set()

    sys.setprofile(watch)  # this thread's only


def test_prefetch_keeps_the_order_and_raises_the_producers_error() -> None:
    def chunks() -> Iterator[int]:
        yield from (1, 2, 3)
        raise ValueError("bad chunk 4")

    seen = []
    with pytest.raises(ValueError, match="bad chunk 4"):
        for chunk in prefetch(chunks()):
            seen.append(chunk)
    assert seen == [1, 2, 3]


def test_prefetch_makes_at_most_two_chunks_ahead_and_closing_stops_it() -> None:
    made: list[int] = []
    first_taken, blocked = threading.Event(), threading.Event()

    def endless() -> Iterator[int]:  # runs in the prefetch thread
        made.append(1)
        yield 1
        # From here on the caller holds chunk 1 and takes nothing: the thread runs ahead until it must wait.
        assert first_taken.wait(GUARD)
        signal_when_blocked(blocked)
        for n in itertools.count(2):
            made.append(n)
            yield n

    chunks = prefetch(endless(), name="test-prefetch")
    assert next(chunks) == 1
    first_taken.set()
    assert blocked.wait(GUARD), "the prefetch thread never waited: it would read the whole source ahead"
    assert made == [1, 2, 3]  # 2 in the queue, 3 waiting for room
    blocked.clear()
    assert next(chunks) == 2  # room for one more
    assert blocked.wait(GUARD)
    assert made == [1, 2, 3, 4]

    closing = threading.Thread(target=chunks.close, daemon=True)  # a close that never returns fails, not hangs
    closing.start()
    closing.join(GUARD)
    assert not closing.is_alive(), "closing the iterator did not stop the prefetch thread"
    # It notices the stop after the chunk it was making (5), and is gone once close() returns.
    assert made == [1, 2, 3, 4, 5]
    assert not [thread for thread in threading.enumerate() if thread.name == "test-prefetch"]


def test_worker_runs_calls_in_order_with_at_most_backlog_unfinished() -> None:
    release = {n: threading.Event() for n in (1, 2, 3)}
    done: list[int] = []
    blocked, accepted = threading.Event(), threading.Event()
    done_when_accepted: list[int] = []

    def call(n: int) -> None:
        assert release[n].wait(GUARD)
        done.append(n)

    with Worker("test-worker", backlog=2) as worker:

        def submit_third() -> None:
            signal_when_blocked(blocked)
            worker.submit(call, 3)
            done_when_accepted.extend(done)
            accepted.set()
            blocked.set()  # whoever waits for it to block or return

        third = threading.Thread(target=submit_third)
        try:
            worker.submit(call, 1)
            worker.submit(call, 2)
            third.start()
            assert blocked.wait(GUARD)
            assert not accepted.is_set(), "a third call was accepted while two were unfinished"
            release[1].set()
            assert accepted.wait(GUARD), "finishing a call did not make room for the third"
            assert done_when_accepted == [1]  # accepted once call 1 finished, call 2 still running
        finally:
            for event in release.values():  # a failing check must not leave the worker blocked
                event.set()
            if third.ident is not None:
                third.join(GUARD)
        worker.wait()
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
    started, release = threading.Event(), threading.Event()
    done: list[tuple[int, bool]] = []

    def call(n: int) -> None:
        started.set()
        released = release.wait(GUARD)
        done.append((n, released))

    with pytest.raises(RuntimeError, match="stage failed"), Worker("test-worker", backlog=3) as worker:
        first = worker.submit(call, 1)
        second = worker.submit(call, 2)
        third = worker.submit(call, 3)
        # The running call ends once the last one waiting is dropped: while the block is left, not before.
        third.add_done_callback(lambda _: release.set())
        assert started.wait(GUARD)
        raise RuntimeError("stage failed")
    assert second.cancelled() and third.cancelled()
    assert first.done() and not first.cancelled()
    assert done == [(1, True)]  # the running call was waited for, released by the drop
