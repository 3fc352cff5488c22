"""Overlapping a stage of work with the thread that feeds it: `prefetch` (and `Prefetch`) make the next chunk in a
thread while the current one is used, `Worker` finishes calls in a thread while the caller goes on to the next chunk.

Polars, Arrow, the Postgres drivers and chDB release the GIL in their heavy parts, so on two cores the threads
really do run at the same time.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Empty, Queue


def prefetch[T](chunks: Iterator[T], name: str = "adpipe-prefetch") -> Iterator[T]:
    """Produce the next chunks in a thread while the caller works on the current one (`Prefetch`, started when
    the loop takes its first chunk and stopped when the loop ends, however it ends)."""
    with Prefetch(chunks, name) as ahead:
        yield from ahead


class Prefetch[T]:
    """Chunks made in a thread from the moment it is created, for a caller that takes them later (or never).

    Two chunks ahead at most — one waiting in the queue, one made and waiting for room — so memory stays bounded
    by three chunks. Errors reach the caller. `close()` stops the thread: it notices after the chunk it is
    making, and is gone when `close()` returns.
    """

    def __init__(self, chunks: Iterator[T], name: str = "adpipe-prefetch") -> None:
        self._queue: Queue[tuple[bool, object]] = Queue(maxsize=1)
        self._stop = threading.Event()
        self._ended = False
        self._worker = threading.Thread(target=self._produce, args=(chunks,), name=name, daemon=True)
        self._worker.start()

    def _produce(self, chunks: Iterator[T]) -> None:
        try:
            for chunk in chunks:
                if self._stop.is_set():
                    return
                self._queue.put((True, chunk))
            self._queue.put((False, None))
        except BaseException as exc:
            self._queue.put((False, exc))

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._ended:
            raise StopIteration
        more, item = self._queue.get()
        if not more:
            self._ended = True
            if isinstance(item, BaseException):
                raise item
            raise StopIteration
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the thread and wait for it (again: nothing)."""
        self._ended = True
        self._stop.set()
        while self._worker.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            with contextlib.suppress(Empty):
                self._queue.get(timeout=0.1)
        self._worker.join()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Worker:
    """Runs the calls handed to it one at a time, in order, in a background thread.

    At most `backlog` calls are unfinished (the one running included): `submit` waits for room, so memory stays
    bounded when the worker is the slower side. A call's error is raised in the caller, by the next `submit` or
    by `wait`. Leaving the `with` block drops the calls not started (their futures are cancelled) and waits for
    the running one.
    """

    def __init__(self, name: str, backlog: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._backlog = backlog
        self._pending: deque[Future[None]] = deque()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the calls not started and wait for the running one."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit[**P](self, call: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> Future[None]:
        """Hand `call` over once there is room; its future says whether it ran, failed or was dropped."""
        while len(self._pending) >= self._backlog:
            self._pending.popleft().result()
        future = self._pool.submit(call, *args, **kwargs)
        self._pending.append(future)
        return future

    def wait(self) -> None:
        """Wait for every call handed so far."""
        while self._pending:
            self._pending.popleft().result()
